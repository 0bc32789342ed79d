"""Evaluation: accuracy on a dataset, parameters, FLOPs and speed, beside the paper's figures."""
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn

from .fast import fast_inference
from .flops import count_flops
from .summary import count_params


@torch.no_grad()
def measure_speed(model: nn.Module, input_size, device: torch.device, fast: bool = False) -> Dict[str, float]:
    """Median latency at batch 1 (ms, of 10 runs) and median throughput at batch 64 (images/s, of 3 runs)."""
    model = (fast_inference(model) if fast else model).eval().to(device)
    memory_format = torch.channels_last if fast else torch.contiguous_format

    def median_time(batch: int, runs: int) -> float:
        x = torch.randn(batch, *input_size, device=device).contiguous(memory_format=memory_format)
        model(x)  # warm-up
        times = []
        for _ in range(runs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return dict(latency_ms_batch1=1000 * median_time(1, 10), throughput_batch64=64 / median_time(64, 3))


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo where there is one) and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
    except OSError:
        models = []
    threads = torch.get_num_threads()
    return f"{models[0] if models else platform.machine()} (CPU, {threads} thread{'' if threads == 1 else 's'})"


def model_figures(model: nn.Module, input_size) -> Dict[str, Any]:
    """Parameters (without the auxiliary head, as the papers count) and FLOPs under each convention."""
    return dict(params=count_params(model), flops=count_flops(model, input_size).conventions())


def paper_figures(genotype, dataset: str, network: str, C: int, layers: int) -> Dict[str, Any]:
    """The paper's reported figures on ``dataset`` and the network size they belong to; the figures are
    None for a network of another size (C, layers), which they do not describe."""
    setting = genotype.evaluation(dataset, network)
    if not setting or "reported" not in setting:
        return dict(reported=None, paper_network=None)
    paper = dict(C=setting.get("C"), layers=setting.get("layers"))
    return dict(reported=dict(setting["reported"]) if paper == dict(C=C, layers=layers) else None, paper_network=paper)
