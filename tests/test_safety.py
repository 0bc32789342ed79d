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
from nas_zoo.harness import train as train_module
from nas_zoo.harness.checkpoint import find_checkpoint, load_state, save_checkpoint
from nas_zoo.files import OutputError, locked_output
from nas_zoo.cli.app import app
from nas_zoo.harness.data import CifarPickles, DatasetError
from tests.conftest import write_tiny_cifar

runner = CliRunner()
TINY = ["--init-channels", "4", "--layers", "3", "--batch-size", "16", "--num-workers", "0", "--deterministic",
        "--threads", "1"]  # the same summation order in every process, however busy the cores


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
    holder = ("import os, signal, sys\nfrom nas_zoo.files import locked_output\n"
              "with locked_output(sys.argv[1]):\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", holder, str(tmp_path / "run")])
    assert killed.returncode == -9 and (tmp_path / ".run.lock").exists()  # stale file, no lock held
    with locked_output(tmp_path / "run") as out:
        out.mkdir()
        (out / "metrics.jsonl").write_text("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# Kill a command (SIGKILL) just before the Nth rename of a save (os.replace or os.rename), or at the Nth step of
# an SGD optimizer (the weights' step in every command). Image training, two epochs of 5 steps: renames 1
# (checkpoint) and 2 (metrics) end epoch 0; 3 (checkpoint -> .old), 4 (new checkpoint in place) and 5 (metrics)
# end epoch 1.
#
# Each command runs in a child forked from one process that has imported nas-zoo (and run nothing in torch, so
# no thread pool is forked): a fresh interpreter per kill would pay the ~4 s import 27 times.
ZYGOTE = """
import json, os, signal, sys
import torch
from nas_zoo.cli.app import app

def killing(real, at):
    calls = [0]
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call

for line in sys.stdin:
    point, at, log, args = json.loads(line)
    pid = os.fork()
    if pid == 0:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1), os.dup2(out, 2)
        if point == "rename":
            os.replace, os.rename = killing(os.replace, at), killing(os.rename, at)
        else:
            torch.optim.SGD.step = killing(torch.optim.SGD.step, at)
        try:
            app(args)
        except SystemExit as end:
            os._exit(end.code if isinstance(end.code, int) else 1)
        os._exit(0)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


@pytest.fixture(scope="module")
def kill():
    """``kill(point, at, args, log)``: run the command ``args`` until the ``at``-th ``point``; assert it died there."""
    zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "COLUMNS": "200"})

    def run(point, at, args, log):
        zygote.stdin.write(json.dumps([point, at, str(log), args]) + "\n")
        zygote.stdin.flush()
        assert int(zygote.stdout.readline()) == -9, log.read_text()
        log.unlink()

    yield run
    zygote.stdin.close()
    assert zygote.wait(timeout=60) == 0


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted two-epoch run: what every killed and resumed run must end as."""
    root = tmp_path_factory.mktemp("straight")
    cifar = write_tiny_cifar(root)
    assert runner.invoke(app, _train(cifar, root / "run", "--epochs", "2")).exit_code == 0
    return cifar, _losses(root / "run")


@pytest.mark.parametrize("point, at", [("rename", 1), ("rename", 2), ("rename", 3), ("rename", 4), ("rename", 5),
                                       ("step", 8)])
def test_training_killed_anywhere_resumes_to_complete_outputs(kill, straight, tmp_path, point, at):
    cifar, losses = straight
    out = tmp_path / "run"
    kill(point, at, _train(cifar, out, "--epochs", "2"), tmp_path / "killed.log")
    result = runner.invoke(app, _train(cifar, out, "--epochs", "2", "--resume"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock, no temporary left
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "metrics.jsonl"]
    assert load_state(out / "checkpoint")["epoch"] == 2 and _losses(out) == losses


# Language models, two epochs of 6 steps: renames 1 (best), 2 (checkpoint) and 3 (metrics) end epoch 1; epoch 2 (a
# better validation loss) swaps both checkpoints: 4 (best -> .old), 5 (new best), 6 (checkpoint -> .old), 7 (new
# checkpoint), then 8 (metrics).
LM_TINY = {"nhid": 16, "batch_size": 4, "eval_batch_size": 4, "test_batch_size": 2, "bptt": 8, "max_seq_len_delta": 4,
           "max_batches": 6, "epochs": 2}


def _train_lm(corpus, out, *extra):
    settings = [arg for key, value in LM_TINY.items() for arg in ("--set", f"{key}={value}")]
    return ["train", "darts_v2_ptb", "--dataset", "ptb", "--data-dir", str(corpus), "--out", str(out), *settings,
            "--threads", "1", *extra]


def _lm_outputs(out):
    """What a language-model run leaves: its last state (less the RNG streams) and both checkpoints' weights."""
    from safetensors.torch import load_file

    last = load_state(out / "checkpoint")
    return ({k: last[k] for k in ("epoch", "optimizer", "val_losses", "best_loss")} | {"metrics": [
        {k: v for k, v in m.items() if k != "seconds"} for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]},
            {name: load_file(str(out / name / "model.safetensors")) for name in ("best", "checkpoint")})


@pytest.fixture(scope="module")
def straight_lm(tmp_path_factory):
    from tests.test_rnn import _write_corpus

    root = tmp_path_factory.mktemp("straight_lm")
    corpus = _write_corpus(root / "ptb")
    result = runner.invoke(app, _train_lm(corpus, root / "run"))
    assert result.exit_code == 0, result.output
    return corpus, _lm_outputs(root / "run")


def _same_weights(mine, theirs):
    return mine.keys() == theirs.keys() and all(
        mine[n].keys() == theirs[n].keys() and all(torch.equal(mine[n][k], theirs[n][k]) for k in mine[n])
        for n in mine)


# Killed before its first checkpoint (renames 1 and 2), a run has nothing to resume: --resume says so and starts it
# again, to end as the straight run.
@pytest.mark.parametrize("point, at", [("rename", 1), ("rename", 2), ("rename", 3), ("rename", 4), ("rename", 5),
                                       ("rename", 6), ("rename", 7), ("rename", 8), ("step", 8)])
def test_language_model_killed_anywhere_resumes_to_complete_outputs(kill, straight_lm, tmp_path, point, at):
    corpus, (state, weights) = straight_lm
    out = tmp_path / "run"
    kill(point, at, _train_lm(corpus, out), tmp_path / "killed.log")
    result = runner.invoke(app, _train_lm(corpus, out, "--resume"))
    assert result.exit_code == 0, result.output
    assert ("starting from the beginning" in result.output) == (point == "rename" and at <= 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock, no temporary left
    assert sorted(p.name for p in out.iterdir()) == ["best", "checkpoint", "metrics.jsonl"]
    mine_state, mine_weights = _lm_outputs(out)
    assert mine_state == state and _same_weights(mine_weights, weights)


# Search, two epochs of 3 steps (40 images: 20 train the weights, 20 alpha, batch 8): each epoch ends with its
# checkpoint (rename 1; from epoch 2 on, 5: checkpoint -> .old and 6: new checkpoint), metrics.jsonl (2, 7),
# genotype.json (3, 8) and search.json (4, 9); the end of the run rewrites both (10, 11).
def _search(cifar, out, *extra):
    return ["search", "darts", "--data-dir", str(cifar), "--epochs", "2", "--init-channels", "4", "--layers", "3",
            "--batch-size", "8", "--num-workers", "0", "--threads", "1", "--hessian-every", "0", "--out",
            str(out), *extra]


def _search_outputs(out):
    """genotype.json, and the figures of search.json that do not depend on timing."""
    record = json.loads((out / "search.json").read_text())
    return (json.loads((out / "genotype.json").read_text()),
            {k: record[k] for k in ("epochs_done", "epochs", "architecture", "skip_connections_normal")})


@pytest.fixture(scope="module")
def straight_search(tmp_path_factory):
    root = tmp_path_factory.mktemp("straight_search")
    cifar = write_tiny_cifar(root, images=8)
    result = runner.invoke(app, _search(cifar, root / "run"))
    assert result.exit_code == 0, result.output
    return cifar, _search_outputs(root / "run")


@pytest.mark.parametrize("point, at", [("rename", at) for at in range(1, 12)] + [("step", 5)])
def test_search_killed_anywhere_resumes_to_complete_outputs(kill, straight_search, tmp_path, point, at):
    cifar, outputs = straight_search
    out = tmp_path / "run"
    kill(point, at, _search(cifar, out), tmp_path / "killed.log")
    if point == "rename" and at > 1:  # a checkpoint survives (perhaps as checkpoint.old): it is not started over
        again = runner.invoke(app, _search(cifar, out))
        assert again.exit_code == 2 and "already holds a run" in again.output, again.output
    result = runner.invoke(app, _search(cifar, out, "--resume"))
    assert result.exit_code == 0, result.output
    # killed before the first checkpoint: nothing to resume, it starts again
    assert ("starting from the beginning" in result.output) == (point == "rename" and at == 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lock, no temporary left
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "genotype.json", "metrics.jsonl", "search.json"]
    assert load_state(out / "checkpoint")["epoch"] == 2
    genotype, record = _search_outputs(out)
    assert record["epochs_done"] == 2 and genotype == outputs[0] and record == outputs[1]


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


def test_language_model_convert_replaces_only_its_own_output(tmp_path):
    """The DARTS language model goes through the same writer: a folder of the user's is never emptied."""
    from safetensors.torch import save_file

    ours = nas_zoo.create_model("darts_v2_ptb", ntoken=50, nhid=16).state_dict()
    authors = {("rnns.0." + k[len("cell."):] if k.startswith("cell.") else
                "decoder.bias" if k == "decoder_bias" else k): v.contiguous() for k, v in ours.items()}
    save_file(authors, str(tmp_path / "model.safetensors"))
    convert = ["convert", "--from", "darts", str(tmp_path / "model.safetensors"), "--model", "darts_v2_ptb",
               "--dataset", "ptb", "--out"]
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "important.txt").write_text("x")
    result = runner.invoke(app, [*convert, str(tmp_path / "proj")])
    assert result.exit_code == 2 and "not a weights folder written by nas-zoo" in result.output
    assert [p.name for p in (tmp_path / "proj").iterdir()] == ["important.txt"]
    for _ in range(2):  # a new folder, then the same folder again
        result = runner.invoke(app, [*convert, str(tmp_path / "weights")])
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["README.md", "config.json", "model.safetensors"]
