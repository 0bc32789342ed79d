"""BNAS-v2's headline is speed: B-DARTS searches 5x (first order) and 7.9x (second order) faster than DARTS.
Two measurements, each side by side in one run:

1. ``test_bdarts_epoch_against_darts``: one search epoch of our B-DARTS against one of our DARTS, each at
   its paper's default shape (B-DARTS: the broad supernet, C=16, 2 convolution blocks and 1 enhancement
   block, batch 256; DARTS: 8 cells, C=16, batch 64) on the same data: 512 images for the weights and 512
   for alpha (CIFAR-10 sized, random pixels), so 2 batches of B-DARTS against 8 of DARTS. The time is
   ``Search.train_epoch`` after the warm-up, data loading in the process (``num_workers=0``).
   ``extra_info.speedup`` = DARTS's epoch / B-DARTS's; the goal is the paper's 5x (first order).
2. ``test_broad_step_against_authors``: one first-order step of our broad supernet (``BiLevel.step`` of
   ``BDarts``) against the authors' (``BNASv2CLR/model_search_b.py``; the body of ``train()`` in their
   ``train_search_b_confidence.py`` with ``architect_confidence.Architect``'s first-order step: Adam on
   alpha with the learning rate times the confidence, then SGD on the weights, clip 5), batch 256. Their
   code is read from ``BNASV2_CODE`` (a checkout of zixiangding/BNASv2), never copied here; without it the
   test is skipped. Goal: ours at least 1.5x theirs at no more peak memory (``measure.py``).

Run::

    mkdir -p /tmp/bnasv2 && git --git-dir=<mirror of zixiangding/BNASv2> archive HEAD | tar -x -C /tmp/bnasv2
    BNASV2_CODE=/tmp/bnasv2 python -m pytest benchmarks/test_broad_speed.py -p no:cacheprovider -s
"""
import os
import pickle
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nas_zoo.search import BDarts, BiLevel, Darts, Search, SearchConfig, with_defaults

from measure import DEVICE, cuda_calls_stay_on_device, load_authors, mean_seeded_time, peak_memory, report_peak

CODE = os.environ.get("BNASV2_CODE")
IMAGES, C, CLASSES, BATCH = 1024, 16, 10, 256
ROUNDS = 2
CONFIDENCE = 0.25  # c at epoch 25 of 50: ((24 + 1) / 50) ** 2


def _cifar(root: Path) -> Path:
    """A CIFAR-10 folder of ``IMAGES`` random training images (the first half trains the weights)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per_batch = IMAGES // 5
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"labels": rng.integers(0, CLASSES, per_batch).tolist(),
                 "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def _epoch_time(algorithm, data: Path, out: Path) -> float:
    config = SearchConfig(data_dir=str(data), init_channels=C, num_workers=0, device=DEVICE)
    search = Search(algorithm, config, out, progress=False)
    epoch = search.config.arch_warmup
    search.train_epoch(epoch)  # warm-up: allocator, kernels
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        search.train_epoch(epoch)
        times.append(time.perf_counter() - start)
    return statistics.mean(times)


@pytest.mark.parametrize("order", [1, 2])
def test_bdarts_epoch_against_darts(benchmark, tmp_path, order):
    data = _cifar(tmp_path / "data")
    darts = _epoch_time(Darts(order=order), data, tmp_path / "darts")
    bdarts = benchmark.pedantic(lambda: _epoch_time(BDarts(order=order), data, tmp_path / "bdarts"), rounds=1)
    speedup = darts / bdarts
    benchmark.extra_info.update(device=DEVICE, order=order, images=IMAGES // 2, darts_epoch_s=darts,
                                bdarts_epoch_s=bdarts, speedup=speedup)
    print(f"\norder {order} ({DEVICE}): one epoch over {IMAGES // 2} images: DARTS {darts:.1f} s, "
          f"B-DARTS {bdarts:.1f} s, speedup {speedup:.2f}x (paper: {5 if order == 1 else 7.9}x)")
    assert speedup >= 5 if order == 1 else speedup >= 7.9


def _batches():
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(BATCH, 3, 32, 32, generator=generator).to(DEVICE),
             torch.randint(0, CLASSES, (BATCH,), generator=generator).to(DEVICE)) for _ in range(2)]


def _authors():
    """Their first-order step: ``Architect.step(..., unrolled=False)`` then the weights step of ``train()``."""
    code = load_authors(Path(CODE) / "BNASv2CLR", ("genotypes", "operations", "model_search_b"), "_bnas_authors")
    criterion = nn.CrossEntropyLoss()
    torch.manual_seed(0)
    with cuda_calls_stay_on_device():
        model = code.model_search_b.Network(C, CLASSES, 2, criterion, en_layers=1).to(DEVICE)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=3e-4)
    optimizer_a = torch.optim.Adam(model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    (x, y), (x_search, y_search) = _batches()

    def step():
        model.train()
        optimizer_a.zero_grad()
        loss_a = model._loss(x_search, y_search)
        for group in optimizer_a.param_groups:
            group["lr"] = 3e-4 * CONFIDENCE
        loss_a.backward()
        optimizer_a.step()

        optimizer.zero_grad()
        logits = model(x)
        loss = criterion(logits, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5)
        optimizer.step()
        return loss.item()
    return step


def _ours():
    algorithm = BDarts()
    config = with_defaults(algorithm, SearchConfig(init_channels=C, device=DEVICE))
    torch.manual_seed(0)
    model = algorithm.network(config, CLASSES).to(DEVICE)
    search = BiLevel(algorithm, model, config)
    algorithm.c = CONFIDENCE
    model.train()
    train, valid = (search.batch(b) for b in _batches())
    return lambda: search.step(train, valid)


@pytest.mark.skipif(not CODE, reason="BNASV2_CODE is not set: give it a checkout of zixiangding/BNASv2")
def test_broad_step_against_authors(benchmark):
    theirs = mean_seeded_time(_authors(), ROUNDS)
    ours = benchmark.pedantic(lambda: mean_seeded_time(_ours(), ROUNDS), rounds=1)
    their_memory, our_memory = peak_memory(__file__, "authors"), peak_memory(__file__, "ours")
    speedup, memory_ratio = theirs / ours, our_memory / their_memory
    benchmark.extra_info.update(device=DEVICE, batch=BATCH, ours_s=ours, authors_s=theirs, speedup=speedup,
                                ours_peak_bytes=our_memory, authors_peak_bytes=their_memory,
                                memory_ratio=memory_ratio)
    print(f"\nbroad step ({DEVICE}, batch {BATCH}): ours {ours:.2f} s, authors {theirs:.2f} s, speedup "
          f"{speedup:.2f}x; peak memory ours {our_memory / 2**20:.0f} MiB, authors {their_memory / 2**20:.0f} "
          f"MiB, ratio {memory_ratio:.2f}")
    assert speedup >= 1.5 and memory_ratio <= 1.0


if __name__ == "__main__":  # one side's peak memory, in its own process: SIDE
    report_peak(_authors() if sys.argv[1] == "authors" else _ours())
