"""Cells of the evaluation networks: the genotype cell (DARTS) and GDAS's fixed reduction cell."""
from typing import List, Sequence, Tuple

import torch
from timm.layers import drop_path
from torch import nn

from .ops import FactorizedReduce, ReLUConvBN, make_op


def preprocess(C_in: int, C_out: int, reduction_prev: bool, affine: bool = True) -> nn.Module:
    """Bring the k-2 input to this cell's width (and resolution, when the previous cell reduced)."""
    return (FactorizedReduce(C_in, C_out, affine=affine) if reduction_prev
            else ReLUConvBN(C_in, C_out, 1, 1, 0, affine=affine))


class Cell(nn.Module):
    """A cell built from a genotype's edge list (DARTS ``cnn/model.py``).

    ``edges`` holds two (operation, input) pairs per intermediate node; input 0 and 1 are the preprocessed
    outputs of the cells k-2 and k-1, input j >= 2 is node j-2. A node is the sum of its two edges and the
    cell's output is the channel concatenation of the states in ``concat``. In a reduction cell the edges
    leaving the two inputs have stride 2.
    """

    def __init__(self, edges: Sequence[Tuple[str, int]], concat: Sequence[int], C_prev_prev: int, C_prev: int,
                 C: int, reduction: bool, reduction_prev: bool, pool_bn: bool = False):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = preprocess(C_prev_prev, C, reduction_prev)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        self.ops = nn.ModuleList(
            make_op(name, C, 2 if reduction and index < 2 else 1, pool_bn=pool_bn) for name, index in edges)
        self.inputs: List[int] = [index for _, index in edges]
        # Drop path spares identity edges (DARTS: `if not isinstance(op, Identity)`).
        self.droppable: List[bool] = [not isinstance(op, nn.Identity) for op in self.ops]
        self.concat: List[int] = list(concat)
        self.multiplier = len(concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        first = states[0]  # the first edge of the node being built; every even edge overwrites it
        for i, op in enumerate(self.ops):
            h = op(states[self.inputs[i]])
            if self.training and drop_prob > 0.0 and self.droppable[i]:
                h = drop_path(h, drop_prob, self.training)
            if i % 2 == 0:
                first = h
            else:
                states.append(first + h)
        return torch.cat([states[i] for i in self.concat], dim=1)


def _grouped_reduce_branch(C: int, affine: bool) -> nn.Sequential:
    # 1x3 then 3x1 grouped convs (stride 2 overall), then a 1x1 conv: GDAS paper Fig. 3.
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 3), stride=(1, 2), padding=(0, 1), groups=8, bias=False),
        nn.Conv2d(C, C, (3, 1), stride=(2, 1), padding=(1, 0), groups=8, bias=False),
        nn.BatchNorm2d(C, affine=affine),
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, 1, bias=False),
        nn.BatchNorm2d(C, affine=affine),
    )


def _pool_reduce_branch(C: int, affine: bool) -> nn.Sequential:
    return nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.BatchNorm2d(C, affine=affine))


class FixedReductionCell(nn.Module):
    """GDAS's hand-designed reduction cell ("FIX-R", Dong & Yang, CVPR 2019, Sec. 3.3 and Fig. 3).

    Used at both reduction positions when a genotype has no reduce cell. Four branches, concatenated:
    a grouped-conv branch and a max-pool branch on each of the two preprocessed inputs. This is the
    ``Transition`` of NAS-Projects at 5eed810 (== xautodl's ``GDAS_Reduction_Cell``).
    """

    multiplier = 4

    def __init__(self, C_prev_prev: int, C_prev: int, C: int, reduction_prev: bool, affine: bool = True):
        super().__init__()
        self.reduction = True
        self.preprocess0 = preprocess(C_prev_prev, C, reduction_prev, affine)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine)
        self.conv_branches = nn.ModuleList([_grouped_reduce_branch(C, affine), _grouped_reduce_branch(C, affine)])
        self.pool_branches = nn.ModuleList([_pool_reduce_branch(C, affine), _pool_reduce_branch(C, affine)])

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        inputs = [self.preprocess0(s0), self.preprocess1(s1)]
        branches = [branch(x) for branch, x in zip(self.conv_branches, inputs)]
        branches += [branch(x) for branch, x in zip(self.pool_branches, inputs)]
        if self.training and drop_prob > 0.0:
            branches = [drop_path(h, drop_prob, self.training) for h in branches]
        return torch.cat(branches, dim=1)
