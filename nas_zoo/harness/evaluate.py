"""Evaluation: accuracy on a dataset, parameters, FLOPs and speed, beside the paper's figures."""
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..language.lm import evaluate_language_model
from ..models.fast import fast_inference
from ..models.flops import count_flops
from ..registry.genotype import TEXT_DATASETS
from ..registry.summary import count_params
from ..registry.zoo import DATASET_TAGS
from . import distributed
from .data import DataSpec, DatasetError, build_dataset, epoch_loader
from .recipes import TrainConfig
from .train import Target, device_for_run, evaluate_loader, load_trained


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


def load_model(target: Target, checkpoint: Optional[Path] = None,
               pretrained: bool = False) -> Tuple[nn.Module, TrainConfig]:
    """The network to evaluate and the recipe that sized it: from a checkpoint (its run's width and depth), the
    published weights, or as built at the paper's size."""
    if checkpoint is not None and pretrained:
        raise ValueError("checkpoint and pretrained: give one (the checkpoint's weights or the published ones)")
    recipe = target.recipe()
    if checkpoint is not None:
        return load_trained(target, checkpoint, recipe)
    if pretrained:
        if target.model_name is None:
            raise ValueError(f"{target.genotype.name} has no zoo model for {target.dataset}; pass a checkpoint")
        import timm

        tag = DATASET_TAGS["imagenet" if target.dataset == "folder" else target.dataset]
        return timm.create_model(f"{target.model_name}.{tag}", pretrained=True), recipe
    return target.build(recipe), recipe


def evaluate_named(name: str, dataset: str, data_dir: Optional[Path] = None, checkpoint: Optional[Path] = None,
                   pretrained: bool = False, accuracy: Optional[bool] = None, speed: Optional[bool] = None,
                   fast: bool = False, batch_size: Optional[int] = None, num_workers: Optional[int] = None,
                   device: Optional[str] = None) -> Dict[str, Any]:
    """What ``nas-zoo evaluate`` measures of ``name`` (``nas_zoo.resolve``) on ``dataset``, as a dict.

    Images: top-1/top-5 error and loss on the test split (``accuracy``, default on; ``batch_size`` 128,
    ``num_workers`` 2), params, FLOPs, latency and throughput (``speed``, default on; ``fast``: folded batch norm
    and channels-last), beside the paper's figures (``reported``; None when the network measured, ``C`` and
    ``layers``, is not the paper's size, ``paper_network``). Corpora: perplexity and tokens/s, at the run's batch
    sizes on the CPU, so the image options are refused there, as is any option that its other choices leave unused.
    Under torchrun each process measures the accuracy on its share of the test split (added up over them) and
    rank 0 alone counts and times the network; every process returns the same result.
    """
    if dataset in TEXT_DATASETS:
        given = [k for k, v in dict(pretrained=pretrained, fast=fast).items() if v]
        given += [k for k, v in dict(accuracy=accuracy, speed=speed, batch_size=batch_size, num_workers=num_workers,
                                     device=device).items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: not for a language model ({dataset}), which is evaluated at its "
                             "run's batch sizes on the CPU, always with perplexity and tokens/s")
        if data_dir is None:
            raise ValueError(f"{dataset}: no data directory given (data_dir, --data-dir); point it at the corpus files")
        distributed.one_process(f"evaluating a language model ({dataset})")
        return evaluate_language_model(name, dataset, data_dir, checkpoint)
    loading = [k for k, v in dict(batch_size=batch_size, num_workers=num_workers).items() if v is not None]
    if accuracy is False and loading:
        raise ValueError(f"{', '.join(loading)}: for the accuracy pass, which accuracy=False (--no-accuracy) skips")
    if speed is False and fast:
        raise ValueError("fast: for the speed figures, which speed=False (--no-speed) skips")
    target = Target.of(name, dataset)
    run_device = distributed.start(device_for_run(device))
    model, recipe = load_model(target, checkpoint, pretrained)
    input_size = tuple(model.pretrained_cfg["input_size"])
    result = dict(model=target.model_name, genotype=target.genotype.name, network=target.network,
                  C=recipe.init_channels, layers=recipe.layers, dataset=dataset,
                  checkpoint=str(checkpoint) if checkpoint else None, device=device_name(run_device),
                  threads=torch.get_num_threads(), devices=distributed.world_size(),
                  **distributed.on_main(lambda: model_figures(model, input_size)))
    if accuracy is not False:
        if data_dir is None:
            raise DatasetError(f"{dataset}: no data directory given (data_dir, --data-dir); point it at the dataset, "
                               "or measure params, FLOPs and speed only (accuracy=False, --no-accuracy)")
        test_set = build_dataset(DataSpec(dataset, data_dir), model.pretrained_cfg, train=False)
        loader = epoch_loader(test_set, batch_size or 128, 0, 0, False, 2 if num_workers is None else num_workers)
        result.update(evaluate_loader(model.to(run_device), loader, run_device))
    if speed is not False:  # one process at a time on the machine: the others would share its cores
        result.update(distributed.on_main(lambda: measure_speed(model, input_size, run_device, fast)), fast=fast)
    result.update(paper_figures(target.genotype, "imagenet" if dataset == "folder" else dataset, target.network,
                                recipe.init_channels, recipe.layers))
    return result
