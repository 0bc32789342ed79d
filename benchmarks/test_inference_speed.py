"""CPU inference throughput (fp32, batch 64) of the fast path against plain eager PyTorch, in one run.

The baseline is the network as the authors' code runs it: eager modules, batch norm separate, NCHW.
The fast path (``nas-zoo evaluate --fast``) folds batch norm into the convolutions and runs channels-last.
Run: ``python -m pytest benchmarks/test_inference_speed.py``; each row's ``extra_info`` holds
``speedup`` (baseline time / fast time, measured in the same test) and the outputs' largest difference.
It fails when the outputs differ by 1e-4 or more, or when the fast path is slower than the baseline.
"""

import pytest
import torch

import nas_zoo
from measure import best_time
from nas_zoo.models.fast import fast_inference

MODELS = ["darts_v2", "gdas_v1", "pdarts", "pc_darts_cifar", "b_darts_v1"]


def _randomise_bn(model):
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", MODELS)
def test_fast_inference_throughput(benchmark, name):
    torch.manual_seed(0)
    baseline = _randomise_bn(nas_zoo.create_model(name)).eval()
    fast = fast_inference(baseline)
    x = torch.randn(64, 3, 32, 32)
    x_last = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        difference = (fast(x_last) - baseline(x)).abs().max().item()
        assert difference < 1e-4
        baseline_time = best_time(lambda: baseline(x))
        benchmark.pedantic(fast, args=(x_last,), rounds=3, iterations=1, warmup_rounds=1)
    fast_time = benchmark.stats.stats.min
    benchmark.extra_info.update(speedup=baseline_time / fast_time, baseline_images_per_s=64 / baseline_time,
                                fast_images_per_s=64 / fast_time, max_abs_difference=difference)
    print(f"\n{name}: baseline {64 / baseline_time:.0f} img/s, fast {64 / fast_time:.0f} img/s, "
          f"speedup {baseline_time / fast_time:.2f}x")
    assert baseline_time / fast_time >= 1.0, f"{name}: the fast path is slower than the eager baseline"
