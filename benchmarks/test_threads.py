"""The --threads default under a competing load: throughput at the default against PyTorch's own thread
count (one per core), measured in the same run.

A busy process spins on half the cores (one on a 2-core machine), as another user's job would; the
workload is ``nas-zoo evaluate``'s throughput figure (darts_v2 at the paper's size, batch 64, eval mode).
Run: ``python -m pytest benchmarks/test_threads.py``; ``extra_info`` holds both thread counts, both
throughputs (best of 3) and ``speedup`` (time at PyTorch's count / time at the default). It fails when the
default does not see the busy cores, or is slower than PyTorch's count (README, "Threads": 2.56x measured).
"""
import subprocess
import sys
import time

import pytest
import torch

import nas_zoo
from measure import best_time
from nas_zoo.threads import AUTO, TORCH_DEFAULT, set_threads


@pytest.fixture
def competing_load():
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(1, TORCH_DEFAULT // 2))]
    time.sleep(1)  # let them take their cores before the default counts the idle ones
    yield len(spinners)
    for spinner in spinners:
        spinner.kill()
        spinner.wait()


def test_default_threads_under_a_competing_load(benchmark, competing_load):
    if TORCH_DEFAULT == 1:
        pytest.skip("one core: the default and PyTorch's count are the same thread")
    torch.manual_seed(0)
    model = nas_zoo.create_model("darts_v2").eval()
    x = torch.randn(64, 3, 32, 32)

    def forward():
        with torch.inference_mode():
            model(x)

    default = set_threads(AUTO)
    benchmark.pedantic(forward, rounds=3, iterations=1, warmup_rounds=1)
    default_time = benchmark.stats.stats.min
    torch.set_num_threads(TORCH_DEFAULT)
    torch_time = best_time(forward)
    benchmark.extra_info.update(busy_processes=competing_load, default_threads=default, torch_threads=TORCH_DEFAULT,
                                default_images_per_s=64 / default_time, torch_images_per_s=64 / torch_time,
                                speedup=torch_time / default_time)
    print(f"\nwith {competing_load} busy process(es): default {default} thread(s) {64 / default_time:.1f} img/s, "
          f"PyTorch's {TORCH_DEFAULT} threads {64 / torch_time:.1f} img/s, speedup {torch_time / default_time:.2f}x")
    assert default < TORCH_DEFAULT, f"the default took {default} threads beside {competing_load} busy process(es)"
    assert torch_time / default_time >= 1.0, "the default is slower than PyTorch's count under the load"
