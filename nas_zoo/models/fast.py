"""A faster inference copy of a network: batch norm folded into the convolutions, channels-last memory.

Training numerics are untouched: ``fold_batch_norm`` works on a deep copy in eval mode. Each BatchNorm that
directly follows a convolution inside a Sequential (every SepConv, DilConv, ReLUConvBN, stem and the
auxiliary head) becomes the convolution's bias; FactorizedReduce's BN, which follows the concatenation of
two convolutions, is split between them. The result computes the same function up to float rounding.
"""
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .ops import FactorizedReduce


def _fold_sequential(sequential: nn.Sequential) -> None:
    children = list(sequential.named_children())
    for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
            setattr(sequential, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(sequential, bn_name, nn.Identity())


def _slice_bn(bn: nn.BatchNorm2d, start: int, stop: int) -> nn.BatchNorm2d:
    part = nn.BatchNorm2d(stop - start, eps=bn.eps, affine=bn.affine).eval()
    part.running_mean.copy_(bn.running_mean[start:stop])
    part.running_var.copy_(bn.running_var[start:stop])
    if bn.affine:
        part.weight.data.copy_(bn.weight[start:stop])
        part.bias.data.copy_(bn.bias[start:stop])
    return part


def _fold_factorized_reduce(module: FactorizedReduce) -> None:
    half = module.conv_1.out_channels
    module.conv_1 = fuse_conv_bn_eval(module.conv_1, _slice_bn(module.bn, 0, half))
    module.conv_2 = fuse_conv_bn_eval(module.conv_2, _slice_bn(module.bn, half, 2 * half))
    module.bn = nn.Identity()


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every foldable BatchNorm merged into its convolution."""
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            _fold_sequential(module)
        elif isinstance(module, FactorizedReduce):
            _fold_factorized_reduce(module)
    return model


def fast_inference(model: nn.Module) -> nn.Module:
    """``fold_batch_norm`` and channels-last weights (inputs are converted by the caller)."""
    return fold_batch_norm(model).to(memory_format=torch.channels_last)
