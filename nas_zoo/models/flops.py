"""Multiply-add counts under the conventions the papers used.

nas-zoo's convention ("conv+linear") is the multiply-adds of convolutions and linear layers at the paper's
input size (one image), in eval mode: what GDAS reports, and what DARTS-family tables call "mult-adds" /
"FLOPs". It comes from ``torch.utils.flop_counter`` (which counts 2 FLOPs per multiply-add).

P-DARTS and PC-DARTS ship no counter; their tables ("x+ (M)") are met, to their rounding, by adding two
operations per batch-norm output element and one per ReLU output element (an empirical fit: 557.1 ->
557, 585.9 -> 586, 597.1 -> 597). We count those elements with forward hooks and show both totals, as the
conv+linear count reproduces GDAS's figures (581M / 497M, GDAS's own flop_benchmark.py counts the same).
Neither reproduces the 574M quoted for DARTS_V2 (530M / 544M here).
"""
from dataclasses import dataclass
from typing import Dict, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

_ELEMENTWISE = {"batch_norm": nn.modules.batchnorm._BatchNorm, "relu": nn.ReLU}


@dataclass(frozen=True)
class FlopCount:
    """Counts for one image. ``macs`` is nas-zoo's headline figure (conv + linear multiply-adds)."""

    macs: int
    batch_norm_elements: int
    relu_elements: int

    def conventions(self) -> Dict[str, int]:
        """The total under each convention a paper used, keyed by a label that names it."""
        return {
            "conv+linear (nas-zoo, GDAS)": self.macs,
            "+2xBN+ReLU elements (P-DARTS, PC-DARTS)": self.macs + 2 * self.batch_norm_elements
            + self.relu_elements,
        }


@torch.no_grad()
def count_flops(model: nn.Module, input_size: Sequence[int]) -> FlopCount:
    """Count one eval-mode forward of ``model`` on a zero image of ``input_size`` (C, H, W)."""
    elements = {key: 0 for key in _ELEMENTWISE}

    def hook(key):
        def count(module, inputs, output):
            elements[key] += output.numel()
        return count

    handles = [module.register_forward_hook(hook(key)) for module in model.modules()
               for key, kinds in _ELEMENTWISE.items() if isinstance(module, kinds)]
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return FlopCount(macs=counter.get_total_flops() // 2, batch_norm_elements=elements["batch_norm"],
                     relu_elements=elements["relu"])
