"""What the benchmarks share: the device, the authors' modules loaded from a checkout, the best of a few timed
calls, seeded and synchronised steps, one step's peak memory measured in a fresh process, and CIFAR-10 files of
random images.

Peak memory: a benchmark file runs itself as a script (its ``__main__`` builds one side's step from the
command line and calls ``report_peak``); ``peak_memory`` starts that process and reads the figure back. The
step is warmed up once, then the bytes above the step's starting point are taken: on CUDA the allocator's
peak, on CPU the peak resident set (VmHWM, reset through ``/proc/self/clear_refs``), with glibc returning
freed blocks to the system at once (``MALLOC_MMAP_THRESHOLD_``) so that the resident set is the live memory.
The threshold is one page: blocks below it stay in glibc's heap when freed, so a step of many small tensors
(a recurrent cell's per-time-step states) would reuse what its warm-up left resident and read as a fraction
of what it holds (with 64 KiB, the authors' recurrent search step read 21 MiB for 129 MiB live).
"""
import contextlib
import importlib.util
import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def load_authors(folder: Path, names: Sequence[str], prefix: str) -> SimpleNamespace:
    """The authors' modules ``names`` from ``folder`` of their checkout, loaded in this order under private
    names. They import each other by bare name (``from operations import *``) and this repository has a
    ``genotypes`` package of its own, so the bare names point at their modules only while they load."""
    saved = {name: sys.modules.get(name) for name in names}
    modules = {}
    try:
        for name in names:
            spec = importlib.util.spec_from_file_location(f"{prefix}_{name}", Path(folder) / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            modules[name] = module
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return SimpleNamespace(**modules)


@contextlib.contextmanager
def cuda_calls_stay_on_device():
    """The authors' code calls ``.cuda()`` where it builds alpha; on a machine without CUDA that call returns
    the tensor itself while the block runs (their code is not changed)."""
    if DEVICE == "cuda":
        yield
        return
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of ``repeats`` calls of ``fn`` (seconds), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def seeded(step: Callable[[], object], seed: int) -> None:
    """One step from ``seed`` (dropout masks, Gumbel noise), finished on the device."""
    torch.manual_seed(seed)
    step()
    sync()


def mean_seeded_time(step: Callable[[], object], rounds: int) -> float:
    """The mean time of ``step`` from seeds 0 .. rounds - 1, after a warm-up step from another seed."""
    seeded(step, 1000)
    times = []
    for seed in range(rounds):
        start = time.perf_counter()
        seeded(step, seed)
        times.append(time.perf_counter() - start)
    return statistics.mean(times)


def resident(field: str) -> int:
    """A memory field of this process's ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def peak_memory(script: str, *args) -> int:
    """Peak bytes of one step above its starting point, measured by running ``script`` with ``args`` in a
    fresh process (its ``__main__`` calls ``report_peak``)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "4096"}  # freed blocks go back to the OS: RSS = live memory
    out = subprocess.run([sys.executable, script, *map(str, args)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"]


def report_peak(step: Callable[[], object]) -> None:
    """In the fresh process: warm ``step`` up, measure one step's peak above its start, print it for
    ``peak_memory``."""
    seeded(step, 1000)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        seeded(step, 0)
        peak = torch.cuda.max_memory_allocated() - start
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak resident set (VmHWM)
        start = resident("VmRSS")
        seeded(step, 0)
        peak = resident("VmHWM") - start
    print(json.dumps({"peak_bytes": peak}))


def cifar_files(root: Path, images: int) -> Path:
    """``root/cifar-10-batches-py`` of ``images`` random training images (and as many test images), in the
    standard layout: what our loader reads, at a cost that does not depend on the pixels."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"labels": rng.integers(0, 10, images // 5).tolist(),
                 "data": rng.integers(0, 256, (images // 5, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return Path(root)
