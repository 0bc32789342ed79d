"""The shared resumable run (``nas_zoo.harness.run``) on a one-layer model: the rules every command inherits."""
import json

import pytest
import torch
from torch import nn

from nas_zoo.harness.run import Run, changed_settings, saved_settings

SETTINGS = {"dataset": "cifar10", "config": {"seed": 0, "epochs": 2, "lr": 0.1, "num_workers": 2}}


def test_changed_settings_name_the_leaf_and_both_values():
    given = {"dataset": "cifar10", "config": {"seed": 3, "epochs": 4, "lr": 0.1, "num_workers": 0, "new": 1}}
    assert changed_settings(SETTINGS, given, ("epochs", "num_workers")) == ["new null -> 1", "seed 0 -> 3"]
    assert changed_settings(SETTINGS, SETTINGS) == []


def _epoch(run, model, epoch):
    with torch.no_grad():
        model.weight.add_(torch.randn_like(model.weight))  # draws from the RNG the checkpoint must restore
    run.save(model, {"epoch": epoch}, {"epoch": epoch, "draw": torch.rand(1).item()})


def test_a_run_resumes_with_its_records_and_rng(tmp_path):
    torch.manual_seed(0)
    straight = nn.Linear(2, 2)
    with (run := Run(tmp_path / "a", SETTINGS, progress=False)).start(resume=False) as state:
        assert state is None
        for epoch in (1, 2):
            _epoch(run, straight, epoch)
    torch.manual_seed(0)
    split = nn.Linear(2, 2)
    with (run := Run(tmp_path / "b", SETTINGS, progress=False)).start(resume=False):
        _epoch(run, split, 1)
    torch.manual_seed(123)  # whatever happened in between
    split = nn.Linear(2, 2)
    with (run := Run(tmp_path / "b", {**SETTINGS, "config": {**SETTINGS["config"], "epochs": 5}},
                     ("epochs",), progress=False)).start(resume=True) as state:
        assert state["epoch"] == 1 and [r["epoch"] for r in run.history] == [1]
        run.load(split, state)
        _epoch(run, split, 2)
    assert torch.equal(straight.weight, split.weight)
    a, b = ((tmp_path / x / "metrics.jsonl").read_text() for x in "ab")
    assert a == b and [json.loads(line)["epoch"] for line in a.splitlines()] == [1, 2]
    assert saved_settings(tmp_path / "b")["config"]["epochs"] == 5


def test_the_folder_rules(tmp_path):
    out, lines = tmp_path / "run", []
    with (run := Run(out, SETTINGS, progress=False)).start(resume=False):
        run.save(nn.Linear(1, 1), {"epoch": 1}, {"epoch": 1})
    with pytest.raises(ValueError, match=r"already holds a run \(checkpoint, metrics.jsonl\); pass --resume"):
        with Run(out, SETTINGS).start(resume=False):
            pass
    with pytest.raises(ValueError, match=r"other settings \(seed 0 -> 1\)"):
        with Run(out, {**SETTINGS, "config": {**SETTINGS["config"], "seed": 1}}).start(resume=True):
            pass
    fresh = tmp_path / "fresh"
    with Run(fresh, SETTINGS, log=lines.append).start(resume=True) as state:  # killed before a first checkpoint
        assert state is None and "starting from the beginning" in lines[0]
    (tmp_path / "orphan").mkdir()
    (tmp_path / "orphan" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="holds metrics.jsonl but no readable checkpoint"):
        with Run(tmp_path / "orphan", SETTINGS).start(resume=True):
            pass
    assert (tmp_path / "orphan" / "metrics.jsonl").read_text() == "{}\n"  # not the run's to replace
