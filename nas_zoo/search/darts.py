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

Recurrent cells (``--dataset ptb``, ``rnn/train_search.py`` and ``rnn/architect.py``; the run is
``recurrent.LanguageSearch``): the same algorithm with the LM's settings (``PTB_DEFAULTS``). Their
architect clips both gradients of the unrolled step to the weights' ``grad_clip``: the virtual step is plain
SGD on the clipped training gradient, w' = w - xi (c grad_w L_train + wd w) with c = min(1, clip / ||grad||),
the second-order term is scaled by that c (the derivative of the step taken, c held constant) and the vector
of the Hessian-vector product is grad_w' L_val clipped to norm ``clip``. Their code scales by
clip / ||grad|| also when that exceeds 1 (no clipping took place); we use the step's own c: both agree
whenever the gradient is clipped, which at lr 20 and clip 0.25 is nearly every step.
"""
from typing import List, Optional, Sequence

import torch

from .algorithm import Option, SearchAlgorithm
from .bilevel import Batch, BiLevel, frozen


class Darts(SearchAlgorithm):
    """``order=1`` (DARTS first order, "DARTS (first order)" in Table 1) or ``order=2`` (the unrolled step)."""

    name = "darts"
    defaults = dict(epochs=50, batch_size=64, lr=0.025, lr_min=0.001, arch_lr=3e-4)  # train_search.py
    ptb = {}  # rnn/train_search.py: PTB_DEFAULTS
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
        clip = search.config.grad_clip if search.config.dataset == "ptb" else None  # rnn/architect.py
        return unrolled_gradient(search, train, valid, search.lr(), clip=clip)


def _clip_coefficient(grads: Sequence[torch.Tensor], clip: Optional[float]) -> float:
    """The factor that brings the gradients' joint norm down to ``clip`` (1 if it is below, or no clip)."""
    if clip is None:
        return 1.0
    return min(1.0, clip / (torch.cat([g.flatten() for g in grads]).norm().item() + 1e-6))


def _virtual_step(search: BiLevel, train: Batch, xi: float, clip: Optional[float]) -> float:
    """Move the weights in place to w' = w - xi (momentum * buffer + c grad L_train + weight_decay * w), with
    c the clipping coefficient of the training gradient; returns c."""
    with frozen(search.alphas):
        grads = search.grad(search.loss(train), search.weights)
    momentum, decay = search.config.momentum, search.config.weight_decay
    c = _clip_coefficient(grads, clip)
    with torch.no_grad():
        for w, g in zip(search.weights, grads):
            buffer = search.w_optimizer.state.get(w, {}).get("momentum_buffer")
            step = c * g + decay * w
            if buffer is not None:
                step += momentum * buffer
            w.sub_(xi * step)
    return c


def unrolled_gradient(search: BiLevel, train: Batch, valid: Batch, xi: float, r: float = 1e-2,
                      clip: Optional[float] = None) -> List[torch.Tensor]:
    """DARTS eq. 7 with the finite-difference Hessian-vector product of eq. 8 (``r`` / ||v|| as epsilon);
    with ``clip``, the recurrent architect's clipping of both gradients (module docstring)."""
    weights, alphas = search.weights, search.alphas
    original = [w.detach().clone() for w in weights]
    c = _virtual_step(search, train, xi, clip)
    grads = search.grad(search.loss(valid), [*alphas, *weights])
    d_alpha, v = grads[:len(alphas)], grads[len(alphas):]
    shrink = _clip_coefficient(v, clip)
    v = [g * shrink for g in v]
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
    return [d - xi * c * (p - m) / (2 * eps) for d, p, m in zip(d_alpha, plus, minus)]
