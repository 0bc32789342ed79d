"""Train / evaluate harness: recipes, data, resumable checkpoints, bad input, the fast inference path."""
import json
import math
import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nas_zoo
from nas_zoo.harness import checkpoint as checkpoint_module
from nas_zoo.harness import run as run_module
from nas_zoo.harness.checkpoint import CheckpointError, find_checkpoint, load_weights, save_checkpoint
from nas_zoo.cli.app import app
from nas_zoo.harness.data import CifarPickles, DatasetError
from nas_zoo.models.fast import fold_batch_norm
from nas_zoo.harness.recipes import TrainConfig, paper_recipe

runner = CliRunner()
def tiny(epochs=2):  # one thread: the same in every run (the default counts the idle cores)
    return ["--init-channels", "4", "--layers", "3", "--batch-size", "16", "--num-workers", "0",
            "--epochs", str(epochs), "--deterministic", "--threads", "1"]


@pytest.fixture
def cifar(tiny_cifar):
    return tiny_cifar


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cifar_loader_reads_the_standard_layout(cifar):
    train, test = CifarPickles(cifar, "cifar10", True), CifarPickles(cifar, "cifar10", False)
    assert (len(train), len(test)) == (80, 16)
    image, label = train[0]
    assert image.size == (32, 32) and 0 <= label < 10


def test_cifar_loader_refuses_to_run_code(cifar):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(cifar / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Exploit(), "labels": []}, f)
    with pytest.raises(DatasetError, match="refusing to load builtins.print"):
        CifarPickles(cifar, "cifar10", False)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "cifar-10-batches-py" / "test_batch").unlink(), "test_batch not found; expected the standard"),
    (lambda d: (d / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02}q"), "is not a CIFAR batch file"),
])
def test_bad_dataset_is_named(cifar, damage, message):
    damage(cifar)
    result = run("evaluate", "darts_v2", "--dataset", "cifar10", "--data-dir", cifar)
    assert result.exit_code == 2 and message in result.output.replace("\n", " ")


def test_missing_data_dir_says_where_it_looked(tmp_path):
    result = run("train", "darts_v2", "--dataset", "cifar10", "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "o")
    text = result.output.replace("\n", " ")
    assert result.exit_code == 2 and "nowhere/cifar-10-batches-py/data_batch_1 not found" in text and "--download" in text
    for args in (["--data-dir", tmp_path / "nowhere"], []):  # evaluate has no --download to suggest
        result = run("evaluate", "darts_v2", "--dataset", "cifar10", "--no-speed", *args)
        assert result.exit_code == 2 and "--download" not in result.output and "--data-dir" in result.output


def test_offline_download_names_the_data_folder_and_the_cause(tmp_path, monkeypatch):
    import socket

    def offline(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    result = run("train", "darts_v2", "--dataset", "cifar10", "--data-dir", tmp_path / "data", "--out", tmp_path / "o",
                 "--download")
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and f"into --data-dir {tmp_path / 'data'} failed" in line
    assert "Temporary failure in name resolution" in line


def test_recipes_follow_the_papers():
    gdas = nas_zoo.get_genotype("GDAS_V1")
    cifar = paper_recipe(gdas, "gdas", "cifar10", "cifar")
    assert (cifar.epochs, cifar.batch_size, cifar.learning_rate, cifar.drop_path_prob, cifar.init_channels) == \
        (600, 96, 0.025, 0.2, 36)
    imagenet = paper_recipe(gdas, "gdas", "imagenet", "imagenet")
    assert (imagenet.init_channels, imagenet.layers, imagenet.label_smooth, imagenet.lr_scheduler) == (50, 14, 0.1, "step")
    pc = paper_recipe(nas_zoo.get_genotype("PC_DARTS_image"), "pc_darts", "imagenet", "imagenet")
    assert (pc.batch_size, pc.learning_rate, pc.lr_scheduler, pc.warmup_epochs) == (1024, 0.5, "linear", 5)
    assert paper_recipe(nas_zoo.get_genotype("PDARTS"), "pdarts", "cifar10", "cifar").drop_path_prob == 0.3


def test_learning_rate_schedules():
    cosine = TrainConfig(epochs=10, learning_rate=0.1)
    assert cosine.lr_at(0) == pytest.approx(0.1) and cosine.lr_at(5) == pytest.approx(0.05)
    step = TrainConfig(epochs=10, learning_rate=0.1, lr_scheduler="step", gamma=0.97)
    assert step.lr_at(2) == pytest.approx(0.1 * 0.97 ** 2)
    linear = TrainConfig(epochs=250, learning_rate=0.5, lr_scheduler="linear", warmup_epochs=5)
    assert [linear.lr_at(e) for e in (0, 4)] == pytest.approx([0.1, 0.5])
    assert linear.lr_at(245) == pytest.approx(0.5 * 5 / (245 * 5)) and linear.lr_at(100) > linear.lr_at(200)
    with pytest.raises(ValueError, match="unknown training field"):
        cosine.override({"epochz": 3})


def test_train_resume_continues_exactly(cifar, tmp_path, monkeypatch):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run("train", "darts_v2", "--dataset", "cifar10", "--data-dir", cifar, "--out", straight, *tiny()).exit_code == 0
    save = run_module.save_checkpoint

    def save_then_die(*args, **kwargs):  # the process is killed right after the first epoch's checkpoint
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "save_checkpoint", save_then_die)
    assert run("train", "darts_v2", "--dataset", "cifar10", "--data-dir", cifar, "--out", killed, *tiny()).exit_code == 130
    monkeypatch.setattr(run_module, "save_checkpoint", save)
    result = run("train", "darts_v2", "--dataset", "cifar10", "--data-dir", cifar, "--out", killed, "--resume", *tiny())
    assert result.exit_code == 0 and "resumed from" in result.output, result.output
    a = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 2 and [m["epoch"] for m in a] == [1, 2] and a[0]["threads"] == 1
    assert [(m["train_loss"], m["test_loss"]) for m in a] == [(m["train_loss"], m["test_loss"]) for m in b]
    assert "epoch 2/2: train loss" in result.output  # numbered as the progress bar numbers it


def test_resume_takes_the_saved_settings_and_may_raise_the_epochs(cifar, tmp_path):
    out = tmp_path / "run"
    train = ("train", "darts_v2", "--dataset", "cifar10", "--data-dir", cifar, "--out", out)
    assert run(*train, *tiny(1)).exit_code == 0
    result = run(*train, "--resume", "--seed", "3")
    assert result.exit_code == 2 and "other settings (seed 0 -> 3), which change its results" in result.output
    result = run(*train, "--resume")  # every setting from the checkpoint: nothing left to do
    assert result.exit_code == 0 and "at epoch 1" in result.output, result.output
    result = run(*train, "--resume", "--epochs", "2", "--num-workers", "1")
    assert result.exit_code == 0 and "epochs 1 -> 2" in result.output, result.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=True)["config"]["init_channels"] == 4
    result = run(*train, "--resume", "--epochs", "1")
    assert result.exit_code == 2 and "trained 2 epochs already" in result.output


def test_killed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = nas_zoo.build_network("DARTS_V2", C=4, layers=3)
    save_checkpoint(tmp_path / "checkpoint", model, {"epoch": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "checkpoint", model, {"epoch": 2})
    found = find_checkpoint(tmp_path / "checkpoint")
    assert found == tmp_path / "checkpoint" and checkpoint_module.load_state(found)["epoch"] == 1
    load_weights(found, nas_zoo.build_network("DARTS_V2", C=4, layers=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_checkpoint_of_another_architecture_names_the_keys(cifar, tmp_path):
    out = tmp_path / "run"
    assert run("train", "darts_v2", "--dataset", "cifar10", "--data-dir", cifar, "--out", out, *tiny(1)).exit_code == 0
    weights = out / "checkpoint" / "model.safetensors"
    result = run("evaluate", "gdas_v1", "--dataset", "cifar10", "--data-dir", cifar, "--checkpoint", weights)
    assert result.exit_code == 2
    assert "does not fit CellNetwork: missing keys" in result.output.replace("\n", " ")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_weights(tmp_path / "absent.safetensors", nas_zoo.build_network("DARTS_V2", C=4, layers=3))


def test_unwritable_output_is_an_error(cifar, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("train", "darts_v2", "--dataset", "cifar10", "--data-dir", cifar, "--out", blocker / "run", *tiny())
    assert result.exit_code == 2 and "file" in result.output
    result = run("evaluate", "darts_v2", "--dataset", "cifar10", "--no-accuracy", "--no-speed",
                 "--json", blocker / "x.json")
    assert result.exit_code == 2 and "cannot write the result" in result.output


def test_evaluate_reports_figures_as_json(cifar, tmp_path):
    out = tmp_path / "run"
    assert run("train", "darts_v2", "--dataset", "cifar10", "--data-dir", cifar, "--out", out, *tiny(1)).exit_code == 0
    result = run("evaluate", "darts_v2", "--dataset", "cifar10", "--data-dir", cifar, "--checkpoint",
                 out / "checkpoint", "--json", "-", "--fast", "--threads", "1")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["images"] == 16 and figures["top5_error"] <= figures["top1_error"]
    wrong = [figures[k] * 16 / 100 for k in ("top1_error", "top5_error")]
    assert all(math.isclose(w, round(w)) for w in wrong)  # whole images of the 16
    assert figures["fast"] and figures["threads"] == 1
    assert {"latency_ms_batch1", "throughput_batch64", "params", "flops"} <= set(figures)
    # a C=4, 3-cell network: the paper's figures (C=36, 20 cells) are not set beside it
    assert (figures["C"], figures["layers"], figures["reported"]) == (4, 3, None)
    assert figures["paper_network"] == {"C": 36, "layers": 20}
    text = run("evaluate", "darts_v2", "--dataset", "cifar10", "--checkpoint", out / "checkpoint", "--no-accuracy",
               "--no-speed").output
    assert "not the paper's size" in text and "2.76" not in text
    text = run("evaluate", "darts_v2", "--dataset", "cifar10", "--no-accuracy", "--no-speed").output
    assert "C=36, 20 cells" in text and "2.76" in text and "not the paper's size" not in text


def test_evaluate_resolves_the_papers_imagenet_network():
    result = run("evaluate", "gdas_v1", "--dataset", "imagenet", "--no-accuracy", "--no-speed", "--json", "-")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert (figures["model"], figures["params"]) == ("gdas_v1_imagenet", 5345075)
    assert figures["reported"]["mult_adds_M"] == 581


@pytest.mark.parametrize("name", ["darts_v2", "gdas_f1_imagenet", "b_pc_darts_image"])
def test_folded_batch_norm_computes_the_same_function(name):
    torch.manual_seed(0)
    model = nas_zoo.create_model(name, C=8, layers=6).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64)
    folded = fold_batch_norm(model)
    for sequential in (m for m in folded.modules() if isinstance(m, torch.nn.Sequential)):
        layers = list(sequential)
        for before, layer in zip(layers, layers[1:]):  # what is left follows a pooling layer (GDAS's FIX-R)
            assert not isinstance(layer, torch.nn.BatchNorm2d) or isinstance(before, torch.nn.MaxPool2d)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_class_folder_dataset_trains_the_imagenet_network(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            folder = tmp_path / "folder" / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "run"
    result = run("train", "darts_v2", "--dataset", "folder", "--data-dir", tmp_path / "folder", "--out", out,
                 "--init-channels", "4", "--layers", "3", "--batch-size", "4", "--epochs", "1", "--num-workers", "0")
    assert result.exit_code == 0, result.output
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert (state["network"], state["num_classes"]) == ("imagenet", 2)
    result = run("evaluate", "darts_v2", "--dataset", "folder", "--data-dir", tmp_path / "folder",
                 "--checkpoint", out / "checkpoint", "--no-speed", "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["images"] == 6
    result = run("evaluate", "darts_v2", "--dataset", "folder", "--data-dir", tmp_path, "--no-speed")
    assert result.exit_code == 2 and "expected class folders" in result.output.replace("\n", " ")


def test_train_and_evaluate_the_broad_network_with_other_enhancement_layers(cifar, tmp_path):
    out = tmp_path / "run"
    args = ["--init-channels", "4", "--layers", "4", "--batch-size", "16", "--num-workers", "0", "--epochs", "1"]
    result = run("train", "b_darts_v1", "--dataset", "cifar10", "--data-dir", cifar, "--out", out, *args,
                 "--en-layers", "1")
    assert result.exit_code == 0, result.output
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert state["config"]["en_layers"] == 1
    result = run("evaluate", "b_darts_v1", "--dataset", "cifar10", "--data-dir", cifar, "--checkpoint",
                 out / "checkpoint", "--no-speed", "--json", "-")
    assert result.exit_code == 0, result.output  # the checkpoint's run builds one enhancement cell, as trained
    result = run("train", "darts_v2", "--dataset", "cifar10", "--data-dir", cifar, "--out", tmp_path / "cifar",
                 *args, "--en-layers", "1")
    assert result.exit_code == 2 and "enhancement_layers applies to the broad networks" in result.output
