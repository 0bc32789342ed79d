"""Several processes: torchrun on the CPU (gloo), 2 ranks, against one process.

The fast tests play a rank by setting torchrun's variables (RANK, WORLD_SIZE) in this process: the data each rank
loads, and the refusals that come before any rank talks to another. The slow ones launch
``python -m torch.distributed.run --standalone --nproc-per-node 2`` in a subprocess (30-60 s each on 2 shared
cores) on tiny networks, deterministic and on one thread per process.
"""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from nas_zoo.cli.app import app
from nas_zoo.harness.batched import BatchedCifar
from nas_zoo.harness.checkpoint import load_state
from nas_zoo.harness.data import CifarPickles, DataSpec, build_dataset, epoch_loader
from nas_zoo.registry.zoo import DATASET_STATS, data_config
from tests.conftest import write_tiny_cifar

runner = CliRunner()
# lr 0.005: at the recipe's 0.025 this tiny network is chaotic (one process, a weight moved by 1e-7 moves the
# weights by 1e-4 after 5 steps and 3e-3 after 10); at 0.005 the same perturbation stays below 3e-7. No drop path:
# its masks are each rank's own draws (as dropout's), not those of one process. No cutout: its constant squares tie
# max-pool windows, which rounding breaks one way on 16 images and another on 8 (seed 0: weights 8e-5 apart after
# one epoch with it, 2.4e-7 without; the shares' augmentation, cutout included, is checked image by image above).
TINY = ["--init-channels", "4", "--layers", "3", "--batch-size", "16", "--num-workers", "0", "--deterministic",
        "--threads", "1", "--auxiliary-weight", "0", "--drop-path-prob", "0", "--learning-rate", "0.005",
        "--cutout-length", "0", "--epochs", "2"]


def _train(cifar, out, *extra):
    return ["train", "darts_v2", "--dataset", "cifar10", "--data-dir", str(cifar), "--out", str(out), *TINY, *extra]


def torchrun(*command, processes: int = 2) -> subprocess.CompletedProcess:
    """``command`` (a script and its arguments, or ``-m MODULE ...``) on ``processes`` ranks; one free port each."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(processes), *map(str, command)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def rank_of(monkeypatch):
    """Play rank ``rank`` of ``world`` in this process (torchrun's variables; no process group)."""
    def play(rank: int, world: int) -> None:
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
    return play


def _batches(dataset, epoch, batch_size=12):
    return [images for images, _ in epoch_loader(dataset, batch_size, seed=3, epoch=epoch)]


def test_the_ranks_shares_make_up_the_batches_of_one_process(tiny_cifar, rank_of):
    """Order and augmentation (crop, flip, cutout) are those of one process, image for image: the global batch k is
    rank 0's k-th batch interleaved with rank 1's (DistributedSampler takes every other image)."""
    train = build_dataset(DataSpec("cifar10", tiny_cifar), data_config("cifar", "cifar10"), train=True)
    rng = torch.get_rng_state()
    one = _batches(train, epoch=1)
    assert torch.equal(torch.get_rng_state(), rng)  # the process's own stream is left alone
    shares = []
    for rank in (0, 1):
        rank_of(rank, 2)
        shares.append(_batches(train, epoch=1))
    assert len(one) == len(shares[0]) == len(shares[1]) == 7  # 80 images: 6 batches of 12 and one of 8
    for batch, first, second in zip(one, *shares):
        assert torch.equal(batch[0::2], first) and torch.equal(batch[1::2], second)
    rank_of(0, 1)
    assert not torch.equal(_batches(train, epoch=2)[0], one[0])  # another epoch, another order and augmentation


def test_the_batched_paths_shares_make_up_the_batches_of_one_process(tiny_cifar, rank_of):
    """The batched CIFAR path: every rank draws the epoch's choices from the same generator and takes every other
    image of each batch; 79 images: the epoch is padded to 80 with its first image, as DistributedSampler pads."""
    train = CifarPickles(tiny_cifar, "cifar10", train=True)
    train.images, train.targets = train.images[:79], train.targets[:79]
    mean, std = DATASET_STATS["cifar10"]

    def batches():
        loader = BatchedCifar(train, 12, torch.device("cpu"), mean, std, torch.Generator().manual_seed(3), cutout=16)
        return len(loader), list(loader)

    steps, one = batches()
    shares = []
    for rank in (0, 1):
        rank_of(rank, 2)
        shares.append(batches())
    assert steps == shares[0][0] == shares[1][0] == len(one) == 7
    (_, first), (_, second) = shares
    for (images, labels), (x0, y0), (x1, y1) in zip(one[:-1], first, second):
        assert torch.equal(images[0::2], x0) and torch.equal(images[1::2], x1)
        assert torch.equal(labels[0::2], y0) and torch.equal(labels[1::2], y1)
    (images, labels), (x0, _), (x1, _) = one[-1], first[-1], second[-1]
    assert len(labels) == 7 and len(x0) == len(x1) == 4  # 7 images and the epoch's first again
    assert torch.equal(images[0::2], x0) and torch.equal(images[1::2], x1[:3])
    assert torch.equal(x1[3], one[0][0][0])


def test_a_measurement_counts_every_image_once(tiny_cifar, rank_of):
    test = build_dataset(DataSpec("cifar10", tiny_cifar), data_config("cifar", "cifar10"), train=False)
    seen = []
    for rank in (0, 1, 2):
        rank_of(rank, 3)
        seen += [label for _, labels in epoch_loader(test, 4, 0, 0, shuffle=False) for label in labels.tolist()]
    assert sorted(seen) == sorted(test.targets) and len(seen) == 16


@pytest.mark.parametrize("command, message", [
    (["train", "darts_v2", "--dataset", "cifar10", "--batch-size", "15"],
     "--batch-size 15 cannot be split equally over 2 processes; pass a multiple of 2"),
    (["search", "darts", "--batch-size", "15"], "--batch-size 15 cannot be split equally over 2 processes"),
    (["search", "ednas"], "the ednas search on cifar10 runs in one process; start it without torchrun"),
    (["search", "gdas", "--dataset", "ptb"], "the gdas search on ptb runs in one process"),
    (["train", "darts_v2_ptb", "--dataset", "ptb"], "training a language model (ptb) runs in one process"),
])
def test_what_cannot_run_on_several_processes_is_refused_in_one_line(tiny_cifar, tmp_path, rank_of, command,
                                                                      message):
    rank_of(1, 2)
    result = runner.invoke(app, [*command, "--data-dir", str(tiny_cifar), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and f"error: rank 1: {message}" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


# -- launched --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs (10 steps) of the same run in one process and on 2 processes (--sync-bn)."""
    root = tmp_path_factory.mktemp("trained")
    cifar = write_tiny_cifar(root)
    one = runner.invoke(app, _train(cifar, root / "one"))
    assert one.exit_code == 0, one.output
    two = torchrun("-m", "nas_zoo.cli", *_train(cifar, root / "two", "--sync-bn"))
    assert two.returncode == 0, two.stderr
    return cifar, root / "one", root / "two"


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out):
    return load_file(str(out / "checkpoint" / "model.safetensors"))


@pytest.mark.slow
def test_two_processes_train_as_one(trained):
    """2 ranks with --sync-bn end with the weights of one process on the same global batch. Batch norm is what
    needs --sync-bn: each rank's share alone would give other statistics than the whole batch (the papers'
    multi-GPU runs trained that way, the default); the data is the same (the test above)."""
    _, one, two = trained
    mine, theirs = _weights(two), _weights(one)
    assert mine.keys() == theirs.keys()
    assert max((mine[k].double() - theirs[k].double()).abs().max().item() for k in mine) < 1e-5
    for a, b in zip(_metrics(two), _metrics(one), strict=True):
        assert (a["devices"], b["devices"]) == (2, 1)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-5) and a["test_images"] == 16


@pytest.mark.slow
def test_evaluation_on_two_processes_counts_the_test_split_once(trained, tmp_path):
    cifar, one, _ = trained
    args = ["evaluate", "darts_v2", "--dataset", "cifar10", "--data-dir", cifar, "--checkpoint", one,
            "--no-speed", "--num-workers", "0", "--batch-size", "6", "--threads", "1", "--json", "-"]
    alone = runner.invoke(app, list(map(str, args)))
    assert alone.exit_code == 0, alone.output
    both = torchrun("-m", "nas_zoo.cli", *args)
    assert both.returncode == 0, both.stderr
    mine, theirs = json.loads(both.stdout), json.loads(alone.output)  # rank 0 alone prints
    assert (mine["devices"], theirs["devices"], mine["images"], theirs["images"]) == (2, 1, 16, 16)
    for key in ("top1_error", "top5_error", "params", "flops"):
        assert mine[key] == theirs[key]
    assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-6)


KILLER = """
import os, signal, sys
import torch
from nas_zoo.cli.app import main
at, calls, step = int(sys.argv.pop(1)), [0], torch.optim.SGD.step
def killing(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == at and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *args, **kwargs)
torch.optim.SGD.step = killing
main()
"""


@pytest.mark.slow
def test_a_rank_killed_mid_epoch_fails_the_job_and_resume_continues_exactly(trained, tmp_path):
    """Rank 1 is killed at its 8th step (epoch 2 of 2): the job exits non-zero, torchrun's summary names rank 1 and
    the signal, the checkpoint of epoch 1 is whole, and --resume on 2 processes ends as the uninterrupted run."""
    cifar, _, straight = trained
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    out = tmp_path / "run"
    killed = torchrun(killer, 8, *_train(cifar, out, "--sync-bn"))
    assert killed.returncode != 0
    root_cause = killed.stderr[killed.stderr.index("Root Cause"):]
    assert "rank      : 1 (local_rank: 1)" in root_cause and "Signal 9 (SIGKILL)" in root_cause, killed.stderr
    # torchrun's own traceback (its ChildFailedError) only: rank 0, which lost rank 1, says so in one line (or
    # torchrun stops it first)
    assert killed.stderr.count("Traceback") == 1, killed.stderr
    assert load_state(out / "checkpoint")["epoch"] == 1 and len(_metrics(out)) == 1
    resumed = torchrun("-m", "nas_zoo.cli", *_train(cifar, out, "--sync-bn", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killer.py", "run"]  # no lock, no temporary left
    mine, theirs = _weights(out), _weights(straight)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    drop = ("images_per_s",)
    assert [{k: v for k, v in m.items() if k not in drop} for m in _metrics(out)] == \
        [{k: v for k, v in m.items() if k not in drop} for m in _metrics(straight)]


@pytest.mark.slow
def test_our_one_line_errors_reach_torchruns_summary(tiny_cifar, tmp_path):
    result = torchrun("-m", "nas_zoo.cli", *_train(tiny_cifar, tmp_path / "out", "--batch-size", "15"))
    assert result.returncode != 0
    summary = result.stderr[result.stderr.index("Root Cause"):]  # the rank that failed first: both refuse it
    assert re.search(r"rank +: 0 .*traceback : error: --batch-size 15 cannot be split", summary, re.S) or \
        re.search(r"rank +: 1 .*traceback : error: rank 1: --batch-size 15 cannot be split", summary, re.S)


# The search in float64: in float32 the rounding of another order of summation (2 shares, not one batch) moves alpha
# by up to arch_lr at Adam's first steps, which divide every gradient component by its own size; in float64 the
# runs agree to 1e-10 and any real difference (a gradient not averaged, a sample not shared) stays visible.
SEARCH = """
import sys
import torch
from nas_zoo.harness import distributed
from nas_zoo.search import ALGORITHMS, SearchConfig, hessian, new_search
torch.set_default_dtype(torch.float64)  # the images too (ToTensor follows it)
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
name, order, every, data, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
hessian.STEPS = 3  # a few Lanczos steps: the same on one process and two is what counts here
algorithm = ALGORITHMS[name](**({"order": order} if name == "darts" else {}))
config = SearchConfig(data_dir=data, epochs=1, batch_size=8, train_portion=0.4, init_channels=4, layers=3,
                      num_workers=0, device="cpu", sync_bn=True, hessian_every=every)
search = new_search(algorithm, config, out, progress=False)
search.run()
torch.save(dict(search.model.arch.state_dict()), f"{out}/alpha{distributed.rank()}.pt")
"""


@pytest.mark.slow
@pytest.mark.parametrize("name, order, every", [("darts", 1, 1), ("darts", 2, 0), ("gdas", 1, 0)])
def test_a_search_on_two_processes_keeps_alpha_identical_and_as_one_process(tmp_path, name, order, every):
    """2 steps (40 images: 16 train the weights, 24 alpha; batch 8: 4 per rank), --sync-bn and float64 (see
    above): alpha is the same on both ranks, bit for bit, and that of one process. The first run also has the collapse
    monitor, whose Hessian-vector products are averaged over the ranks: the same eigenvalue as one process."""
    script, tiny_cifar = tmp_path / "search.py", write_tiny_cifar(tmp_path, images=8)
    script.write_text(SEARCH)
    alone = subprocess.run([sys.executable, script, name, str(order), str(every), tiny_cifar, tmp_path / "one"],
                           capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr
    both = torchrun(script, name, order, every, tiny_cifar, tmp_path / "two")
    assert both.returncode == 0, both.stderr
    one, rank0, rank1 = (torch.load(path) for path in (tmp_path / "one" / "alpha0.pt", tmp_path / "two" / "alpha0.pt",
                                                       tmp_path / "two" / "alpha1.pt"))
    assert one.keys() == rank0.keys() == rank1.keys()
    for key in one:
        assert torch.equal(rank0[key], rank1[key])
        assert (rank0[key] - one[key]).abs().max() < 1e-10 * one[key].abs().max()
        assert not torch.equal(one[key], torch.zeros_like(one[key]))
    record = json.loads((tmp_path / "two" / "search.json").read_text())
    assert record["devices"] == 2 and record["cpu_hours"] == pytest.approx(2 * record["wall_time_s"] / 3600, rel=1e-3)
    eigenvalue = [json.loads((tmp_path / run / "search.json").read_text())["epochs"][-1].get("hessian_eigenvalue")
                  for run in ("one", "two")]
    assert (eigenvalue[1] is None) == (every == 0)
    if every:
        assert eigenvalue[1] == pytest.approx(eigenvalue[0], rel=1e-9) and eigenvalue[1] != 0
    genotype = json.loads((tmp_path / "two" / "genotype.json").read_text())
    assert genotype == json.loads((tmp_path / "one" / "genotype.json").read_text())
