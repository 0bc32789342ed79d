"""DARTS: Differentiable Architecture Search (Liu, Simonyan & Yang, ICLR 2019).

First order (Sec. 2.3, xi = 0): alpha follows the gradient of the validation loss at the current weights.
Second order: the one-step unrolled approximation of the bi-level problem (eq. 6)

    grad_alpha L_val(w', alpha),  w' = w - xi * grad_w L_train(w, alpha)
      = grad_alpha L_val(w', alpha) - xi * grad2_{alpha,w} L_train(w, alpha) grad_w' L_val(w', alpha)   (eq. 7)

with the Hessian-vector product by finite differences, w+- = w +- eps * grad_w' L_val(w', alpha),
eps = 0.01 / ||grad_w' L_val(w', alpha)|| (eq. 8):

    grad2_{alpha,w} L_train(w, alpha) v  ~  (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps).

As in the authors' ``architect.py``, xi is the current weight learning rate and the virtual step is the
optimizer's own (momentum and weight decay included).
"""
from typing import List, Sequence

import torch

from .algorithm import Option, SearchAlgorithm
from .bilevel import Batch, BiLevel, frozen


class Darts(SearchAlgorithm):
    """``order=1`` (DARTS first order, "DARTS (first order)" in Table 1) or ``order=2`` (the unrolled step)."""

    name = "darts"
    defaults = dict(epochs=50, batch_size=64, lr=0.025, lr_min=0.001, arch_lr=3e-4)  # train_search.py
    options = (Option("order", 1, "1: first order; 2: the unrolled (second-order) step of eq. 7-8"),)

    def __init__(self, **settings):
        super().__init__(**settings)
        if self.order not in (1, 2):
            raise ValueError(f"DARTS --order must be 1 or 2, got {self.order}")

    @property
    def label(self) -> str:
        return f"darts_{'1st' if self.order == 1 else '2nd'}"

    def arch_gradient(self, search: BiLevel, train: Batch, valid: Batch) -> Sequence[torch.Tensor]:
        if self.order == 1:
            return super().arch_gradient(search, train, valid)
        return unrolled_gradient(search, train, valid, search.lr())


def _virtual_step(search: BiLevel, train: Batch, xi: float) -> None:
    """Move the weights in place to w' = w - xi (momentum * buffer + grad L_train + weight_decay * w)."""
    with frozen(search.alphas):
        grads = search.grad(search.loss(train), search.weights)
    momentum, decay = search.config.momentum, search.config.weight_decay
    with torch.no_grad():
        for w, g in zip(search.weights, grads):
            buffer = search.w_optimizer.state.get(w, {}).get("momentum_buffer")
            step = g + decay * w
            if buffer is not None:
                step += momentum * buffer
            w.sub_(xi * step)


def unrolled_gradient(search: BiLevel, train: Batch, valid: Batch, xi: float, r: float = 1e-2) -> List[torch.Tensor]:
    """DARTS eq. 7 with the finite-difference Hessian-vector product of eq. 8 (``r`` / ||v|| as epsilon)."""
    weights, alphas = search.weights, search.alphas
    original = [w.detach().clone() for w in weights]
    _virtual_step(search, train, xi)
    grads = search.grad(search.loss(valid), [*alphas, *weights])
    d_alpha, v = grads[:len(alphas)], grads[len(alphas):]
    eps = r / torch.cat([g.flatten() for g in v]).norm()

    def alpha_grad_at(sign: float) -> Sequence[torch.Tensor]:
        with torch.no_grad():
            for w, w0, g in zip(weights, original, v):
                w.copy_(w0 + sign * eps * g)
        with frozen(weights):
            return search.grad(search.loss(train), alphas)

    plus, minus = alpha_grad_at(1.0), alpha_grad_at(-1.0)
    with torch.no_grad():
        for w, w0 in zip(weights, original):
            w.copy_(w0)
    return [d - xi * (p - m) / (2 * eps) for d, p, m in zip(d_alpha, plus, minus)]
