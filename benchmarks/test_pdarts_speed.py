"""One P-DARTS search step of our supernet against the P-DARTS authors' own (chenxin061/pdarts), side by side.

Two shapes of the search: the first stage (5 cells, all 8 operations on every edge, skip-connection dropout
0.1) and the last (17 cells, 3 operations per edge, dropout 0.7), C=16, a batch of 96 32x32 images (the
paper's), 10 classes. The last stage's candidates are drawn with a seeded random choice of 3 operations per
edge over the PRIMITIVES order (``none`` and ``skip_connect`` among them on some edges); their network gets
them as switches, ours as candidate names. Both skip-connection dropouts are at the stage's rate, as in the
first epoch after the alpha warm-up (their ``update_p``, our ``Pdarts.start_epoch``).

One step is the body of ``train()`` in their ``train_search.py`` for one batch with the alpha step on:
``model.train()``, the alpha step (Adam 6e-4, betas (0.5, 0.999), weight decay 1e-3 on the validation
batch's loss, ``clip_grad_norm_`` of alpha at 5), the weights step (SGD 0.025, momentum 0.9, weight decay
3e-4, clip 5), then the loss and top-1/top-5 accuracy read back. Their network runs without their
``nn.DataParallel`` wrapper (one device). Their ``utils.accuracy`` no longer runs on current torch (``view``
of a transposed tensor), so the top-k figures are computed here. Ours is ``BiLevel.step`` of ``Pdarts``.
``test_pdarts_supernets_same_size`` checks that the two supernets have the same weights and alpha.

Time: the mean over the same seeds after a warm-up step; ``extra_info.speedup`` = their time / ours.
Peak memory: each side in a fresh process (``measure.py``); ``memory_ratio`` = ours / theirs. Their side
is measured once per stage and shared by the ``nhwc`` and ``nchw`` rows, which turn our channels-last
layout on and off. It fails when ours is slower than theirs or takes more peak memory, the floor that our
DARTS and GDAS steps clear against xautodl (``test_search_speed.py``); this file has not yet been run to
the end on this project's 2-core machine (README, "P-DARTS on real data").

Run (their code is read from a checkout, never copied here)::

    mkdir -p /tmp/pdarts && git --git-dir=<mirror of chenxin061/pdarts>/.git archive HEAD | tar -x -C /tmp/pdarts
    PDARTS_CODE=/tmp/pdarts python -m pytest benchmarks/test_pdarts_speed.py -p no:cacheprovider -s

Without ``PDARTS_CODE`` the file is skipped.
"""
import ctypes
import functools
import gc
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

CODE = os.environ.get("PDARTS_CODE")
if not CODE:
    pytest.skip("PDARTS_CODE is not set: give it a checkout of chenxin061/pdarts to compare with",
                allow_module_level=True)

from nas_zoo.models.ops import PRIMITIVES  # noqa: E402
from nas_zoo.search import BiLevel, Pdarts, SearchConfig, with_defaults  # noqa: E402

from measure import DEVICE, load_authors, mean_seeded_time, peak_memory, report_peak, seeded  # noqa: E402

C, BATCH, CLASSES, EDGES = 16, 96, 10, 14
ROUNDS = 2
#: stage index -> (cells, operations per edge, skip-connection dropout rate)
SHAPES = {0: (5, 8, 0.1), 2: (17, 3, 0.7)}
STAGE_IDS = {0: "stage1", 2: "stage3"}


AUTHORS = load_authors(Path(CODE), ("genotypes", "operations", "model_search"), "_pdarts_authors")
assert list(AUTHORS.genotypes.PRIMITIVES) == list(PRIMITIVES), "their operation order is not ours"


def _candidates(stage: int):
    """None (every operation) in the first stage; else a seeded draw of ``ops`` operations per edge, in the
    PRIMITIVES order."""
    ops = SHAPES[stage][1]
    if ops == len(PRIMITIVES):
        return None
    rng = random.Random(0)
    return {t: [[PRIMITIVES[k] for k in sorted(rng.sample(range(len(PRIMITIVES)), ops))] for _ in range(EDGES)]
            for t in ("normal", "reduce")}


def _switches(candidates):
    """The same candidates as their ``switches_normal`` / ``switches_reduce``: a bool per PRIMITIVES entry."""
    return {t: [[name in (candidates[t][e] if candidates else PRIMITIVES) for name in PRIMITIVES]
                for e in range(EDGES)] for t in ("normal", "reduce")}


def _batches():
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(BATCH, 3, 32, 32, generator=generator).to(DEVICE),
             torch.randint(0, CLASSES, (BATCH,), generator=generator).to(DEVICE)) for _ in range(2)]


def _dropout_rates(model: nn.Module):
    return {m.p for m in model.modules() if isinstance(m, nn.Dropout)}


def _their_network(stage: int, criterion: nn.Module):
    """Their search network of the stage, its skip dropout at the rate of the first epoch after the alpha
    warm-up (``train_search.py``: ``p = rate * exp(-(epoch - eps_no_arch) * scale_factor)``, then
    ``update_p``)."""
    cells, _, rate = SHAPES[stage]
    switches = _switches(_candidates(stage))
    torch.manual_seed(0)
    np.random.seed(0)  # their alpha initialisation
    net = AUTHORS.model_search.Network(C, CLASSES, cells, criterion, switches_normal=switches["normal"],
                                       switches_reduce=switches["reduce"], p=rate)
    net.p = rate
    net.update_p()
    assert _dropout_rates(net) == {rate}
    return net.to(DEVICE)


def _our_network(stage: int, channels_last: bool = True):
    cells, ops, rate = SHAPES[stage]
    algorithm = Pdarts()
    config = with_defaults(algorithm, SearchConfig(init_channels=C, channels_last=channels_last, device=DEVICE))
    torch.manual_seed(0)
    model = algorithm.network(config, CLASSES, stage, _candidates(stage)).to(DEVICE)
    algorithm.start_epoch(model, config, stage, config.arch_warmup)  # p = rate * exp(0)
    assert len(model.cells) == cells and model.arch.alphas["normal"].shape == (EDGES, ops)
    assert _dropout_rates(model) == {rate} and config.batch_size == BATCH
    return algorithm, config, model


def _topk(logits: torch.Tensor, target: torch.Tensor):
    """Top-1 and top-5 accuracy in percent, as their ``utils.accuracy(logits, target, topk=(1, 5))``."""
    hits = logits.topk(5, 1).indices.eq(target[:, None])
    return [hits[:, :k].any(1).float().sum(0) * (100.0 / target.size(0)) for k in (1, 5)]


def _authors(stage: int):
    """Their step: ``train()`` of ``train_search.py`` for one batch, alpha step on."""
    criterion = nn.CrossEntropyLoss()
    model = _their_network(stage, criterion)
    network_params = [v for k, v in model.named_parameters() if not k.endswith(("alphas_normal", "alphas_reduce"))]
    optimizer = torch.optim.SGD(network_params, 0.025, momentum=0.9, weight_decay=3e-4)
    optimizer_a = torch.optim.Adam(model.arch_parameters(), lr=6e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    (x, y), (x_search, y_search) = _batches()

    def step():
        model.train()
        optimizer_a.zero_grad()
        loss_a = criterion(model(x_search), y_search)
        loss_a.backward()
        nn.utils.clip_grad_norm_(model.arch_parameters(), 5)
        optimizer_a.step()

        optimizer.zero_grad()
        logits = model(x)
        loss = criterion(logits, y)
        loss.backward()
        nn.utils.clip_grad_norm_(network_params, 5)
        optimizer.step()
        prec1, prec5 = _topk(logits, y)
        return loss.item(), prec1.item(), prec5.item()
    return step


def _ours(stage: int, channels_last: bool):
    algorithm, config, model = _our_network(stage, channels_last)
    model.train()
    search = BiLevel(algorithm, model, config)
    train, valid = (search.batch(b) for b in _batches())
    return lambda: search.step(train, valid)


@pytest.mark.parametrize("stage", list(SHAPES), ids=list(STAGE_IDS.values()))
def test_pdarts_supernets_same_size(stage):
    """The same weights (count) and alpha (shape) in both supernets, at both shapes."""
    _, _, ours = _our_network(stage)
    theirs = _their_network(stage, nn.CrossEntropyLoss())
    their_weights = [p for name, p in theirs.named_parameters() if name not in ("alphas_normal", "alphas_reduce")]
    assert sum(p.numel() for p in ours.weights()) == sum(p.numel() for p in their_weights)
    assert len(list(ours.weights())) == len(their_weights)
    for t in ("normal", "reduce"):
        assert ours.arch.alphas[t].shape == getattr(theirs, f"alphas_{t}").shape


def _peak_memory(side: str, stage: int, channels_last: bool) -> int:
    """``measure.peak_memory`` of one side, after this process has handed its freed heap back: glibc keeps
    the blocks of a batch-96 step (about 10 GB here), and with them this process and the fresh one measuring
    a stage-3 step would not fit in memory together."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    return peak_memory(__file__, side, stage, channels_last)


@functools.lru_cache(maxsize=None)
def _their_figures(stage: int):
    """Their mean step time over ``ROUNDS`` seeds after a warm-up, and their peak memory (fresh process);
    measured once per stage for both of our layouts."""
    step = _authors(stage)
    their_time = mean_seeded_time(step, ROUNDS)
    del step
    return their_time, _peak_memory("authors", stage, True)


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("stage", list(SHAPES), ids=list(STAGE_IDS.values()))
def test_pdarts_step_against_authors(benchmark, stage, channels_last):
    their_time, their_memory = _their_figures(stage)
    ours = _ours(stage, channels_last)
    seeds = range(ROUNDS)
    seeded(ours, 1000)
    next_seed = iter(seeds)

    def reseed():
        torch.manual_seed(next(next_seed))
    benchmark.pedantic(ours, setup=reseed, rounds=len(seeds), iterations=1)
    our_time = benchmark.stats.stats.mean
    del ours
    our_memory = _peak_memory("ours", stage, channels_last)
    cells, ops, rate = SHAPES[stage]
    benchmark.extra_info.update(device=DEVICE, cells=cells, ops_per_edge=ops, dropout=rate, batch=BATCH,
                                speedup=their_time / our_time, ours_s=our_time, authors_s=their_time,
                                ours_peak_bytes=our_memory, authors_peak_bytes=their_memory,
                                memory_ratio=our_memory / their_memory)
    print(f"\n{STAGE_IDS[stage]} ({cells} cells x {ops} ops, {'nhwc' if channels_last else 'nchw'}, {DEVICE}): "
          f"ours {our_time:.2f} s/step, authors {their_time:.2f} s/step, speedup {their_time / our_time:.2f}x; "
          f"peak memory ours {our_memory / 2**20:.0f} MiB, authors {their_memory / 2**20:.0f} MiB, "
          f"ratio {our_memory / their_memory:.2f}")
    assert their_time / our_time >= 1.0 and our_memory <= their_memory


if __name__ == "__main__":  # one side's peak memory, in its own process: SIDE STAGE CHANNELS_LAST
    side, stage, channels_last = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "True"
    report_peak(_authors(stage) if side == "authors" else _ours(stage, channels_last))
