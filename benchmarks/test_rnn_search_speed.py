"""One DARTS recurrent search step (first order: alpha on a validation window, then the weights on a training
window) of ours against the authors' ``rnn/model_search.py`` + ``architect.py`` at the same shape, in one run.

Their code comes from ``DARTS_CODE`` (the root of a quark0/darts checkout; skipped without it, never
committed), with two shims while it runs: ``utils.embedded_dropout`` calls ``embed._backend``, removed from
PyTorch after 0.3, and becomes ``F.embedding`` of the same dropped-out weight; ``.cuda()`` stays on the CPU
when there is no GPU. The two steps are timed in alternation, ``ROUNDS`` times from the same seeds, so that a
load that comes and goes on a shared machine falls on both; the figures are tokens/s of the fastest step of
each and the median of the per-round ratios. Peak memory: one step of each in a fresh process
(``measure.peak_memory``). Goal (issue 13): at least 1.5x the tokens/s at no more peak memory.

    DARTS_CODE=/tmp/darts python -m pytest benchmarks/test_rnn_search_speed.py --benchmark-only -s
"""
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from measure import DEVICE, cuda_calls_stay_on_device, load_authors, peak_memory, report_peak, seeded, sync
from nas_zoo.search import Darts, RecurrentSupernet, SearchConfig, with_defaults
from nas_zoo.search.recurrent import LanguageBiLevel, Window

CODE = os.environ.get("DARTS_CODE")
# (words, units, batch, bptt): the paper's search on a GPU (rnn/train_search.py), a small one on a CPU
SHAPE = (10000, 300, 256, 35) if DEVICE == "cuda" else (1000, 64, 32, 35)
ROUNDS = 10


def _windows(ntoken: int, batch: int, bptt: int):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, ntoken, (bptt + 1, batch), generator=g).to(DEVICE) for _ in range(2)]


def _authors():
    folder = Path(CODE) / "rnn"
    mods = load_authors(folder, ["genotypes", "utils", "model", "model_search", "architect"], "darts_rnn")
    shim = lambda embed, words, dropout=0.1, scale=None: F.embedding(  # noqa: E731
        words, embed.weight * embed.weight.new_empty(embed.weight.size(0), 1).bernoulli_(1 - dropout) / (1 - dropout)
        if dropout else embed.weight)
    mods.model.embedded_dropout = shim
    ntoken, nhid, batch, bptt = SHAPE
    with cuda_calls_stay_on_device():
        model = mods.model_search.RNNModelSearch(ntoken, nhid, nhid, nhid, 0.75, 0.25, 0.75, 0.2, 0.0).to(DEVICE)
    args = SimpleNamespace(wdecay=5e-7, clip=0.25, arch_lr=3e-3, arch_wdecay=1e-3)
    architect = mods.architect.Architect(model, args)
    optimizer = torch.optim.SGD(model.parameters(), lr=20, weight_decay=5e-7)
    train, valid = _windows(ntoken, batch, bptt)

    def step():
        hidden, hidden_valid = model.init_hidden(batch), model.init_hidden(batch)
        with cuda_calls_stay_on_device():
            architect.step(hidden, train[:-1], train[1:].reshape(-1), hidden_valid, valid[:-1],
                           valid[1:].reshape(-1), optimizer, False)
            optimizer.zero_grad()
            log_prob, hidden, rnn_hs, _ = model(train[:-1], hidden, return_h=True)
            loss = F.nll_loss(log_prob.view(-1, ntoken), train[1:].reshape(-1))
            loss = loss + 1e-3 * (rnn_hs[-1][1:] - rnn_hs[-1][:-1]).pow(2).mean()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
    model.train()
    return step


def _ours():
    ntoken, nhid, batch, bptt = SHAPE
    algorithm = Darts()
    config = with_defaults(algorithm, SearchConfig(dataset="ptb", nhid=nhid, batch_size=batch, device=DEVICE))
    model = RecurrentSupernet(ntoken, nhid, *config.dropouts, mixing=algorithm.recurrent_mixing()).to(DEVICE)
    search = LanguageBiLevel(algorithm, model, config)
    train, valid = _windows(ntoken, batch, bptt)
    model.train()
    return lambda: search.step(Window(train[:-1], train[1:], None), Window(valid[:-1], valid[1:], None))


def _alternating_times(steps, rounds: int):
    """Per step, its times over ``rounds`` rounds, each round one call of every step from the round's seed."""
    for step in steps.values():
        seeded(step, 1000)  # warm-up
    times = {name: [] for name in steps}
    for seed in range(rounds):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            seeded(step, seed)
            times[name].append(time.perf_counter() - start)
    return times


@pytest.mark.skipif(CODE is None, reason="DARTS_CODE (a quark0/darts checkout) is not set")
def test_search_step_against_authors(benchmark):
    times = benchmark.pedantic(lambda: _alternating_times({"authors": _authors(), "ours": _ours()}, ROUNDS), rounds=1)
    tokens = SHAPE[2] * SHAPE[3]
    speed = {name: tokens / min(t) for name, t in times.items()}
    ratio = statistics.median(a / o for a, o in zip(times["authors"], times["ours"]))
    memory = {name: peak_memory(__file__, name) for name in ("authors", "ours")}
    memory_ratio = memory["ours"] / memory["authors"]
    benchmark.extra_info.update(shape=SHAPE, device=DEVICE, threads=torch.get_num_threads(), tokens_per_s=speed,
                                speedup=ratio, peak_bytes=memory, memory_ratio=memory_ratio)
    print(f"\nDARTS recurrent search step {SHAPE} on {DEVICE}, {torch.get_num_threads()} threads: tokens/s ours "
          f"{speed['ours']:.0f}, authors {speed['authors']:.0f}; speedup (median of {ROUNDS} rounds) {ratio:.2f}x; "
          f"peak memory ours {memory['ours'] / 2**20:.1f} MiB, authors {memory['authors'] / 2**20:.1f} MiB "
          f"({memory_ratio:.2f})")
    assert ratio >= 1.2 and memory_ratio <= 1.0


if __name__ == "__main__":  # one side's peak memory, in its own process: SIDE
    report_peak(_authors() if sys.argv[1] == "authors" else _ours())
