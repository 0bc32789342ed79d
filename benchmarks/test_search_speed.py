"""One search step of our supernets against the GDAS authors' own (``xautodl``), side by side in one run.

Both supernets have the DARTS space and macro structure at the same shape: C=16, 6 cells (xautodl's
``N=2``: two normal cells, a reduction, a normal, a reduction, a normal), a batch of 64 32x32 images,
10 classes. One step is one weights step (SGD, momentum, weight decay, clip 5) and one architecture step
(Adam) on fixed random batches, in each algorithm's order, as xautodl's search scripts run it
(``search_func`` of ``exps/NAS-Bench-201-algos/GDAS.py`` and ``DARTS-V1.py``). For GDAS both sample the
same operations, so the two sides do the same work: ours starts from xautodl's alpha and draws its Gumbel
noise from the same seed over xautodl's operation order; ``test_gdas_supernets_agree`` checks that with
xautodl's weights ours then computes xautodl's logits.

Time: the mean over the same seeds; ``extra_info.speedup`` = xautodl's time / ours. Peak memory: each side
in a fresh process, warmed up by one step, then the bytes above the step's starting point (CUDA: the
allocator's peak; CPU: the peak resident set, with glibc returning freed blocks at once); ``extra_info``
holds both and ``memory_ratio`` = ours / xautodl's. The ``nchw`` rows turn our channels-last layout off,
to show what it gives.

It fails when ours is slower than xautodl or takes more peak memory (README, "Speed against the authors' own
code": 1.30-1.72x at 0.82-0.88 of the memory on this project's CPU).

Run: ``pip install --no-deps xautodl; python -m pytest benchmarks/test_search_speed.py``.
"""
import statistics
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("xautodl")

from xautodl.models.cell_operations import SearchSpaceNames  # noqa: E402
from xautodl.models.cell_searchs import nasnet_super_nets  # noqa: E402

from nas_zoo.models.ops import PRIMITIVES  # noqa: E402
from nas_zoo.search import BiLevel, Darts, Gdas, GumbelHard, Mix, SearchConfig, with_defaults  # noqa: E402

from measure import DEVICE, peak_memory, report_peak, seeded  # noqa: E402

C, N, BATCH, CLASSES = 16, 2, 64, 10
ROUNDS = {"gdas": 8, "darts": 3}
THEIR_NAMES = {"dua_sepc_3x3": "sep_conv_3x3", "dua_sepc_5x5": "sep_conv_5x5", "dil_sepc_3x3": "dil_conv_3x3",
               "dil_sepc_5x5": "dil_conv_5x5"}
#: our column of each of xautodl's operations, and xautodl's column of each of ours
OUR_COLUMN = [PRIMITIVES.index(THEIR_NAMES.get(name, name)) for name in SearchSpaceNames["darts"]]
THEIR_COLUMN = [OUR_COLUMN.index(k) for k in range(len(PRIMITIVES))]


class SameSamples(GumbelHard):
    """Our Gumbel sampler with its noise laid over xautodl's operation order: the same seed samples the
    same operations on both sides."""

    def __call__(self, params, nodes):
        hard, index, _ = super().__call__({"alphas": params["alphas"][:, OUR_COLUMN]}, nodes)
        return Mix(hard[:, THEIR_COLUMN], [OUR_COLUMN[i] for i in index])


def _batches():
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(BATCH, 3, 32, 32, generator=generator).to(DEVICE),
             torch.randint(0, CLASSES, (BATCH,), generator=generator).to(DEVICE)) for _ in range(2)]


def _xautodl(algorithm: str):
    """xautodl's DARTS-space search network and its step (weights step and arch step as its scripts)."""
    torch.manual_seed(0)
    net = nasnet_super_nets[algorithm.upper()](C, N, 4, 4, 3, CLASSES, SearchSpaceNames["darts"], False, True)
    net = net.to(DEVICE).train()
    w_optimizer = torch.optim.SGD(net.get_weights(), 0.025, momentum=0.9, weight_decay=3e-4)
    a_optimizer = torch.optim.Adam(net.get_alphas(), 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    (x, y), (x_arch, y_arch) = _batches()

    def weights_step():
        w_optimizer.zero_grad()
        F.cross_entropy(net(x)[1], y).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5)
        w_optimizer.step()

    def arch_step():
        a_optimizer.zero_grad()
        F.cross_entropy(net(x_arch)[1], y_arch).backward()
        a_optimizer.step()

    def step():  # GDAS: weights then alpha; DARTS: alpha then weights
        for part in ((weights_step, arch_step) if algorithm == "gdas" else (arch_step, weights_step)):
            part()
    return net, step


def _ours(algorithm: str, channels_last: bool, start_from=None):
    torch.manual_seed(0)
    method = Gdas() if algorithm == "gdas" else Darts(order=1)
    config = with_defaults(method, SearchConfig(init_channels=C, layers=3 * N, channels_last=channels_last,
                                                device=DEVICE))
    model = method.network(config, CLASSES).to(DEVICE).train()
    if start_from is not None:
        _start_from(model, start_from)
    search = BiLevel(method, model, config)
    train, valid = (search.batch(b) for b in _batches())
    return lambda: search.step(train, valid)


def _start_from(model, theirs):
    with torch.no_grad():
        model.arch.alphas["normal"].copy_(theirs.arch_normal_parameters[:, THEIR_COLUMN])
        model.arch.alphas["reduce"].copy_(theirs.arch_reduce_parameters[:, THEIR_COLUMN])
    if isinstance(model.mixing, GumbelHard):
        model.mixing = SameSamples(model.mixing.tau)


def _copy_weights(model, theirs):
    """xautodl's GDAS weights into our supernet, module by module (xautodl's convolution biases stay out:
    each feeds a batch norm, whose mean subtraction cancels it)."""
    def weights(module):
        return [p for m in module.modules() for name, p in m.named_parameters(recurse=False)
                if not (isinstance(m, nn.Conv2d) and name == "bias")]

    pairs = [(model.stem, theirs.stem), (model.last_act, theirs.lastact), (model.classifier, theirs.classifier)]
    for cell, their_cell in zip(model.cells, theirs.cells, strict=True):
        pairs += [(cell.preprocess0, their_cell.preprocess0), (cell.preprocess1, their_cell.preprocess1)]
        their_edges = [their_cell.edges[f"{i}<-{j}"] for i in range(cell.nodes) for j in range(2 + i)]
        pairs += [(edge.ops[OUR_COLUMN[j]], op) for edge, their_edge in zip(cell.edges, their_edges, strict=True)
                  for j, op in enumerate(their_edge._ops)]
    with torch.no_grad():
        for ours, their in pairs:
            for p, q in zip(ours.parameters(), weights(their), strict=True):
                p.copy_(q)


def test_gdas_supernets_agree():
    """Same weights, same alpha (away from uniform), same seed: our GDAS supernet gives xautodl's logits."""
    torch.manual_seed(0)
    theirs = nasnet_super_nets["GDAS"](C, N, 4, 4, 3, CLASSES, SearchSpaceNames["darts"], False, True)
    with torch.no_grad():
        theirs.arch_normal_parameters.normal_()
        theirs.arch_reduce_parameters.normal_()
    method = Gdas()
    model = method.network(with_defaults(method, SearchConfig(init_channels=C, layers=3 * N)), CLASSES)
    _start_from(model, theirs)
    _copy_weights(model, theirs)
    assert sum(p.numel() for p in model.weights()) == sum(
        p.numel() for name, p in theirs.named_parameters() if "arch" not in name and not
        (name.endswith("bias") and p.dim() == 1 and "cells" in name))
    x = torch.randn(8, 3, 32, 32)
    for seed in range(4):
        torch.manual_seed(seed)
        expected = theirs(x)[1]
        torch.manual_seed(seed)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("algorithm", ["gdas", "darts"])
def test_search_step_against_xautodl(benchmark, algorithm, channels_last):
    net, theirs = _xautodl(algorithm)
    ours = _ours(algorithm, channels_last, start_from=net)
    seeds = range(ROUNDS[algorithm])
    seeded(theirs, 1000)
    their_times = []
    for seed in seeds:
        start = time.perf_counter()
        seeded(theirs, seed)
        their_times.append(time.perf_counter() - start)
    seeded(ours, 1000)
    next_seed = iter(seeds)

    def reseed():
        torch.manual_seed(next(next_seed))
    benchmark.pedantic(ours, setup=reseed, rounds=len(seeds), iterations=1)
    our_time = benchmark.stats.stats.mean
    their_time = statistics.mean(their_times)
    our_memory, their_memory = (peak_memory(__file__, side, algorithm, channels_last)
                                for side in ("ours", "xautodl"))
    benchmark.extra_info.update(device=DEVICE, speedup=their_time / our_time, ours_s=our_time, xautodl_s=their_time,
                                ours_peak_bytes=our_memory, xautodl_peak_bytes=their_memory,
                                memory_ratio=our_memory / their_memory)
    print(f"\n{algorithm} ({'nhwc' if channels_last else 'nchw'}, {DEVICE}): ours {our_time:.2f} s/step, "
          f"xautodl {their_time:.2f} s/step, speedup {their_time / our_time:.2f}x; peak memory ours "
          f"{our_memory / 2**20:.0f} MiB, xautodl {their_memory / 2**20:.0f} MiB")
    assert their_time / our_time >= 1.0 and our_memory <= their_memory


if __name__ == "__main__":  # one side's peak memory, in its own process: SIDE ALGORITHM CHANNELS_LAST
    side, algorithm, channels_last = sys.argv[1], sys.argv[2], sys.argv[3] == "True"
    step = _xautodl(algorithm)[1] if side == "xautodl" else _ours(algorithm, channels_last, _xautodl(algorithm)[0])
    report_peak(step)
