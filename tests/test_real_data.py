"""Real-data checks on the CIFAR-10 subset in ../shared/data (skipped on a fresh clone without it)."""
import json

import pytest
from typer.testing import CliRunner

from nas_zoo.cli.app import app

from .conftest import SHARED

CIFAR_MINI = SHARED / "data" / "cifar10-mini"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CIFAR_MINI.is_dir(), reason=f"{CIFAR_MINI} is absent (no ../shared)")]


def test_reduced_network_learns_the_cifar10_subset(tmp_path):
    """A C=8, 5-cell DARTS_V2 network, 2 epochs on 5,085 real images: test error far below chance (90%)."""
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "darts_v2", "--dataset", "cifar10", "--data-dir", str(CIFAR_MINI),
                                 "--out", str(out), "--init-channels", "8", "--layers", "5", "--epochs", "2",
                                 "--batch-size", "64", "--auxiliary-weight", "0", "--num-workers", "0"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", "darts_v2", "--dataset", "cifar10", "--data-dir", str(CIFAR_MINI),
                                 "--checkpoint", str(out / "checkpoint"), "--json", "-"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["images"] == 1017
    assert figures["top1_error"] < 75, figures
