import json

import pytest
from typer.testing import CliRunner

import nas_zoo
from nas_zoo.cli.app import app
from nas_zoo.genotype import save_genotype

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_list_shows_every_cnn_genotype_with_measured_and_reported_params():
    result = run("list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len({r["genotype"] for r in rows if r["task"] == "cnn"}) == 16
    gdas = next(r for r in rows if r["model"] == "gdas_f1.cifar10")
    assert (gdas["params"], gdas["reported_params_M"], gdas["reported_error"]) == (2543014, 2.5, 2.82)


def test_list_filters():
    rows = json.loads(run("list", "--json", "--dataset", "imagenet", "--family", "gdas").output)
    assert [r["model"] for r in rows] == ["gdas_v1_imagenet.in1k", "gdas_f1_imagenet.in1k"]
    table = run("list", "--family", "pdarts")
    assert table.exit_code == 0 and "pdarts_large.cifar100" in table.output and "darts_v2" not in table.output


def test_info_of_a_zoo_model():
    result = run("info", "gdas_v1_imagenet", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    (network,) = info["networks"]
    (imagenet,) = network["datasets"]
    assert (network["C"], imagenet["params"]) == (50, 5345075)
    assert round(imagenet["flops"]["conv+linear (nas-zoo, GDAS)"] / 1e6) == imagenet["reported"]["mult_adds_M"] == 581
    assert info["genotype"]["provenance"]["commit"].startswith("5eed810")


def test_info_of_a_user_file(tmp_path):
    path = tmp_path / "mine.json"
    normal = nas_zoo.get_genotype("DARTS_V2").normal
    save_genotype(nas_zoo.Genotype("MINE", normal, (2, 3, 4, 5), None, (2, 3, 4, 5)), path)
    result = run("info", str(path), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert [n["network"] for n in info["networks"]] == ["cifar", "imagenet"]
    assert info["family"] == "user" and info["genotype"]["normal"] == [list(e) for e in normal]
    text = run("info", str(path))
    assert "GDAS's fixed reduction cell" in text.output


@pytest.mark.parametrize("args, message", [
    (("info", "gdas_v2"), "unknown model or genotype 'gdas_v2'; closest: gdas_v1"),
    (("info", "missing.json"), "missing.json: no such genotype file"),
    (("list", "--dataset", "mnist"), "--dataset 'mnist' is not one of"),
])
def test_bad_input_is_one_line_and_non_zero(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output.replace("\n", " ")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(g for g in nas_zoo.list_genotypes()
                                         if isinstance(nas_zoo.get_genotype(g), nas_zoo.Genotype)))
def test_info_for_every_zoo_genotype(name):  # recurrent cells: tests/test_rnn.py
    result = run("info", name, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["genotype"]["name"] == name and info["networks"]
    for network in info["networks"]:
        for dataset in network["datasets"]:
            flops = list(dataset["flops"].values())  # conv + linear, then the same + BN and ReLU elements
            assert flops[0] < flops[1]
            if "params_M" in dataset["reported"]:  # the papers round (tests/test_param_counts.py: exact counts)
                assert abs(dataset["params"] / 1e6 - dataset["reported"]["params_M"]) <= 0.151, dataset
