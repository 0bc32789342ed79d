import importlib.metadata
import json
import os
import re

import pytest
import typer
from typer.testing import CliRunner

import nas_zoo
from nas_zoo import threads
from nas_zoo.cli import output
from nas_zoo.cli.app import app
from nas_zoo.registry.genotype import save_genotype

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
    b_darts = next(r for r in rows if r["model"] == "b_darts_v1.cifar10")
    assert b_darts["search_cost_gpu_days"] == 0.09  # the file gives first- and second-order costs


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


def _commands(command=typer.main.get_command(app), path=()):
    """(path, click command) of the app, its groups and every command under them."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, path + (name,))


@pytest.mark.parametrize("path, command", list(_commands()), ids=lambda p: " ".join(p) if isinstance(p, tuple) else "")
def test_help_shows_every_option_whole_with_its_default(path, command):
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    text = re.sub(r"-\n\s+", "-", result.output.split("\nOptions:\n")[1])  # words broken at a hyphen, joined
    entries = [" ".join(e.split()) for e in re.split(r"\n(?=  -)", text)]  # one per option, on one line
    for param in command.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        (entry,) = [e for e in entries if e.split()[0] == param.opts[0]]
        for name in param.opts + param.secondary_opts:  # whole: not cut, not followed by an ellipsis
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w…-])", entry), (name, entry)
        default = param.default
        if isinstance(default, bool) and param.secondary_opts:  # --resume/--no-resume: the one in force
            default = (param.opts if default else param.secondary_opts)[0].lstrip("-")
        if param.required:
            assert "[required]" in entry, entry
        elif default is None or default == []:  # what happens without it, in words
            assert re.search(r"\[default: .+\]|\(default: ", entry), entry
        elif not param.is_flag or param.secondary_opts:  # a lone flag (--json) is off unless given
            assert f"[default: {default}" in entry, entry


@pytest.mark.parametrize("idle, omp, expected", [(0.0, None, 1), (0.9, None, 1), (1.85, None, 2), (1.5, "3", 3)])
def test_default_threads_are_the_idle_cores(idle, omp, expected, monkeypatch):
    monkeypatch.setattr(threads, "idle_cores", lambda: idle)
    monkeypatch.setattr(threads, "TORCH_DEFAULT", 3 if omp else 2)  # PyTorch's default on 2 cores, or OMP_NUM_THREADS
    if omp:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    else:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.set_threads() == expected
    assert threads.set_threads(1) == 1


def test_idle_cores_are_measured():
    assert 0 <= threads.idle_cores(0.05) <= len(os.sched_getaffinity(0))


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and f"nas-zoo {importlib.metadata.version('nas-zoo')} (torch " in result.output


@pytest.mark.parametrize("width", [80, 120])
def test_list_fits_the_terminal_with_every_model_name_whole(width, monkeypatch):
    monkeypatch.setattr(output.console, "width", width)
    result = run("list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= width
    words = {word for line in lines for word in line.split()}
    names = [r["model"] for r in json.loads(run("list", "--json").output)]
    assert len(names) == len(set(names)) > 30 and set(names) <= words
    assert ("BNASv2_CLR_v1" in words) == (width == 120)  # the genotype column is left out at 80
