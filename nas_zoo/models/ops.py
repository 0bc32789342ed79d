"""The DARTS operation set (Liu et al., ICLR 2019, Sec. 2.1 and App. A.1).

One constructor per candidate operation, as in the authors' ``cnn/operations.py``. The module layout
inside each operation (an ``op`` Sequential, ``conv_1``/``conv_2``/``bn`` in FactorizedReduce) is kept
from the original so that the authors' checkpoints map onto ours by renaming cells alone.
"""
from typing import Callable, Dict

import torch
from torch import nn


class _Chain(nn.Module):
    """An operation whose layers run one after another, held in an ``op`` Sequential (the authors' layout)."""

    op: nn.Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ReLUConvBN(_Chain):
    """ReLU -> conv (no bias) -> BN: the 1x1 cell preprocessing."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class DilConv(_Chain):
    """ReLU -> dilated depthwise conv -> pointwise conv -> BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class SepConv(_Chain):
    """Two stacked (ReLU -> depthwise -> pointwise -> BN) blocks; only the first one strides."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, 1, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )


class Zero(nn.Module):
    """The `none` operation: zeros of the output's shape (only ever weighted in a search supernet)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::self.stride, ::self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two 1x1 stride-2 convs, the second one offset by one pixel.

    The offset branch is zero-padded on the right and bottom first (as in GDAS's version): for even
    sizes this is exactly DARTS's ``x[:, :, 1:, 1:]``, and odd sizes work too.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = nn.functional.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def channels_last_safe(model: nn.Module) -> bool:
    """False for networks so narrow that a factorized reduction's convolutions have fewer than 4 output
    channels: torch's channels-last CPU convolution backward corrupts memory there (torch 2.14, seen with
    ``--init-channels 4`` and PC-DARTS at 8), so those stay NCHW on the CPU (searches and training alike)."""
    return all(m.conv_1.out_channels >= 4 for m in model.modules() if isinstance(m, FactorizedReduce))


def _pool(pool: nn.Module, C: int, pool_bn: bool) -> nn.Module:
    # GDAS follows each pooling edge with a BatchNorm without affine parameters (running stats only).
    return nn.Sequential(pool, nn.BatchNorm2d(C, affine=False)) if pool_bn else pool


OpFactory = Callable[[int, int, bool, bool], nn.Module]

#: name -> factory(C, stride, affine, pool_bn); the order is the search space's (none first).
OPS: Dict[str, OpFactory] = {
    "none": lambda C, stride, affine, pool_bn: Zero(stride),
    "max_pool_3x3": lambda C, stride, affine, pool_bn: _pool(nn.MaxPool2d(3, stride=stride, padding=1), C, pool_bn),
    "avg_pool_3x3": lambda C, stride, affine, pool_bn: _pool(
        nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False), C, pool_bn),
    "skip_connect": lambda C, stride, affine, pool_bn: (
        nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)),
    "sep_conv_3x3": lambda C, stride, affine, pool_bn: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine, pool_bn: SepConv(C, C, 5, stride, 2, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine, pool_bn: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine, pool_bn: DilConv(C, C, 5, stride, 4, 2, affine=affine),
}

#: The eight candidates of the DARTS CNN search space, in the authors' PRIMITIVES order.
PRIMITIVES = tuple(OPS)


def make_op(name: str, C: int, stride: int, affine: bool = True, pool_bn: bool = False) -> nn.Module:
    """Build operation ``name`` on ``C`` channels; ``stride=2`` on the input edges of a reduction cell."""
    return OPS[name](C, stride, affine, pool_bn)
