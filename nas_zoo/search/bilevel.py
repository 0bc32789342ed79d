"""The two optimisation steps of a search on one supernet (DARTS Sec. 2.3, Alg. 1), without data or epochs.

The weights ``w`` follow SGD with momentum, weight decay and gradient clipping on the training loss; the
architecture parameters ``alpha`` follow Adam on a gradient the algorithm computes. Each step holds the
other side constant, so autograd computes (and stores activations for) only the gradients it needs.
"""
import contextlib
from typing import TYPE_CHECKING, Iterable, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..harness import distributed
from ..models.ops import channels_last_safe

if TYPE_CHECKING:
    from .algorithm import SearchAlgorithm, SearchConfig

Batch = Tuple[torch.Tensor, torch.Tensor]


@contextlib.contextmanager
def frozen(params: Iterable[nn.Parameter]):
    """Treat ``params`` as constants inside the block: autograd neither computes their gradients nor keeps
    the activations that only those gradients need (the architecture step skips every weight gradient)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    return (logits.argmax(-1) == target).float().mean().item() * 100


class BiLevel:
    """A supernet, its two optimizers and the two steps; the algorithm decides how they combine."""

    def __init__(self, algorithm: "SearchAlgorithm", model: nn.Module, config: "SearchConfig"):
        self.algorithm, self.model, self.config = algorithm, model, config
        self.device = next(model.parameters()).device
        self.memory_format = (torch.channels_last if config.channels_last and channels_last_safe(model)
                              else torch.contiguous_format)
        model.to(memory_format=self.memory_format)
        self.weights = list(model.weights())
        self.alphas = model.arch_parameters()
        self.w_optimizer = torch.optim.SGD(self.weights, config.lr, momentum=config.momentum,
                                           weight_decay=config.weight_decay, nesterov=config.nesterov)
        self.a_optimizer = torch.optim.Adam(self.alphas, config.arch_lr, betas=tuple(config.arch_betas),
                                            weight_decay=config.arch_weight_decay)

    def batch(self, batch) -> Batch:
        """A batch on the supernet's device, the images in its memory format."""
        images, labels = batch
        return (images.to(self.device, memory_format=self.memory_format, non_blocking=True),
                labels.to(self.device, non_blocking=True))

    def loss(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.model(batch[0]), batch[1])

    @staticmethod
    def grad(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """d loss / d params, averaged over the ranks under torchrun: the gradient of the global batch, which every
        architecture gradient (first order, the unrolled step's three) is made of."""
        return distributed.average(torch.autograd.grad(loss, params))

    def lr(self) -> float:
        return self.w_optimizer.param_groups[0]["lr"]

    def weights_step(self, batch: Batch) -> Tuple[float, float]:
        """One SGD step on the training loss (alpha held constant), the gradient's norm clipped to
        ``grad_clip`` (0: not clipped); returns (loss, accuracy) on this rank's share of the batch. Gradients
        are reset to None, so weights the forward pass did not use (a sampled child's other operations) take
        no step at all: no weight decay, no momentum."""
        self.w_optimizer.zero_grad(set_to_none=True)
        with frozen(self.alphas):
            logits = self.model(batch[0])
            loss = F.cross_entropy(logits, batch[1])
            loss.backward()
        distributed.average_gradients(self.weights)
        if self.config.grad_clip:
            nn.utils.clip_grad_norm_(self.weights, self.config.grad_clip)
        self.w_optimizer.step()
        return loss.item(), accuracy(logits.detach(), batch[1])

    def arch_step(self, gradient: Sequence[torch.Tensor]) -> None:
        """One Adam step of alpha along ``gradient`` (one tensor per architecture parameter), its norm clipped
        to ``arch_grad_clip`` where the paper does (PC-DARTS's ImageNet search)."""
        for p, g in zip(self.alphas, gradient, strict=True):
            p.grad = g
        if self.config.arch_grad_clip:
            nn.utils.clip_grad_norm_(self.alphas, self.config.arch_grad_clip)
        self.a_optimizer.step()

    def step(self, train: Batch, valid) -> Tuple[float, float]:
        """One search step as the algorithm takes it; returns the training (loss, accuracy)."""
        return self.algorithm.step(self, train, valid)
