"""benchmarks/gpu.py, the GPU measurements, run here at toy sizes on the CPU: every part runs and the JSON file
holds every figure; bad input is refused before anything is measured or written."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def gpu_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow  # torch.compile's tracing and xautodl's search steps: a minute on a busy 2-core machine
def test_every_part_runs_at_toy_sizes(tmp_path):
    out = tmp_path / "gpu.json"
    done = gpu_script("--device", "cpu", "--tiny", "--compile-backend", "eager", "--out", out)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["errors"] == {} and result["tiny"] and result["environment"]["device"] == "cpu"
    for name in ("darts_v2", "gdas_v1"):
        modes = result["train"][name]
        assert list(modes) == ["eager_fp32", "amp_channels_last", "amp_channels_last_compiled"]
        assert all(m["images_per_s"] > 0 and m["precision"] == "fp32" for m in modes.values())  # auto: fp32 on CPU
        assert [m["compiled"] for m in modes.values()] == [False, False, True]
        assert set(result["evaluate"][name]) == {"eager_fp32", "fast_fp32", "eager_autocast"}
    assert result["data_path"]["batched_images_per_s"] > 0 and result["data_path"]["dataloader_images_per_s"] > 0
    search = result["search_vs_xautodl"]
    assert "skipped" in search or all(search[a]["speedup"] > 0 for a in ("gdas", "darts"))
    assert result["wall_s"] > 0


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    existing = tmp_path / "mine.json"
    existing.write_text("keep")
    done = gpu_script("--device", "cpu", "--tiny", "--out", existing)
    assert done.returncode == 2 and "exists; give a new --out" in done.stderr and existing.read_text() == "keep"
    if not torch.cuda.is_available():
        done = gpu_script("--out", tmp_path / "new.json")
        assert done.returncode == 2 and "no CUDA GPU here; --device cpu --tiny" in done.stderr
        assert not (tmp_path / "new.json").exists()
