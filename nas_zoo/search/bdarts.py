"""B-DARTS (BNAS-v2-CLR): DARTS on the broad scalable supernet, with the confident learning rate (Ding et al.,
"Faster Gradient-based NAS Pipelines Using Broad Scalable Architecture"; the authors'
``BNASv2CLR/train_search_b_confidence.py`` and ``architect_confidence.py`` at d649dfd).

The supernet is ``broad.BroadSearchNetwork`` (2 convolution blocks, 1 enhancement block, C=16): the
derived ``normal`` cell builds the BCNN's convolution cells and ``reduce`` its enhancement cells.
The confident learning rate (CLR) trusts alpha's gradient more as the weights mature:
c = ((epoch + 1) / epochs) ** power (power 2). As the authors do, first order scales the architecture
learning rate by c at every step, second order scales the unrolled validation loss by c (which scales the
whole hypergradient of DARTS eq. 7 by c) and leaves the learning rate alone. With Adam the two are not
alike: Adam divides each step by the running root mean square of the gradients, so a gradient scaled by a
constant c takes the same steps (up to Adam's epsilon), and a c that grows from epoch to epoch only
shrinks the steps while the running averages still hold the smaller earlier gradients (by about
c_now / c_averaged, fading within ~1 / (1 - 0.999) steps). Scaling the learning rate scales every step by c
exactly. ``--no-clr`` searches with c = 1.

Defaults are the authors' script: 50 epochs, batch 256, lr 0.1 cosine to 0, alpha by Adam 3e-4, the
DARTS derivation. Their script draws alpha's batch from a fresh iterator at every step (a random batch,
with replacement); we walk the architecture half without replacement, as DARTS's loop does.
"""
from typing import Any, Dict, List

import torch

from .algorithm import Option, SearchConfig
from .broad import BroadSearchNetwork
from .darts import Darts, unrolled_gradient


class BDarts(Darts):
    name = "b-darts"
    defaults = dict(epochs=50, batch_size=256, layers=2, lr=0.1, lr_min=0.0, arch_lr=3e-4)
    options = Darts.options + (
        Option("enhancement_layers", 1, "enhancement blocks of the broad supernet"),
        Option("clr", True, "the confident learning rate c = ((epoch + 1) / epochs) ** power"),
        Option("power", 2, "the CLR's power"),
    )
    evaluation = dict(network="bcnn", C=48, layers=6, enhancement_layers=2)  # BNASv2CLR/train_b.py

    def __init__(self, **settings):
        super().__init__(**settings)
        self.c = 1.0  # the confidence of the current epoch (start_epoch)

    @property
    def label(self) -> str:
        return f"b_darts_{'1st' if self.order == 1 else '2nd'}"

    def network(self, config: SearchConfig, num_classes: int, stage: int = 0, candidates=None):
        return BroadSearchNetwork(config.init_channels, num_classes, config.layers, self.enhancement_layers,
                                  config.nodes, candidates=candidates)

    def confidence(self, config: SearchConfig, epoch: int) -> float:
        return ((epoch + 1) / config.epochs) ** self.power if self.clr else 1.0

    def start_epoch(self, model, config: SearchConfig, stage: int, epoch: int) -> Dict[str, Any]:
        self.c = self.confidence(config, epoch)
        return {"confidence": self.c}

    def step(self, search, train, valid):
        if self.order == 1:  # architect_confidence.adjust_learning_rate, at every step
            for group in search.a_optimizer.param_groups:
                group["lr"] = search.config.arch_lr * self.c
        return super().step(search, train, valid)

    def arch_gradient(self, search, train, valid) -> List[torch.Tensor]:
        if self.order == 1:
            return super().arch_gradient(search, train, valid)
        return [self.c * g for g in unrolled_gradient(search, train, valid, search.lr())]
