"""How many CPU threads PyTorch runs on: one per idle core unless told otherwise.

PyTorch starts one thread per core. When another process keeps a core busy, its threads wait for each
other at every parallel region and throughput collapses (on 2 cores with one busy process: 4x slower than
one thread; README, "Threads"). So the default counts the cores that are idle now and uses that many.
"""
import os
import time
from pathlib import Path
from typing import Tuple

import torch

AUTO = 0  # the --threads value that means "one per idle core"
TORCH_DEFAULT = torch.get_num_threads()  # read before anything changes it: one per core, or OMP_NUM_THREADS


def _cpu_times(cpus) -> Tuple[int, int]:
    """Idle and total jiffies of ``cpus`` since boot, from /proc/stat."""
    idle = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            idle += ticks[3] + ticks[4]
            total += sum(ticks)
    return idle, total


def idle_cores(window: float = 0.2) -> float:
    """Cores of this process's CPU set left idle by other processes over ``window`` seconds (we sleep)."""
    cpus = os.sched_getaffinity(0)
    idle0, total0 = _cpu_times(cpus)
    time.sleep(window)
    idle1, total1 = _cpu_times(cpus)
    return len(cpus) * (idle1 - idle0) / max(total1 - total0, 1)


def auto_threads() -> int:
    """One thread per core that is at least 80% idle, at least 1 and at most PyTorch's own default.

    ``OMP_NUM_THREADS``, where set, wins; without /proc/stat (not Linux) PyTorch's default stays.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return TORCH_DEFAULT
    try:
        idle = idle_cores()
    except (OSError, ValueError, AttributeError):  # no /proc/stat or no sched_getaffinity
        return TORCH_DEFAULT
    return max(1, min(TORCH_DEFAULT, int(idle + 0.2)))


def set_threads(threads: int = AUTO) -> int:
    """Run PyTorch on ``threads`` threads (``AUTO``: ``auto_threads()``); returns the number set.

    Inter-op threads are left alone: eager models do not use them, and they cannot be changed once used.
    """
    torch.set_num_threads(threads if threads > 0 else auto_threads())
    return torch.get_num_threads()

