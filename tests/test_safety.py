"""Nothing lost: locked outputs, kills at every rename of a save, non-finite weights, bounded dataset files."""
import json
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nas_zoo
from nas_zoo import train as train_module
from nas_zoo.checkpoint import OutputError, find_checkpoint, load_state, locked_output, save_checkpoint
from nas_zoo.cli.app import app
from nas_zoo.data import CifarPickles, DatasetError
from tests.conftest import write_tiny_cifar

runner = CliRunner()
TINY = ["--init-channels", "4", "--layers", "3", "--batch-size", "16", "--num-workers", "0", "--deterministic"]


def _train(cifar, out, *extra):
    return ["train", "darts_v2", "--dataset", "cifar10", "--data-dir", str(cifar), "--out", str(out), *TINY, *extra]


def _losses(out):
    return [(m["train_loss"], m["test_loss"]) for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def test_a_second_writer_is_refused_naming_the_holder(tiny_cifar, tmp_path):
    with locked_output(tmp_path / "run"):
        result = runner.invoke(app, _train(tiny_cifar, tmp_path / "run", "--epochs", "1"))
        with pytest.raises(OutputError, match=f"being written by pid {os.getpid()} on {socket.gethostname()}"):
            with locked_output(tmp_path / "run"):
                pass
    assert result.exit_code == 2 and f"pid {os.getpid()}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar"]  # no run folder, no lock file left
    assert runner.invoke(app, _train(tiny_cifar, tmp_path / "run", "--epochs", "1")).exit_code == 0


def test_a_killed_writers_lock_does_not_stay(tmp_path):
    holder = ("import os, signal, sys\nfrom nas_zoo.checkpoint import locked_output\n"
              "with locked_output(sys.argv[1]):\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", holder, str(tmp_path / "run")])
    assert killed.returncode == -9 and (tmp_path / ".run.lock").exists()  # stale file, no lock held
    with locked_output(tmp_path / "run") as out:
        out.mkdir()
        (out / "metrics.jsonl").write_text("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# Kill the training process (SIGKILL) just before the Nth rename of a save, or at the Nth optimizer step.
# Two epochs of 5 steps: renames 1 (checkpoint) and 2 (metrics) end epoch 0; 3 (checkpoint -> .old),
# 4 (new checkpoint in place) and 5 (metrics) end epoch 1.
KILLER = """
import os, signal, sys
import torch
from nas_zoo.cli.app import app
point, at = sys.argv[1], int(sys.argv[2])
calls = [0]
def killing(real):
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
if point == "rename":
    os.replace = killing(os.replace)
else:
    torch.optim.SGD.step = killing(torch.optim.SGD.step)
app(sys.argv[3:])
"""


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted two-epoch run: what every killed and resumed run must end as."""
    root = tmp_path_factory.mktemp("straight")
    cifar = write_tiny_cifar(root)
    assert runner.invoke(app, _train(cifar, root / "run", "--epochs", "2")).exit_code == 0
    return cifar, _losses(root / "run")


@pytest.mark.parametrize("point, at", [("rename", 1), ("rename", 2), ("rename", 3), ("rename", 4), ("rename", 5),
                                       ("step", 8)])
def test_training_killed_anywhere_resumes_to_complete_outputs(straight, tmp_path, point, at):
    cifar, losses = straight
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLER, point, str(at), *_train(cifar, out, "--epochs", "2")],
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert killed.returncode == -9, killed.stderr
    result = runner.invoke(app, _train(cifar, out, "--epochs", "2", "--resume"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock, no temporary left
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "metrics.jsonl"]
    assert load_state(out / "checkpoint")["epoch"] == 2 and _losses(out) == losses


def test_non_finite_weights_never_replace_a_checkpoint(tmp_path):
    model = nas_zoo.build_network("DARTS_V2", C=4, layers=3)
    save_checkpoint(tmp_path / "checkpoint", model, {"epoch": 1})
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"not saved, the weights hold non-finite values \(classifier.weight\)"):
        save_checkpoint(tmp_path / "checkpoint", model, {"epoch": 2})
    assert load_state(find_checkpoint(tmp_path / "checkpoint"))["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_non_finite_test_loss_stops_before_the_save(tiny_cifar, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert runner.invoke(app, _train(tiny_cifar, out, "--epochs", "1")).exit_code == 0
    evaluate = train_module.evaluate_loader
    monkeypatch.setattr(train_module, "evaluate_loader", lambda *a, **k: {**evaluate(*a, **k), "loss": float("nan")})
    result = runner.invoke(app, _train(tiny_cifar, out, "--epochs", "2", "--resume"))
    assert result.exit_code == 2 and "epoch 1: the test loss became nan; the checkpoint after 1 epochs is kept" \
        in result.output.replace("\n", " ")
    assert load_state(out / "checkpoint")["epoch"] == 1 and len(_losses(out)) == 1


def test_stale_metrics_are_rebuilt_on_resume(tiny_cifar, tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, _train(tiny_cifar, out, "--epochs", "1")).exit_code == 0
    metrics = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text("")  # killed between the checkpoint and the rewrite of the metrics
    assert runner.invoke(app, _train(tiny_cifar, out, "--epochs", "1", "--resume")).exit_code == 0
    assert (out / "metrics.jsonl").read_text() == metrics


def test_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".checkpoint.tmp{dead.stdout.strip()}"
    (orphan / "x").parent.mkdir()
    live = tmp_path / f".checkpoint.tmp{os.getppid()}"  # another writer, alive: not ours to remove
    live.mkdir()
    save_checkpoint(tmp_path / "checkpoint", nas_zoo.build_network("DARTS_V2", C=4, layers=3), {"epoch": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "checkpoint"])


MULTIARRAY = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray


@pytest.mark.parametrize("reduce", [
    lambda: (MULTIARRAY._reconstruct, (np.ndarray, (3 * 2 ** 30,), b"u1")),
    lambda: (MULTIARRAY.scalar, (np.dtype("V2000000000"),)),
], ids=["reconstruct", "scalar"])
def test_a_batch_file_cannot_ask_for_more_than_its_size(tiny_cifar, reduce):
    class Bomb:
        def __reduce__(self):
            return reduce()

    path = tiny_cifar / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({"data": Bomb(), "labels": []}, protocol=2))
    with pytest.raises(DatasetError, match=f"asks for an array of [0-9,]+ bytes in a file of {path.stat().st_size}"):
        CifarPickles(tiny_cifar, "cifar10", False)


def test_convert_replaces_only_its_own_output(tmp_path):
    from safetensors.torch import save_file

    model = nas_zoo.build_network("DARTS_V2", C=4, layers=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "authors.safetensors"))
    convert = ["convert", "--from", "darts", str(tmp_path / "authors.safetensors"), "--model", "darts_v2.cifar10",
               "--C", "4", "--layers", "3", "--out"]
    (tmp_path / "proj" / "work").mkdir(parents=True)
    (tmp_path / "proj" / "important.txt").write_text("x")
    result = runner.invoke(app, [*convert, str(tmp_path / "proj")])
    assert result.exit_code == 2 and "not a weights folder written by nas-zoo" in result.output
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["important.txt", "work"]
    for _ in range(2):  # a new folder, then the same folder again
        result = runner.invoke(app, [*convert, str(tmp_path / "weights")])
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["README.md", "config.json", "model.safetensors"]
