"""The search supernet: mixed edges, the search cell and network, the architecture parameters.

DARTS (Liu et al., ICLR 2019, Sec. 2.1-2.2): every edge of a cell carries candidate operations and mixes
them with weights computed from the architecture parameters ``alpha``; the network is the evaluation
network's macro structure (a 3C stem, ``layers`` cells, reductions at 1/3 and 2/3 of the depth, global
pooling, a linear classifier) built from such cells. On ImageNet the stem is the evaluation network's three
stride-2 convolutions at width 3C (PC-DARTS ``model_search_imagenet.py``).

What differs between algorithms is handed to the network, not switched on by flags:

* a ``Mixing`` decides which architecture parameters a cell type has, the weights they give each edge in
  a forward pass, and the module that applies them on an edge. ``Softmax`` here is DARTS eq. 2; GDAS's
  Gumbel sampling (``gdas.py``) and PC-DARTS's partial channels (``pc_darts.py``) are others;
* ``candidates`` name the operations on every edge of each cell type (all eight by default; P-DARTS
  shrinks them stage by stage), so ``alpha`` is edges x candidates;
* ``operation`` builds one candidate (DARTS's search form by default: no affine BN, BN after pooling);
* subclasses may replace ``make_stem``, ``make_cell`` and ``make_head`` (EDNAS's narrower ImageNet stem,
  GDAS's fixed reduction cell, its BN + ReLU).

The architecture parameters live in their own module (``SearchNetwork.arch``) and are optimised apart
from the weights (``SearchNetwork.weights()`` / ``arch_parameters()``).
"""
from typing import Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from ..models.cells import preprocess
from ..models.networks import STEM_MULTIPLIER, CifarStem, ImageNetStem
from ..models.ops import PRIMITIVES, ReLUConvBN, make_op

#: (operation name, C, stride) -> the candidate module
Operation = Callable[[str, int, int], nn.Module]


def num_edges(nodes: int) -> int:
    """Edges of a cell with ``nodes`` intermediate nodes: node i has inputs 0 .. i+1 (14 for 4 nodes)."""
    return sum(2 + i for i in range(nodes))


def node_slices(nodes: int) -> List[slice]:
    """The rows of each node's incoming edges in an (edges x ...) tensor, node by node."""
    starts = [num_edges(i) for i in range(nodes + 1)]
    return [slice(a, b) for a, b in zip(starts, starts[1:])]


def search_operation(name: str, C: int, stride: int) -> nn.Module:
    """A candidate as the DARTS authors' supernet builds it: BN without affine parameters, pooling followed
    by a parameter-free BN (``model_search.MixedOp``)."""
    return make_op(name, C, stride, affine=False, pool_bn=True)


def search_stem(kind: str, in_chans: int, C: int) -> nn.Module:
    """The supernet's stem, returning the first cell's two inputs: DARTS's 3x3 conv to 3C on CIFAR; on
    ImageNet (``kind="imagenet"``) three stride-2 convs to 3C, s0 at twice s1's resolution (PC-DARTS
    ``model_search_imagenet.py``, BNAS-v2 ``model_search_imagenet_b.py``)."""
    return ImageNetStem(in_chans, STEM_MULTIPLIER * C) if kind == "imagenet" else CifarStem(in_chans, C)


class Mix(NamedTuple):
    """One forward pass's edge weights of a cell type: ``weights`` (edges x candidates), the one sampled
    candidate per edge when only that one is computed (else None; an edge whose entry is None does not run
    and costs nothing, as EDNAS's unsampled inputs), and per-edge scales (else None)."""

    weights: torch.Tensor
    index: Optional[List[Optional[int]]] = None
    edge_scale: Optional[torch.Tensor] = None


class MixedEdge(nn.Module):
    """The candidate operations of one edge (DARTS ``MixedOp``): their weighted sum, or, given the sampled
    ``index``, that operation alone (times its weight when the weight carries a gradient)."""

    def __init__(self, ops: Sequence[nn.Module]):
        super().__init__()
        self.ops = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, index: Optional[int] = None) -> torch.Tensor:
        if index is None:
            return sum(w * op(x) for w, op in zip(weights, self.ops))
        if weights.requires_grad:
            return self.ops[index](x) * weights[index]
        return self.ops[index](x)  # alpha frozen (the weights step): the weight is exactly 1


class Softmax:
    """DARTS eq. 2: each edge outputs the softmax(alpha)-weighted sum of its candidates.

    ``generator``: where a mixing that samples (GDAS's) draws from; the search sets one, the same on every rank.
    """

    generator: Optional[torch.Generator] = None

    def parameter_shapes(self, edges: int, candidates: int) -> Dict[str, Tuple[int, ...]]:
        """The architecture parameters of one cell type, by kind (``alphas``, PC-DARTS's ``betas``)."""
        return {"alphas": (edges, candidates)}

    def __call__(self, params: Mapping[str, torch.Tensor], nodes: int) -> Mix:
        return Mix(params["alphas"].softmax(-1))

    def edge(self, names: Sequence[str], C: int, stride: int, operation: Operation) -> nn.Module:
        return MixedEdge([operation(name, C, stride) for name in names])


class SearchCell(nn.Module):
    """The DARTS search cell: two inputs, ``nodes`` nodes, an edge from every earlier state to every node.

    Node i sums the edges from the two inputs and nodes 0..i-1 (each scaled by ``Mix.edge_scale`` when
    given; an edge whose ``Mix.index`` entry is None is left out); the cell outputs the channel concatenation of its nodes. Edges are numbered node by node
    (0-1: node 0, 2-4: node 1, ...), the row order of ``alpha`` in the authors' code.
    """

    def __init__(self, C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool,
                 candidates: Sequence[Sequence[str]], mixing, operation: Operation, nodes: int = 4,
                 cell_type: Optional[str] = None):
        super().__init__()
        self.reduction = reduction
        # the alpha it mixes with: DARTS's reduction cells use "reduce"; BNAS's stride-2 cells use "normal"
        self.cell_type = cell_type or ("reduce" if reduction else "normal")
        self.nodes = nodes
        self.multiplier = nodes
        self.preprocess0 = preprocess(C_prev_prev, C, reduction_prev, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        strides = [2 if reduction and j < 2 else 1 for i in range(nodes) for j in range(2 + i)]
        self.edges = nn.ModuleList(mixing.edge(names, C, stride, operation)
                                   for names, stride in zip(candidates, strides, strict=True))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, mix: Mix) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for _ in range(self.nodes):
            node = 0
            for h in states:
                index = None if mix.index is None else mix.index[e]
                if mix.index is None or index is not None:  # an edge with no sampled operation does not run
                    out = self.edges[e](h, mix.weights[e], index)
                    node = node + (out if mix.edge_scale is None else mix.edge_scale[e] * out)
                e += 1
            states.append(node)
        return torch.cat(states[2:], dim=1)


class Architecture(nn.Module):
    """Architecture parameters by kind and cell type (``alphas.normal``, ``betas.reduce`` ...), initialised
    as in DARTS: 1e-3 * N(0, 1)."""

    def __init__(self, shapes: Mapping[str, Mapping[str, Tuple[int, ...]]]):
        super().__init__()
        kinds = dict.fromkeys(kind for per_type in shapes.values() for kind in per_type)
        for kind in kinds:
            self.add_module(kind, nn.ParameterDict({t: nn.Parameter(1e-3 * torch.randn(per_type[kind]))
                                                    for t, per_type in shapes.items() if kind in per_type}))

    def of(self, cell_type: str) -> Dict[str, nn.Parameter]:
        """The parameters of one cell type, by kind."""
        return {kind: params[cell_type] for kind, params in self.named_children() if cell_type in params}


class Supernet(nn.Module):
    """What every search network has: its ``mixing``, the ``candidates`` of each cell type, the searched
    ``cell_types`` and their architecture parameters (``arch``), apart from the weights."""

    def __init__(self, nodes: int, mixing, candidates: Optional[Mapping[str, Sequence[Sequence[str]]]]):
        super().__init__()
        self.mixing = mixing or Softmax()
        self.nodes = nodes
        self.candidates = {t: [list(names) for names in (candidates or {}).get(t, every)]
                           for t, every in self.every_candidate().items()}

    def every_candidate(self) -> Dict[str, List[List[str]]]:
        """Per cell type, every operation of the search space on every edge (the DARTS CNN space here)."""
        every = [list(PRIMITIVES)] * num_edges(self.nodes)
        return {"normal": every, "reduce": every}

    def init_architecture(self) -> None:
        """Create ``arch`` for the searched cells built so far (call once the cells exist): the modules with a
        ``cell_type`` (``SearchCell``, the recurrent search cell)."""
        searched = {m.cell_type for m in self.modules() if m is not self and hasattr(m, "cell_type")}
        self.cell_types = [t for t in self.candidates if t in searched]
        self.arch = Architecture({t: self.mixing.parameter_shapes(len(self.candidates[t]), len(self.candidates[t][0]))
                                  for t in self.cell_types})

    def mixes(self) -> Dict[str, Mix]:
        """One Mix per searched cell type and forward pass, shared by the cells of that type."""
        return {t: self.mixing(self.arch.of(t), self.nodes) for t in self.cell_types}

    def weights(self) -> Iterator[nn.Parameter]:
        """The network weights (everything but the architecture parameters)."""
        return (p for name, p in self.named_parameters() if not name.startswith("arch."))

    def arch_parameters(self) -> List[nn.Parameter]:
        return list(self.arch.parameters())


class SearchNetwork(Supernet):
    """The DARTS search network (``model_search.Network``): stem, cells, global pooling, classifier.

    ``mixing`` (``Softmax`` by default) turns the architecture parameters into edge weights;
    ``candidates`` maps each searched cell type to one list of operation names per edge (every
    operation of the DARTS space by default); ``operation`` builds each candidate.
    """

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8, nodes: int = 4, mixing=None,
                 candidates: Optional[Mapping[str, Sequence[Sequence[str]]]] = None,
                 operation: Operation = search_operation, in_chans: int = 3, stem: str = "cifar"):
        if layers < 3:
            raise ValueError(f"--layers {layers}: the supernet needs at least 3 cells (two of them reduce)")
        super().__init__(nodes, mixing, candidates)
        self.stem = self.make_stem(stem, in_chans, C)
        C_prev_prev, C_prev, C_curr = self.stem.out_chs, self.stem.out_chs, C
        self.cells = nn.ModuleList()
        reduction_prev = stem == "imagenet"  # the first cell's s0 has twice its s1's resolution
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr *= 2 if reduction else 1
            cell = self.make_cell(C_prev_prev, C_prev, C_curr, reduction, reduction_prev, operation)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
        self.last_act = self.make_head(C_prev)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.init_architecture()

    def make_stem(self, kind: str, in_chans: int, C: int) -> nn.Module:
        """The stem, returning the first cell's two inputs and naming its width ``out_chs``."""
        return search_stem(kind, in_chans, C)

    def make_cell(self, C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool,
                  operation: Operation) -> nn.Module:
        return SearchCell(C_prev_prev, C_prev, C, reduction, reduction_prev,
                          self.candidates["reduce" if reduction else "normal"], self.mixing, operation, self.nodes)

    def make_head(self, C: int) -> nn.Module:
        """What runs between the last cell and the global pooling (nothing in DARTS)."""
        return nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixes = self.mixes()
        s0, s1 = self.stem(x)
        for cell in self.cells:
            if isinstance(cell, SearchCell):
                s0, s1 = s1, cell(s0, s1, mixes[cell.cell_type])
            else:  # a cell that is not searched (GDAS's fixed reduction cell), without drop path
                s0, s1 = s1, cell(s0, s1, 0.0)
        return self.classifier(self.global_pool(self.last_act(s1)).flatten(1))
