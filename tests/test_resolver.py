"""The one resolver (nas_zoo.resolve): its rules, its one-line errors, and that every command goes through it."""
import json

import pytest
from safetensors.torch import save_file
from typer.testing import CliRunner

import nas_zoo
from nas_zoo.cli.app import app
from nas_zoo.registry.genotype import GenotypeError, save_genotype

runner = CliRunner()
DARTS = nas_zoo.get_genotype("DARTS_V2")
RNN = {"name": "MINE_RNN", "recurrent": [["tanh", 0], ["relu", 1], ["sigmoid", 1]], "concat": [1, 2, 3]}


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A working directory with a genotype file, a two-entry file, a suffix-less file in a folder and a
    recurrent cell."""
    monkeypatch.chdir(tmp_path)
    mine = nas_zoo.Genotype("MINE", DARTS.normal, DARTS.normal_concat, DARTS.reduce, DARTS.reduce_concat)
    save_genotype(mine, "cell.json")
    (tmp_path / "sub").mkdir()
    save_genotype(mine, "sub/cell")
    two = {"genotypes": {"A": DARTS.to_dict() | {"name": "A"}, "B": DARTS.to_dict() | {"name": "B"}}}
    (tmp_path / "two.json").write_text(json.dumps(two))
    (tmp_path / "rnn.json").write_text(json.dumps(RNN))
    return tmp_path


# (string, dataset) -> (genotype, zoo model, dataset, kind)
TABLE = [
    (("gdas_v1", None), ("GDAS_V1", "gdas_v1", None, "model")),
    (("GDAS_V1", None), ("GDAS_V1", "gdas_v1", None, "genotype")),
    (("gdas_v1", "imagenet"), ("GDAS_V1", "gdas_v1_imagenet", "imagenet", "model")),
    (("gdas_v1_imagenet", "cifar10"), ("GDAS_V1", "gdas_v1", "cifar10", "model")),
    (("gdas_v1.cifar100", None), ("GDAS_V1", "gdas_v1", "cifar100", "model")),
    (("gdas_v1_imagenet.in1k", "imagenet"), ("GDAS_V1", "gdas_v1_imagenet", "imagenet", "model")),
    (("pdarts", None), ("PDARTS", "pdarts", None, "model")),
    (("DARTS_V2_RNN", None), ("DARTS_V2_RNN", "darts_v2_ptb", None, "genotype")),
    (("DARTS_V2_RNN", "wt2"), ("DARTS_V2_RNN", "darts_v2_wt2", "wt2", "genotype")),
    (("darts_v2_ptb", "wt2"), ("DARTS_V2_RNN", "darts_v2_wt2", "wt2", "model")),
    (("darts_v2_ptb.ptb", None), ("DARTS_V2_RNN", "darts_v2_ptb", "ptb", "model")),
    (("EDNAS_PTB", "wt2"), ("EDNAS_PTB", None, "wt2", "genotype")),  # not in its paper: the caller's default
    (("cell.json", None), ("MINE", None, None, "file")),
    (("cell.json", "cifar10"), ("MINE", None, "cifar10", "file")),
    (("sub/cell", None), ("MINE", None, None, "file")),
    (("two.json:B", None), ("B", None, None, "file")),
    (("rnn.json", "ptb"), ("MINE_RNN", None, "ptb", "file")),
]


@pytest.mark.parametrize("given, expected", TABLE, ids=[f"{n}-{d}" for (n, d), _ in TABLE])
def test_what_each_string_resolves_to(files, given, expected):
    resolved = nas_zoo.resolve(*given)
    assert (resolved.genotype.name, resolved.model and resolved.model.name, resolved.dataset,
            resolved.kind) == expected


ERRORS = [
    (("pdartz", None), "unknown model or genotype 'pdartz'; closest: pdarts"),
    (("gdas_v1.in1k", None), "unknown tagged model 'gdas_v1.in1k'; closest: gdas_v1.cifar10, gdas_v1_imagenet.in1k"),
    (("gdas_v1.cifar10", "cifar100"), "gdas_v1.cifar10 is tagged for cifar10, not cifar100"),
    (("gdas_v1", "ptb"), "GDAS_V1 is a CNN genotype; language models (ptb) need a recurrent cell: darts_v1_ptb"),
    (("darts_v2_ptb", "cifar10"), "DARTS_V2_RNN is a recurrent cell (a language model); cifar10 needs a CNN genotype"),
    (("gdas_v1", "cifar11"), "unknown dataset 'cifar11'; closest: cifar10"),
    (("two.json:C", None), "unknown genotype in two.json 'C'; "),
    (("two.json", None), "two.json: holds 2 genotypes (A, B); pick one by name"),
    (("absent.json", None), "absent.json: no such genotype file"),
    (("loose", None), "unknown model or genotype 'loose'; known: "),
]


@pytest.mark.parametrize("given, message", ERRORS, ids=[n for (n, _), _ in ERRORS])
def test_every_failure_is_one_line_with_the_nearest_names(files, given, message):
    with pytest.raises((nas_zoo.ResolveError, GenotypeError)) as error:
        nas_zoo.resolve(*given)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_name_wins_over_a_file_or_folder_of_that_name(files):
    (files / "pdarts").mkdir()
    (files / "gdas_v1").write_text("not a genotype")
    assert nas_zoo.resolve("pdarts").model.name == "pdarts"
    assert nas_zoo.resolve("gdas_v1").model.name == "gdas_v1"
    (files / "mine").write_text((files / "cell.json").read_text())
    with pytest.raises(nas_zoo.ResolveError, match="unknown model or genotype 'mine'; .*; for the file, write ./mine"):
        nas_zoo.resolve("mine")
    assert nas_zoo.resolve("./mine").genotype.name == "MINE"


def _pdarts_weights(path):
    model = nas_zoo.build_network("PDARTS", C=4, layers=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_info_and_convert_take_the_zoo_name_over_a_folder_of_that_name(files):
    (files / "pdarts").mkdir()  # was: IsADirectoryError
    info = runner.invoke(app, ["info", "pdarts", "--json"])
    assert info.exit_code == 0, info.output
    assert [n["model"] for n in json.loads(info.output)["networks"]] == ["pdarts"]  # not pdarts_imagenet
    weights = _pdarts_weights(files / "authors.safetensors")
    converted = runner.invoke(app, ["convert", "--from", "pdarts", str(weights), "--model", "pdarts", "--C", "4",
                                    "--layers", "3", "--out", "out"])
    assert converted.exit_code == 0, converted.output
    assert json.loads((files / "out" / "config.json").read_text())["architecture"] == "pdarts"
    evaluated = runner.invoke(app, ["evaluate", "pdarts", "--dataset", "cifar10", "--no-accuracy", "--no-speed",
                                    "--json", "-"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["model"] == "pdarts"


@pytest.mark.parametrize("command", [
    ["info", "{name}"],
    ["train", "{name}", "--dataset", "cifar10", "--out", "run"],
    ["train", "{name}", "--dataset", "ptb", "--out", "run"],
    ["evaluate", "{name}", "--dataset", "cifar10", "--no-accuracy"],
    ["evaluate", "{name}", "--dataset", "ptb", "--data-dir", "."],
    ["convert", "--from", "pdarts", "authors.safetensors", "--model", "{name}", "--out", "out"],
    ["push", "{name}", "--checkpoint", "authors.safetensors", "--repo-id", "me/x"],
], ids=lambda c: "-".join(c[:4]).replace("{name}", "NAME"))
def test_every_command_goes_through_the_resolver(files, command):
    """The same misspelling gets the same one-line answer from every command, before any work is done."""
    _pdarts_weights(files / "authors.safetensors")
    result = runner.invoke(app, [arg.format(name="pdartz") for arg in command])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: unknown model or genotype 'pdartz'; closest: pdarts, PDARTS, darts_v2, DARTS_V2, darts_v1"
    assert not (files / "run").exists() and not (files / "out").exists()

