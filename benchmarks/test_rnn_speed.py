"""Speed of the DARTS recurrent cell (nas_zoo.models.rnn.DARTSCell) against a plain step-by-step implementation.

The baseline is the original cell (quark0/darts rnn/model.py DARTSCell.forward) written out plainly: per time
step it concatenates [x_t, h_{t-1}], multiplies by W_0, then runs the steps one matmul each, and averages
the stacked states. Both run the same weights and dropout masks and must give the same outputs and
gradients; the suite reports tokens/s of each and asserts the speed-up of the cell over the baseline.

    python -m pytest benchmarks/test_rnn_speed.py --benchmark-only -s      # prints the ratios
"""
import time

import pytest
import torch

import nas_zoo
from nas_zoo.models.rnn import DARTSCell, dropout_mask

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda x: x}
# (units, batch): a CPU-sized model (the README's real-data run) and the paper's PTB width at its batch size.
SIZES = {"small": (128, 32), "ptb": (850, 64)}
# What every case must reach: the cell no more than 20% slower than the plain one. Measured on the shared
# 2-core machine, 0.88-1.42x (README); the 1.5x goal is not reached.
FLOOR = 0.8


def plain_cell(cell: DARTSCell, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """rnn/model.py DARTSCell.forward + cell(), step by step (masks drawn in the same order as DARTSCell)."""
    T, B, nhid = x.size(0), x.size(1), cell.nhid
    if cell.training:
        x_mask = dropout_mask(x, (B, cell.ninp), cell.dropoutx)
        h_mask = dropout_mask(h, (B, nhid), cell.dropouth)
    outputs = []
    for t in range(T):
        xh = torch.cat([x[t] * x_mask, h * h_mask] if cell.training else [x[t], h], dim=-1)
        c0, h0 = torch.split(xh.mm(cell._W0), nhid, dim=-1)
        states = [h + c0.sigmoid() * (h0.tanh() - h)]
        for i, (name, pred) in enumerate(cell.genotype.recurrent):
            s_prev = states[pred]
            ch = (s_prev * h_mask if cell.training else s_prev).mm(cell._Ws[i])
            c, g = torch.split(ch, nhid, dim=-1)
            states.append(s_prev + c.sigmoid() * (ACTIVATIONS[name](g) - s_prev))
        h = torch.mean(torch.stack([states[i] for i in cell.genotype.concat], -1), -1)
        outputs.append(h)
    return torch.stack(outputs)


def _setup(size: str, train: bool, bptt: int = 35):
    nhid, batch = SIZES[size]
    torch.manual_seed(0)
    cell = DARTSCell(nas_zoo.get_genotype("DARTS_V2_RNN"), nhid, nhid).train(train)
    x = (torch.randn(bptt, batch, nhid) * 0.5).requires_grad_(train)
    h = (torch.randn(batch, nhid) * 0.5).requires_grad_(train)
    return cell, x, h


def _step(impl, cell, x, h, train: bool):
    torch.manual_seed(1)  # the same dropout masks for both implementations
    if not train:
        with torch.no_grad():
            return impl(cell, x, h), None
    cell.zero_grad(set_to_none=True)
    x.grad = h.grad = None
    out = impl(cell, x, h)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in [*cell.parameters(), x, h]]


def _fast(cell, x, h):
    return cell(x, h)


IMPLS = {"nas_zoo": _fast, "plain": plain_cell}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("size", list(SIZES))
def test_identical_outputs(size, train):
    cell, x, h = _setup(size, train)
    out, grads = _step(_fast, cell, x, h, train)
    ref, ref_grads = _step(plain_cell, cell, x, h, train)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads or [], ref_grads or []):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("size", list(SIZES))
def test_tokens_per_second(benchmark, size, train, impl):
    cell, x, h = _setup(size, train)
    benchmark.group = f"DARTS cell {size} {'train' if train else 'eval'}"
    benchmark.pedantic(_step, args=(IMPLS[impl], cell, x, h, train), rounds=3, warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = x.size(0) * x.size(1) / benchmark.stats.stats.min


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("size", list(SIZES))
def test_speedup_over_plain_cell(benchmark, size, train):
    """Both implementations timed alternately in this run (best of 5 each); the ratio is the headline."""
    cell, x, h = _setup(size, train)
    best = {name: float("inf") for name in IMPLS}

    def measure():
        for name, impl in IMPLS.items():
            start = time.perf_counter()
            _step(impl, cell, x, h, train)
            best[name] = min(best[name], time.perf_counter() - start)

    benchmark.pedantic(measure, rounds=5, warmup_rounds=1)
    ratio = best["plain"] / best["nas_zoo"]
    tokens = x.size(0) * x.size(1)
    benchmark.extra_info.update(ratio=ratio, tokens_per_s={k: tokens / v for k, v in best.items()})
    print(f"\n{size} {'train' if train else 'eval'}: nas_zoo {tokens / best['nas_zoo']:,.0f} tok/s, "
          f"plain {tokens / best['plain']:,.0f} tok/s, speed-up {ratio:.2f}x (threads {torch.get_num_threads()})")
    assert ratio >= FLOOR, f"{ratio:.2f}x: the cell is slower than the plain step-by-step one"
