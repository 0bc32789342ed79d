"""What 2 processes give a training step on this machine: torchrun (2 processes of 1 thread, gloo) against one
process on 1 thread and on 2 threads, measured in the same run, one after the other.

The workload is one epoch of ``nas-zoo train``: darts_v2 at C=8, 5 cells, global batch 64 (README "Threads"'s
training step), 10 steps on 640 synthetic CIFAR images, no workers; the figure is the epoch's ``images_per_s``
(every rank's images over rank 0's time), first steps included. Run:
``python -m pytest benchmarks/test_distributed_scaling.py -s``; it prints the three rates and the ratio of the
2-process rate to each. No goal is asserted: on 2 cores shared with other jobs the figure says what they allowed.
"""
import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from nas_zoo.cli.app import app
from tests.conftest import write_tiny_cifar

STEP = ["--init-channels", "8", "--layers", "5", "--batch-size", "64", "--epochs", "1", "--num-workers", "0",
        "--auxiliary-weight", "0"]


def _rate(out) -> float:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["images_per_s"]


def test_two_processes_against_one(tmp_path):
    cifar = write_tiny_cifar(tmp_path, images=128)
    command = ["train", "darts_v2", "--dataset", "cifar10", "--data-dir", str(cifar), *STEP]
    rates = {}
    for threads in (1, 2):
        out = tmp_path / f"one-{threads}"
        result = CliRunner().invoke(app, [*command, "--out", str(out), "--threads", str(threads)])
        assert result.exit_code == 0, result.output
        rates[f"1 process, {threads} thread{'s' if threads > 1 else ''}"] = _rate(out)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "nas_zoo.cli", *command, "--out", str(tmp_path / "two"), "--threads", "1"],
                         capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert two.returncode == 0, two.stderr
    rates["2 processes, 1 thread each"] = _rate(tmp_path / "two")
    both = rates["2 processes, 1 thread each"]
    print("\n" + "\n".join(f"{name}: {rate:.1f} img/s (2 processes: {both / rate:.2f}x)" for name, rate in rates.items()))
    assert all(rate > 0 for rate in rates.values())
