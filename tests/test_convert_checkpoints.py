"""`nas-zoo convert` reads checkpoint files in the layouts the authors' scripts save and gives their logits.

The tensors are the authors' (tests/fixtures/authors, made with each repository's own code); each test writes
them the way that repository's training script does, in PyTorch's legacy (pre-1.6) format as the released
files are, converts the file, loads the result with timm and compares with the authors' logits.
"""
import argparse
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from nas_zoo.cli.app import app
from nas_zoo.convert import CheckpointFormatError, read_checkpoint
from nas_zoo.zoo import find_model

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
    model = find_model(entry["genotype"], "imagenet" if entry["network"].endswith("imagenet") else None).name
    size = [] if entry["code"] == "gdas" else ["--C", str(entry["C"]), "--layers", str(entry["layers"])]
    out = tmp_path / "converted"
    result = CliRunner().invoke(app, ["convert", "--from", FAMILY.get(entry["code"], entry["code"]), str(checkpoint),
                                      "--model", model, "--out", str(out), *size])
    assert result.exit_code == 0, result.output
    converted = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    stem = entry["state_dict"].removesuffix(".safetensors")
    with torch.no_grad():
        torch.testing.assert_close(converted(outputs[entry["input"]]), outputs[f"{stem}.logits"], atol=1e-5, rtol=0)


def gdas_entry():
    return next(e for e in INDEX if e["genotype"] == "GDAS_F1" and e["network"] == "cifar")


@pytest.mark.parametrize("model, C, expected", [
    ("darts_v2", "4", ["missing keys ['cells.0.ops.0.op.1.weight'", "unexpected keys ['cells.0.ops.5."]),
    ("gdas_f1", "8", ["shape mismatches", "pass --C/--layers"]),
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
    torch.save(torch.nn.Linear(2, 2), path)  # a pickled module, as `torch.save(model)` writes
    with pytest.raises(CheckpointFormatError, match=r"weights_only=True\): it pickles torch\.nn\.modules\.linear\.Linear"):
        read_checkpoint(path)
    result = runner.invoke(app, ["convert", "--from", "darts", str(path), "--model", "darts_v2", "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 2 and "nas-zoo reads tensors and plain data only" in result.output.replace("\n", " ")


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
                               atol=1e-5, rtol=0)
    cifar = convert("darts_v2", "cifar", "--en-layers", "2")
    assert cifar.exit_code == 2 and "--en-layers applies to the broad networks" in cifar.output
