"""Deriving the discrete genotype from the architecture parameters, as each paper does.

* DARTS (Sec. 2.4): for every node keep the two strongest incoming edges, an edge's strength being its
  largest operation weight other than ``none``; on each kept edge keep that strongest operation
  (``model_search.Network.genotype``).
* PC-DARTS (Sec. 3.3): the same, on operation weights multiplied by the edge-normalisation weights.
* GDAS (the authors' ``NASNetworkGDAS.genotype``): for every node keep the two strongest
  (operation, input) pairs other than ``none``; the two may leave the same input.
"""
from typing import List, Optional

import torch

from ..genotype import Edge
from ..ops import PRIMITIVES
from .supernet import node_softmax


def derive_cell(weights: torch.Tensor, nodes: int = 4, edge_weights: Optional[torch.Tensor] = None,
                distinct_inputs: bool = True) -> List[Edge]:
    """Two (operation, input) edges per node from the (edges x operations) weights of one cell type.

    ``edge_weights`` (one per edge) scale the rows first (PC-DARTS); ``distinct_inputs=False`` ranks the
    (operation, input) pairs themselves (GDAS). Ties go to the earlier edge or operation.
    """
    weights = weights.detach().double().cpu()
    if edge_weights is not None:
        weights = weights * edge_weights.detach().double().cpu()[:, None]
    weights[:, PRIMITIVES.index("none")] = -1.0
    genotype, start = [], 0
    for node in range(nodes):
        rows = weights[start:start + node + 2]
        if distinct_inputs:
            strongest = sorted(range(len(rows)), key=lambda j: -rows[j].max().item())[:2]
            genotype += [(PRIMITIVES[int(rows[j].argmax())], j) for j in strongest]
        else:
            pairs = sorted(((j, k) for j in range(len(rows)) for k in range(len(PRIMITIVES))),
                           key=lambda jk: -rows[jk].item())[:2]
            genotype += [(PRIMITIVES[k], j) for j, k in pairs]
        start += node + 2
    return genotype


def derive(network, distinct_inputs: bool = True) -> dict:
    """The genotype record fields (``normal``, ``reduce``, concats) of a ``SearchNetwork``'s parameters.

    A network with GDAS's fixed reduction cell gets ``"reduce": None``.
    """
    arch, nodes = network.arch, network.nodes
    cells = {}
    for cell_type, alpha in arch.alphas.items():
        beta = arch.betas[cell_type] if cell_type in arch.betas else None
        cells[cell_type] = derive_cell(alpha.softmax(-1), nodes, None if beta is None else node_softmax(beta, nodes),
                                       distinct_inputs)
    concat = list(range(2, nodes + 2))
    return {"normal": [list(e) for e in cells["normal"]], "normal_concat": concat,
            "reduce": [list(e) for e in cells["reduce"]] if "reduce" in cells else None, "reduce_concat": concat}
