"""P-DARTS: Progressive Differentiable Architecture Search (Chen, Xie, Wu & Tian, ICCV 2019).

The search runs in stages of growing depth (Sec. 3.2): 5, 11 and 17 cells (``--layers 5`` plus
``--add-layers 0,6,12``), each a new supernet with fresh weights, fresh alpha and new optimizers, 25 epochs
each. Only the candidate operations carry over: after each stage every edge keeps its ``num_to_keep``
strongest (5, then 3; search-space approximation, Sec. 3.2), so alpha is edges x surviving operations.
Search-space regularisation (Sec. 3.3): dropout after every stride-1 skip-connection, at the stage's rate
(0.1, 0.4, 0.7 in the authors' README) decaying within the stage, and at the end at most ``max_skip`` (2)
skip-connections in the normal cell.

Everything follows the authors' ``train_search.py`` and ``model_search.py`` (chenxin061/pdarts at
b880e87), first order as they run it: batch 96, lr 0.025 cosine to 0 within each stage, alpha by Adam 6e-4
with its gradient clipped at 5 (``grad_clip``), alpha step then weights step, alpha frozen for the first
10 epochs of each stage (``--arch-warmup``), during which the dropout rate falls linearly,
``rate * (epochs - epoch - 1) / epochs``; after it, ``rate * exp(-0.2 (epoch - 10))``.

Dropping and derivation reproduce the authors' functions, ties included (``tests/fixtures/pdarts``): the
weakest operations go first, the earlier one of equal weights first (``get_min_k``); after the last stage
each edge keeps one operation, ``none`` dropped first (``get_min_k_no_zero``); an edge's strength is its
strongest operation other than ``none`` and each node keeps its two strongest edges, the later one of equal
strengths (``sorted(...)[-2:]``); edges are listed in edge order. The skip restriction (``train_search.py``
after the last stage) lowers the allowed count from 8 to 0: while the normal cell has too many, it zeroes the
weight of its weakest skip-connection and re-chooses each edge's operation from its 3 candidates and each
node's two edges. The record holds the genotype for every allowed count; ``genotype.json`` the one for
``--max-skip``. The same derivation gives the genotype of every epoch, mid-search included.
"""
import math
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .algorithm import Candidates, Option, SearchAlgorithm, SearchConfig, cell_fields
from .supernet import SearchNetwork, node_slices, search_operation

SCALE_FACTOR = 0.2  # the dropout decay after the warm-up (``scale_factor`` in train_search.py)


def pdarts_operation(name: str, C: int, stride: int, dropout: float) -> nn.Module:
    """DARTS's search candidate, with dropout after a stride-1 skip-connection when the stage has a rate
    (``MixedOp`` of model_search.py: ``if isinstance(op, Identity) and p > 0``)."""
    op = search_operation(name, C, stride)
    if name == "skip_connect" and stride == 1 and dropout > 0:
        op = nn.Sequential(op, nn.Dropout(dropout))
    return op


def drop_weakest(values: Sequence[float], k: int) -> List[int]:
    """The positions of the ``k`` smallest values, the earlier of equal values first (``get_min_k``)."""
    values, dropped = list(values), []
    for _ in range(k):
        i = min(range(len(values)), key=values.__getitem__)
        dropped.append(i)
        values[i] = math.inf
    return dropped


def strongest_op(probs: Sequence[float], names: Sequence[str]) -> str:
    """The one operation an edge keeps: ``none`` dropped first, then the weakest others
    (``get_min_k_no_zero``): the strongest other than ``none``, the later one of equal weights."""
    others = [i for i, name in enumerate(names) if name != "none"]
    dropped = set(drop_weakest([probs[i] for i in others], len(others) - 1))
    return next(names[i] for j, i in enumerate(others) if j not in dropped)


def strength(probs: Sequence[float], names: Sequence[str]) -> float:
    """An edge's strength: its strongest operation other than ``none``."""
    return max(p for p, name in zip(probs, names) if name != "none")


def derive_cell(probs: Sequence[Sequence[float]], candidates: Sequence[Sequence[str]],
                nodes: int) -> List[Optional[str]]:
    """Each edge's operation, or None where the node did not keep the edge (two edges per node)."""
    ops: List[Optional[str]] = [None] * len(candidates)
    for rows in node_slices(nodes):
        edges = list(range(rows.start, rows.stop))
        for e in sorted(edges, key=lambda e: strength(probs[e], candidates[e]))[-2:]:
            ops[e] = strongest_op(probs[e], candidates[e])
    return ops


def edge_list(ops: Sequence[Optional[str]], nodes: int) -> List[Tuple[str, int]]:
    """(operation, input) pairs in edge order (``parse_network``)."""
    return [(ops[e], e - rows.start) for rows in node_slices(nodes) for e in range(rows.start, rows.stop)
            if ops[e] is not None]


def restrict_skips(probs: List[List[float]], candidates: Sequence[Sequence[str]], nodes: int,
                   ops: List[Optional[str]]) -> List[Dict[str, Any]]:
    """The authors' skip-connection restriction of the normal cell, for every allowed count from 2 x nodes
    down to 0; each count continues from the last (``delete_min_sk_prob``, ``keep_1_on``,
    ``keep_2_branches``). ``probs`` (edges x candidates, ``none`` at 0) is changed in place."""
    skip = "skip_connect"
    results = []
    for max_skip in range(2 * nodes, -1, -1):
        restricted = False
        while sum(op == skip for op in ops) > max_skip:
            weights = [probs[e][candidates[e].index(skip)] if op == skip else 1.0 for e, op in enumerate(ops)]
            weakest = min(range(len(ops)), key=weights.__getitem__)
            if weights[weakest] == 0.0:  # all weight already gone: their loop would never end
                break
            probs[weakest][candidates[weakest].index(skip)] = 0.0
            ops = derive_cell(probs, candidates, nodes)
            restricted = True
        results.append({"max_skip": max_skip, "restricted": restricted,
                        "normal": [list(e) for e in edge_list(ops, nodes)]})
    return results


class Pdarts(SearchAlgorithm):
    name = "pdarts"
    defaults = dict(epochs=25, batch_size=96, layers=5, lr=0.025, lr_min=0.0, arch_lr=6e-4, arch_warmup=10)
    options = (
        Option("add_layers", (0, 6, 12), "cells added to --layers in each stage (5, 11, 17 cells)"),
        Option("add_width", (0, 0, 0), "channels added to --init-channels in each stage"),
        Option("dropout_rate", (0.1, 0.4, 0.7), "dropout after stride-1 skip-connections in each stage"),
        Option("num_to_keep", (5, 3, 1), "operations each edge keeps after each stage (the last must be 1)"),
        Option("max_skip", 2, "skip-connections allowed in the normal cell of genotype.json"),
    )

    def __init__(self, **settings):
        super().__init__(**settings)
        per_stage = (self.add_layers, self.add_width, self.dropout_rate, self.num_to_keep)
        if len({len(values) for values in per_stage}) != 1:
            raise ValueError("P-DARTS --add-layers, --add-width, --dropout-rate and --num-to-keep need one value "
                             f"per stage each; got {' and '.join(','.join(map(str, v)) for v in per_stage)}")
        keep = list(self.num_to_keep)
        if keep[-1] != 1 or keep != sorted(set(keep), reverse=True) or keep[0] >= 8:
            raise ValueError(f"P-DARTS --num-to-keep {','.join(map(str, keep))}: use decreasing counts below 8 "
                             "that end in 1, like 5,3,1")
        if min(self.add_layers) < 0 or min(self.add_width) < 0:
            raise ValueError("P-DARTS --add-layers and --add-width add cells and channels: use values >= 0")
        if not all(0 <= r < 1 for r in self.dropout_rate):
            raise ValueError(f"P-DARTS --dropout-rate values are probabilities in [0, 1); got {self.dropout_rate}")
        if self.max_skip < 0:
            raise ValueError(f"P-DARTS --max-skip must be >= 0, got {self.max_skip}")

    @property
    def stages(self) -> int:
        return len(self.num_to_keep)

    def network(self, config: SearchConfig, num_classes: int, stage: int = 0,
                candidates: Optional[Candidates] = None) -> SearchNetwork:
        C = config.init_channels + self.add_width[stage]
        if C % 4:
            raise ValueError(f"P-DARTS stage {stage + 1}: --init-channels plus --add-width is {C}; "
                             "use a multiple of 4")
        return SearchNetwork(C, num_classes, config.layers + self.add_layers[stage], config.nodes,
                             candidates=candidates, operation=partial(pdarts_operation,
                                                                      dropout=self.dropout_rate[stage]))

    def describe_stage(self, config: SearchConfig, stage: int) -> Dict[str, Any]:
        return {"init_channels": config.init_channels + self.add_width[stage],
                "dropout_rate": self.dropout_rate[stage]}

    def start_epoch(self, model: SearchNetwork, config: SearchConfig, stage: int, epoch: int) -> Dict[str, Any]:
        rate, warmup, epochs = self.dropout_rate[stage], config.arch_warmup, config.epochs
        p = rate * (epochs - epoch - 1) / epochs if epoch < warmup else rate * math.exp(-(epoch - warmup) * SCALE_FACTOR)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
        return {"skip_dropout": p}

    def arch_gradient(self, search, train, valid) -> List[torch.Tensor]:
        """First order, the gradient clipped to norm ``grad_clip`` as a whole (``clip_grad_norm_``)."""
        grads = super().arch_gradient(search, train, valid)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = (search.config.grad_clip / (norm + 1e-6)).clamp(max=1.0)
        return [g * scale for g in grads]

    def next_candidates(self, model: SearchNetwork, stage: int) -> Candidates:
        """Each edge's ``num_to_keep[stage]`` strongest candidates, the rest dropped (``get_min_k``)."""
        kept = {}
        for t in model.cell_types:
            probs = model.arch.alphas[t].detach().softmax(-1).cpu().tolist()
            kept[t] = []
            for names, row in zip(model.candidates[t], probs):
                dropped = set(drop_weakest(row, len(names) - self.num_to_keep[stage]))
                kept[t].append([name for i, name in enumerate(names) if i not in dropped])
        return kept

    def derive(self, model: SearchNetwork):
        cells, notes = {}, {}
        for t in model.cell_types:
            probs = model.arch.alphas[t].detach().softmax(-1).cpu().tolist()
            for names, row in zip(model.candidates[t], probs):
                if "none" in names:
                    row[names.index("none")] = 0.0
            ops = derive_cell(probs, model.candidates[t], model.nodes)
            cells[t] = edge_list(ops, model.nodes)
            if t == "normal":
                notes["skip_restriction"] = restrict_skips(probs, model.candidates[t], model.nodes, ops)
        chosen = notes["skip_restriction"][max(2 * model.nodes - self.max_skip, 0)]
        notes["unrestricted_normal"] = [list(e) for e in cells["normal"]]
        cells["normal"] = [tuple(e) for e in chosen["normal"]]
        return cell_fields(cells, model.nodes), notes
