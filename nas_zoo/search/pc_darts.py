"""PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search (Xu et al., ICLR 2020).

Partial channels (Sec. 3.2, eq. 2): each edge sends 1/K of its channels (K = 4 on CIFAR) through the
operations and the rest around them, then shuffles the channels. Edge normalisation (Sec. 3.3, eq. 3-4):
each node weights its incoming edges by a softmax over ``beta``, and the genotype ranks edges by the
operation weights times these edge weights. Defaults are the authors' ``train_search.py``: batch 256,
lr 0.1 -> 0, alpha's Adam lr 6e-4, and alpha and beta frozen for the first 15 of the 50 epochs.

On ImageNet (Sec. 4.1, ``train_search_imagenet.py`` and ``model_search_imagenet.py``): the supernet has 8
cells on the three-convolution ImageNet stem, K=2, batch 1024, lr 0.5 after a 5-epoch linear warm-up (the
script warms up for batches over 256), alpha's Adam lr 6e-3 from epoch 35 on, alpha's gradient norm
clipped to 5; the data are 10% / 2.5% of each class (``data.py``). The genotype is evaluated in the
ImageNet network (C=48, 14 cells, ``train_imagenet.py``).
"""
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .algorithm import Option, SearchAlgorithm, SearchConfig, cell_fields, network_stem, strongest_inputs
from .supernet import Mix, MixedEdge, Operation, SearchNetwork, Softmax, node_slices


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (ShuffleNet; PC-DARTS ``channel_shuffle``)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def node_softmax(beta: torch.Tensor, nodes: int) -> torch.Tensor:
    """PC-DARTS edge normalisation (eq. 3): a softmax over each node's incoming edges."""
    return torch.cat([beta[rows].softmax(-1) for rows in node_slices(nodes)])


class PartialEdge(nn.Module):
    """PC-DARTS eq. 2: the first C/K channels go through the candidates, the others bypass them (max-pooled
    when the edge strides), then the channels are shuffled (``MixedOp`` of ``model_search.py``)."""

    def __init__(self, mixed: MixedEdge, k: int, stride: int):
        super().__init__()
        self.mixed, self.k, self.stride = mixed, k, stride

    def forward(self, x: torch.Tensor, weights: torch.Tensor, index: Optional[int] = None) -> torch.Tensor:
        x, bypass = x.tensor_split([x.shape[1] // self.k], dim=1)
        if self.stride > 1:
            bypass = F.max_pool2d(bypass, 2, 2)
        return channel_shuffle(torch.cat([self.mixed(x, weights, index), bypass], dim=1), self.k)


class PartialChannels(Softmax):
    """Softmax edges on 1/K of the channels, each node weighting its edges by softmax(beta) (eq. 2-4)."""

    def __init__(self, k: int = 4):
        self.k = k

    def parameter_shapes(self, edges: int, candidates: int):
        return {**super().parameter_shapes(edges, candidates), "betas": (edges,)}

    def __call__(self, params: Mapping[str, torch.Tensor], nodes: int) -> Mix:
        return Mix(params["alphas"].softmax(-1), edge_scale=node_softmax(params["betas"], nodes))

    def edge(self, names: Sequence[str], C: int, stride: int, operation: Operation) -> nn.Module:
        if C % self.k:
            raise ValueError(f"partial channels: {C} channels do not split into {self.k} groups")
        return PartialEdge(super().edge(names, C // self.k, stride, operation), self.k, stride)


class PcDarts(SearchAlgorithm):
    name = "pc-darts"
    defaults = dict(epochs=50, batch_size=256, lr=0.1, lr_min=0.0, arch_lr=6e-4, arch_warmup=15)
    options = (Option("k", 4, "partial-channel ratio K: 1/K of each edge's channels go through the operations"),)
    imagenet = dict(layers=8, batch_size=1024, lr=0.5, lr_warmup=5, arch_lr=6e-3, arch_warmup=35, arch_grad_clip=5.0,
                    k=2, evaluation=dict(network="imagenet", C=48, layers=14))

    @property
    def label(self) -> str:
        return "pc_darts"

    def network(self, config: SearchConfig, num_classes: int, stage: int = 0, candidates=None) -> SearchNetwork:
        return SearchNetwork(config.init_channels, num_classes, config.layers, config.nodes,
                             PartialChannels(self.k), candidates, stem=network_stem(config))

    def derive(self, model: SearchNetwork):
        """DARTS's rule on the operation weights times the edge weights (Sec. 3.3)."""
        cells = {}
        for t in model.cell_types:
            weights = model.arch.alphas[t].softmax(-1) * node_softmax(model.arch.betas[t], model.nodes)[:, None]
            cells[t] = strongest_inputs(weights, model.candidates[t], model.nodes)
        return cell_fields(cells, model.nodes), {}
