"""`nas-zoo convert` reads checkpoint files in the layouts the authors' scripts save and gives their logits.

The tensors are the authors' (tests/fixtures/authors, made with each repository's own code); each test writes
them the way that repository's training script does, in PyTorch's legacy (pre-1.6) format as the released
files are, converts the file, loads the result with timm and compares with the authors' logits.
"""
import argparse
import collections
import json
import os
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import nas_zoo
from nas_zoo.harness.checkpoint import load_weights
from nas_zoo.cli.app import app
from nas_zoo.weights.convert import CheckpointFormatError, read_checkpoint
from nas_zoo.resolver import resolve

FIXTURES = Path(__file__).parent / "fixtures" / "authors"
INDEX = json.loads((FIXTURES / "index.json").read_text())["entries"]
FAMILY = {"bnasv2-clr": "bnas", "bnasv2-pc": "bnas"}
runner = CliRunner()


def saved_as_the_authors_do(entry, state_dict, path: Path) -> Path:
    """The file ``entry``'s repository writes at the end of training."""
    legacy = dict(_use_new_zipfile_serialization=False)
    if entry["code"] == "gdas":  # NAS-Projects exps-cnn/train_utils*.py
        args = argparse.Namespace(arch=entry["genotype"], init_channels=entry["C"], layers=entry["layers"],
                                  dataset="imagenet" if entry["network"] == "imagenet" else "cifar10",
                                  model_config="./configs/nas-cifar-cos-cut.config", manualSeed=6000)
        checkpoint = {"epoch": 600, "args": args, "state_dict": state_dict,
                      "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "momentum": 0.9, "params": [0, 1]}]},
                      "scheduler": {"last_epoch": 599}, "accuracies": {599: (97.2, 99.9)}}
    elif entry["code"] == "ednas" and entry["network"] == "imagenet":  # Horovod train_imagenet.py
        checkpoint = {"model": state_dict, "optimizer": {"state": {}, "param_groups": []}}
    elif entry["network"] == "imagenet":  # train_imagenet.py: utils.save_checkpoint of nn.DataParallel
        checkpoint = {"epoch": 250, "state_dict": {f"module.{k}": v for k, v in state_dict.items()},
                      "best_acc_top1": 73.3, "optimizer": {"state": {}, "param_groups": []}}
    elif entry["code"] == "pdarts":  # train_cifar.py: utils.save of nn.DataParallel
        checkpoint = {f"module.{k}": v for k, v in state_dict.items()}
    else:  # utils.save(model, 'weights.pt')
        checkpoint = state_dict
    torch.save(checkpoint, path, **legacy)
    return path


@pytest.fixture(scope="module")
def outputs():
    return load_file(FIXTURES / "outputs.safetensors")


@pytest.mark.parametrize("entry", INDEX, ids=lambda e: f"{e['genotype']}-{e['code']}-{e['network']}")
def test_converted_checkpoints_give_the_authors_logits(entry, outputs, tmp_path):
    authors = load_file(FIXTURES / entry["state_dict"])
    checkpoint = saved_as_the_authors_do(entry, authors, tmp_path / "checkpoint.pth.tar")
    model = resolve(entry["genotype"], "imagenet" if entry["network"].endswith("imagenet") else None).model.name
    size = [] if entry["code"] == "gdas" else ["--C", str(entry["C"]), "--layers", str(entry["layers"])]
    out = tmp_path / "converted"
    result = CliRunner().invoke(app, ["convert", "--from", FAMILY.get(entry["code"], entry["code"]), str(checkpoint),
                                      "--model", model, "--out", str(out), *size])
    assert result.exit_code == 0, result.output
    converted = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    stem = entry["state_dict"].removesuffix(".safetensors")
    with torch.no_grad():
        torch.testing.assert_close(converted(outputs[entry["input"]]), outputs[f"{stem}.logits"], atol=2e-7, rtol=0)


def gdas_entry():
    return next(e for e in INDEX if e["genotype"] == "GDAS_F1" and e["network"] == "cifar")


@pytest.mark.parametrize("model, C, expected", [
    ("darts_v2", "4", ["missing keys ['cells.0.ops.0.op.1.weight'", "unexpected keys ['cells.0.ops.5."]),
    ("gdas_f1", "8", ["shape mismatches", "pass C and layers (--C, --layers)"]),
])
def test_a_checkpoint_that_does_not_fit_is_refused_with_its_keys_or_shapes(tmp_path, model, C, expected):
    entry = gdas_entry()
    checkpoint = saved_as_the_authors_do({**entry, "code": "darts"}, load_file(FIXTURES / entry["state_dict"]),
                                         tmp_path / "weights.pt")
    result = runner.invoke(app, ["convert", "--from", "gdas", str(checkpoint), "--model", model, "--out",
                                 str(tmp_path / "out"), "--C", C, "--layers", "5"])
    output = result.output.replace("\n", " ")
    assert result.exit_code == 2 and not (tmp_path / "out").exists()
    assert all(text in output for text in expected), output


def test_gdas_args_name_the_architecture_and_a_mismatch_is_refused(tmp_path):
    entry = gdas_entry()
    checkpoint = saved_as_the_authors_do(entry, load_file(FIXTURES / entry["state_dict"]), tmp_path / "gdas.pth")
    state_dict, extra = read_checkpoint(checkpoint)
    assert extra["args"]["arch"] == "GDAS_F1" and extra["epoch"] == 600 and "optimizer" not in extra
    result = runner.invoke(app, ["convert", "--from", "gdas", str(checkpoint), "--model", "gdas_v1", "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 2 and "was trained as GDAS_F1 (its args.arch), not GDAS_V1" in result.output


def test_a_file_that_needs_code_to_unpickle_is_refused_and_says_why(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Conv2d(2, 2, 1), path)  # a pickled module that no language model holds
    with pytest.raises(CheckpointFormatError, match=r"weights_only=True\): it pickles torch\.nn\.modules\.conv\.Conv2d"):
        read_checkpoint(path)
    result = runner.invoke(app, ["convert", "--from", "darts", str(path), "--model", "darts_v2", "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 2 and "nas-zoo reads tensors and plain data only" in result.output.replace("\n", " ")


def _authors_modules():
    """Stand-ins for the authors' modules ``model``, ``utils`` and ``genotypes`` (DARTS rnn/, EDNAS's PTB copy):
    classes of the same names and attributes, so that ``torch.save(model)`` pickles what their scripts do."""
    genotypes, utils, model = (types.ModuleType(name) for name in ("genotypes", "utils", "model"))
    genotypes.Genotype = collections.namedtuple("Genotype", "recurrent concat")
    genotypes.Genotype.__module__ = "genotypes"

    class LockedDropout(torch.nn.Module):
        pass

    class DARTSCell(torch.nn.Module):
        def __init__(self, ninp, nhid, genotype):
            super().__init__()
            self.nhid, self.genotype = nhid, genotype
            self._W0 = torch.nn.Parameter(torch.empty(ninp + nhid, 2 * nhid))
            self._Ws = torch.nn.ParameterList(torch.nn.Parameter(torch.empty(nhid, 2 * nhid))
                                              for _ in genotype.recurrent)

    class RNNModel(torch.nn.Module):
        def __init__(self, ntoken, nhid, genotype):
            super().__init__()
            self.lockdrop = LockedDropout()
            self.encoder = torch.nn.Embedding(ntoken, nhid)
            self.rnns = torch.nn.ModuleList([DARTSCell(nhid, nhid, genotype)])
            self.decoder = torch.nn.Linear(nhid, ntoken)
            self.decoder.weight = self.encoder.weight
            self.cell_cls, self.ntoken = DARTSCell, ntoken

    for module, cls in ((utils, LockedDropout), (model, DARTSCell), (model, RNNModel)):
        cls.__module__, cls.__qualname__ = module.__name__, cls.__name__
        setattr(module, cls.__name__, cls)
    return {"genotypes": genotypes, "utils": utils, "model": model}


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")  # torch.save of the test's stand-in classes
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_whole_pickled_language_model_converts_without_running_its_code(tmp_path, monkeypatch, legacy):
    """DARTS rnn/train.py and EDNAS's PTB train.py save ``torch.save(model)``; convert reads the tensors."""
    fixtures = Path(__file__).parent / "fixtures" / "authors_rnn"
    entry = json.loads((fixtures / "index.json").read_text())["entries"][1]  # DARTS_V2_RNN, the DARTS code
    tensors = load_file(fixtures / "outputs.safetensors")
    prefix = entry["prefix"] + "."
    genotype = nas_zoo.get_genotype(entry["genotype"])
    modules = _authors_modules()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    authors = modules["model"].RNNModel(entry["ntoken"], entry["nhid"], modules["genotypes"].Genotype(
        [list(step) for step in genotype.recurrent], list(genotype.concat)))
    missing, _ = authors.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                                          if k.startswith(prefix) and k[len(prefix):] in authors.state_dict()},
                                         strict=False)
    assert missing == ["decoder.weight"]  # tied to encoder.weight
    path = tmp_path / "model.pt"
    torch.save(authors, path, _use_new_zipfile_serialization=not legacy)
    for name in modules:  # nas-zoo has none of the authors' code to import
        monkeypatch.delitem(sys.modules, name)
    state_dict, extra = read_checkpoint(path)
    assert extra == {"pickled_class": "model.RNNModel"} and "rnns.0._Ws.7" in state_dict
    out = tmp_path / "converted"
    result = runner.invoke(app, ["convert", "--from", "darts", str(path), "--model", "darts_v2_ptb", "--dataset", "ptb",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "darts_v2_ptb" and config["model_args"] == {"ntoken": 50, "nhid": 16}
    model = nas_zoo.create_model("darts_v2_ptb", **config["model_args"]).eval()
    load_weights(out, model)
    with torch.no_grad():
        logits, _ = model(tensors[prefix + "tokens"], tensors[prefix + "hidden"])
    torch.testing.assert_close(logits.log_softmax(-1), tensors[prefix + "log_prob"], atol=2e-6, rtol=0)
    wrong = runner.invoke(app, ["convert", "--from", "darts", str(path), "--model", "gdas_ptb", "--dataset", "ptb",
                                "--out", str(tmp_path / "wrong"), "--C", "8"])
    assert wrong.exit_code == 2 and "C: not for a language model" in wrong.output


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _in_a_legacy_module(evil):  # read by the restricted unpickler: the weights-only one refuses module ids
    module = torch.nn.Linear(1, 1)
    module.evil = evil
    return module


@pytest.mark.parametrize("wrap", [lambda evil: evil, lambda evil: {"state_dict": {"w": torch.zeros(1)}, "x": evil},
                                  _in_a_legacy_module], ids=["whole", "inside", "legacy-module"])
def test_a_malicious_pickle_runs_nothing_and_fails_in_one_line(tmp_path, wrap):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save(wrap(_RunsAShellCommand(marker)), path, _use_new_zipfile_serialization=wrap is not _in_a_legacy_module)
    result = runner.invoke(app, ["convert", "--from", "darts", str(path), "--model", "darts_v2_ptb", "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 2 and not marker.exists() and not (tmp_path / "out").exists()
    assert len(result.output.strip().splitlines()) == 1 and f"it pickles {os.system.__module__}.system" in result.output


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "not a readable PyTorch or safetensors checkpoint"),
    ({"epoch": 3, "best_acc_top1": 1.0}, "holds no state_dict (top-level keys: epoch, best_acc_top1)"),
])
def test_files_without_weights_are_refused(tmp_path, content, message):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    with pytest.raises(CheckpointFormatError) as error:
        read_checkpoint(path)
    assert message in str(error.value)


def test_the_broad_networks_enhancement_layers_are_an_option(outputs, tmp_path):
    entry = next(e for e in INDEX if e["network"] == "bcnn")  # the authors' BCNN with 2 enhancement cells
    checkpoint = saved_as_the_authors_do(entry, load_file(FIXTURES / entry["state_dict"]), tmp_path / "weights.pt")
    size = ["--C", str(entry["C"]), "--layers", str(entry["layers"])]

    def convert(model, out, *extra):
        return runner.invoke(app, ["convert", "--from", "bnas", str(checkpoint), "--model", model, "--out",
                                   str(tmp_path / out), *size, *extra])

    three = convert("b_darts_v1", "three", "--en-layers", "3")
    assert three.exit_code == 2 and "missing keys ['enhancement_cells.2." in three.output.replace("\n", " ")
    two = convert("b_darts_v1", "two", "--en-layers", "2")
    assert two.exit_code == 0, two.output
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["model_args"] == {"C": entry["C"], "enhancement_layers": 2}  # 6 cells: the paper's
    converted = timm.create_model(f"local-dir:{tmp_path / 'two'}", pretrained=True).eval()
    with torch.no_grad():
        logits = converted(outputs[entry["input"]])
    torch.testing.assert_close(logits, outputs[entry["state_dict"].removesuffix(".safetensors") + ".logits"],
                               atol=2e-7, rtol=0)
    cifar = convert("darts_v2", "cifar", "--en-layers", "2")
    assert cifar.exit_code == 2 and "en_layers: for the broad networks" in cifar.output
