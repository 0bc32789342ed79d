"""The search supernet: mixed edges, the search cell and network, the architecture parameters.

DARTS (Liu et al., ICLR 2019, Sec. 2.1-2.2): every edge of a cell carries all eight candidate operations
and mixes them with weights computed from the architecture parameters ``alpha``; the network is the
evaluation network's macro structure (a 3C stem, ``layers`` cells, reductions at 1/3 and 2/3 of the depth,
global pooling, a linear classifier) built from such cells. How an edge mixes is the algorithm's:

* ``Softmax`` - the softmax-weighted sum of every operation (DARTS eq. 2);
* ``GumbelHard`` - one operation sampled by Gumbel-max, the only one computed, with the straight-through
  gradient of the Gumbel-softmax (GDAS, Dong & Yang, CVPR 2019, eq. 3-7);
* partial channels with edge normalisation (PC-DARTS, Xu et al., ICLR 2020, Sec. 3.2-3.3): the
  operations see 1/K of the channels, the rest bypass them, then the channels are shuffled; each node
  weights its incoming edges by a softmax over ``beta``.

The architecture parameters live in their own module (``SearchNetwork.arch``) and are optimised apart
from the weights (``SearchNetwork.weights()`` / ``arch_parameters()``).
"""
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..cells import FixedReductionCell, preprocess
from ..networks import STEM_MULTIPLIER
from ..ops import PRIMITIVES, ReLUConvBN, make_op

#: Indices into an edge's operations, one per edge, when a strategy samples (None: every operation).
Index = Optional[List[int]]


def num_edges(nodes: int) -> int:
    """Edges of a cell with ``nodes`` intermediate nodes: node i has inputs 0 .. i+1 (14 for 4 nodes)."""
    return sum(2 + i for i in range(nodes))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (ShuffleNet; PC-DARTS ``channel_shuffle``)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Softmax:
    """DARTS eq. 2: the edge output is the softmax(alpha)-weighted sum of every candidate operation."""

    def __call__(self, alpha: torch.Tensor) -> Tuple[torch.Tensor, Index]:
        return alpha.softmax(-1), None


class GumbelHard:
    """GDAS eq. 3-7: sample one operation per edge, compute only it, differentiate through a soft sample.

    Forward: ``h = one_hot(argmax(log softmax(alpha) + g))`` with Gumbel noise ``g``; backward: the
    gradient of ``softmax((log softmax(alpha) + g) / tau)`` (straight-through, ``h - p.detach() + p``).
    The sample is shared by every cell of one type in a forward pass, as in the authors' code.
    """

    def __init__(self, tau: float = 10.0):
        self.tau = tau

    def __call__(self, alpha: torch.Tensor) -> Tuple[torch.Tensor, Index]:
        while True:  # resample on the (rare) overflow, as the authors do
            gumbels = -torch.empty_like(alpha).exponential_().log()
            probs = ((alpha.log_softmax(-1) + gumbels) / self.tau).softmax(-1)
            if torch.isfinite(gumbels).all() and torch.isfinite(probs).all():
                break
        index = probs.argmax(-1)
        hard = F.one_hot(index, alpha.shape[-1]).to(probs) - probs.detach() + probs
        return hard, index.tolist()


class MixedEdge(nn.Module):
    """All candidate operations of one edge (DARTS ``MixedOp``), optionally on 1/``partial`` of the channels.

    Operations have no affine BN parameters and pooling is followed by a parameter-free BN, as in the
    authors' supernets. With ``partial`` = K > 1 (PC-DARTS eq. 2) the first C/K channels go through the
    operations, the others bypass them (max-pooled when the edge strides) and the result is shuffled.
    """

    def __init__(self, C: int, stride: int, partial: int = 1, pool_bn: bool = True):
        super().__init__()
        if C % partial:
            raise ValueError(f"partial channels: {C} channels do not split into {partial} groups")
        self.partial = partial
        self.stride = stride
        self.ops = nn.ModuleList(make_op(name, C // partial, stride, affine=False, pool_bn=pool_bn)
                                 for name in PRIMITIVES)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, index: Optional[int] = None) -> torch.Tensor:
        if self.partial > 1:
            x, bypass = x.tensor_split([x.shape[1] // self.partial], dim=1)
        if index is None:
            out = sum(w * op(x) for w, op in zip(weights, self.ops))
        elif weights.requires_grad:
            out = self.ops[index](x) * weights[index]
        else:  # alpha frozen (the weights step): the straight-through weight is exactly 1
            out = self.ops[index](x)
        if self.partial == 1:
            return out
        if self.stride > 1:
            bypass = F.max_pool2d(bypass, 2, 2)
        return channel_shuffle(torch.cat([out, bypass], dim=1), self.partial)


class SearchCell(nn.Module):
    """The DARTS search cell: two inputs, ``nodes`` nodes, an edge from every earlier state to every node.

    Node i sums the mixed edges from the two inputs and nodes 0..i-1; the cell outputs the channel
    concatenation of its nodes. Edges are numbered node by node (0-1: node 0, 2-4: node 1, ...), which is
    the row order of ``alpha`` in the authors' code.
    """

    def __init__(self, C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool,
                 nodes: int = 4, partial: int = 1, pool_bn: bool = True):
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        self.multiplier = nodes
        self.preprocess0 = preprocess(C_prev_prev, C, reduction_prev, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(MixedEdge(C, 2 if reduction and j < 2 else 1, partial, pool_bn)
                                   for i in range(nodes) for j in range(2 + i))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, index: Index = None,
                edge_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for _ in range(self.nodes):
            node = 0
            for h in states:
                out = self.edges[e](h, weights[e], None if index is None else index[e])
                node = node + (out if edge_weights is None else edge_weights[e] * out)
                e += 1
            states.append(node)
        return torch.cat(states[2:], dim=1)


class Architecture(nn.Module):
    """Architecture parameters: ``alpha`` (edges x operations) per searched cell type, ``beta`` (edges)
    per cell type for edge normalisation. Initialised as in DARTS: 1e-3 * N(0, 1)."""

    def __init__(self, cell_types: Sequence[str], edges: int, ops: int, edge_norm: bool = False):
        super().__init__()
        self.alphas = nn.ParameterDict({t: nn.Parameter(1e-3 * torch.randn(edges, ops)) for t in cell_types})
        self.betas = nn.ParameterDict({t: nn.Parameter(1e-3 * torch.randn(edges)) for t in cell_types}
                                      if edge_norm else {})


def node_softmax(beta: torch.Tensor, nodes: int) -> torch.Tensor:
    """PC-DARTS edge normalisation (eq. 3): a softmax over each node's incoming edges."""
    return torch.cat([chunk.softmax(-1) for chunk in beta.split([2 + i for i in range(nodes)])])


class SearchNetwork(nn.Module):
    """The DARTS search network (``model_search.Network``): stem, cells, global pooling, classifier.

    ``strategy`` turns ``alpha`` into edge weights (``Softmax`` or ``GumbelHard``); ``partial`` and
    ``edge_norm`` switch on PC-DARTS's partial channels and edge normalisation; ``fixed_reduction`` uses
    GDAS's fixed reduction cell (FRC) at both reductions, so that only the normal cell is searched.
    ``pool_bn=False`` and ``last_bn_relu=True`` give the GDAS authors' supernet (``NASNetworkGDAS``):
    pooling without the parameter-free BN that DARTS puts after it, and BN + ReLU before global pooling.
    """

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8, nodes: int = 4, strategy=None,
                 partial: int = 1, edge_norm: bool = False, fixed_reduction: bool = False, pool_bn: bool = True,
                 last_bn_relu: bool = False, in_chans: int = 3):
        super().__init__()
        self.strategy = strategy or Softmax()
        self.nodes = nodes
        C_curr = STEM_MULTIPLIER * C
        self.stem = nn.Sequential(nn.Conv2d(in_chans, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr *= 2 if reduction else 1
            if reduction and fixed_reduction:
                cell = FixedReductionCell(C_prev_prev, C_prev, C_curr, reduction_prev, affine=False)
            else:
                cell = SearchCell(C_prev_prev, C_prev, C_curr, reduction, reduction_prev, nodes, partial, pool_bn)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
        self.last_act = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU()) if last_bn_relu else nn.Identity()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.cell_types = ["normal"] if fixed_reduction else ["normal", "reduce"]
        self.arch = Architecture(self.cell_types, num_edges(nodes), len(PRIMITIVES), edge_norm)

    def weights(self) -> Iterator[nn.Parameter]:
        """The network weights (everything but the architecture parameters)."""
        return (p for name, p in self.named_parameters() if not name.startswith("arch."))

    def arch_parameters(self) -> List[nn.Parameter]:
        return list(self.arch.parameters())

    def edge_weights(self) -> Dict[str, Tuple[torch.Tensor, Index, Optional[torch.Tensor]]]:
        """Per searched cell type: the operation weights, the sampled operations (or None) and the edge
        weights (or None), computed once per forward pass and shared by the cells of that type."""
        out = {}
        for t in self.cell_types:
            weights, index = self.strategy(self.arch.alphas[t])
            beta = self.arch.betas[t] if t in self.arch.betas else None
            out[t] = (weights, index, None if beta is None else node_softmax(beta, self.nodes))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixing = self.edge_weights()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if isinstance(cell, SearchCell):
                s0, s1 = s1, cell(s0, s1, *mixing["reduce" if cell.reduction else "normal"])
            else:
                s0, s1 = s1, cell(s0, s1, 0.0)
        return self.classifier(self.global_pool(self.last_act(s1)).flatten(1))
