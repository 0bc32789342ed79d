"""What the collapse monitor costs: one eigenvalue (``hessian.validation_eigenvalue``, as the search runs it)
against one search step (weights step + architecture step) of the same run, and against RobustDARTS's way to
the same number, the whole Hessian (one double backward per architecture parameter).

The run is the shared search loop's at a small realistic shape: C=8, 5 cells, batch 64 (the README's real-data
searches), on the CIFAR-10 subset of ``../shared/data`` when it is there (else random images), after a few steps
so that alpha has moved. ``extra_info``: ``steps`` = the eigenvalue's time in search steps (the fraction of an
epoch is that over the epoch's steps: 40 on the 2,542-image half of the subset, 391 on CIFAR-10's 25,000),
``products`` its Hessian-vector products, and ``speedup`` = the whole Hessian's time (``dim`` products, each
timed as one of ours) / the eigenvalue's.

Run: ``python -m pytest benchmarks/test_hessian_cost.py -s`` (one thread: ``--threads 1`` of the README's runs).
"""
import itertools
import tempfile
import time
from pathlib import Path

import pytest
import torch

from nas_zoo.search import ALGORITHMS, Search, SearchConfig, hessian
from nas_zoo.search.bilevel import frozen
from tests.conftest import write_tiny_cifar

from measure import mean_seeded_time

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"
WARMUP_STEPS = 5


def small_run(algorithm: str, folder: Path) -> Search:
    data = str(DATA if DATA.is_dir() else write_tiny_cifar(folder))  # random images cost the same
    config = SearchConfig(data_dir=data, init_channels=8, layers=5, batch_size=64, arch_warmup=0, num_workers=0,
                          device="cpu", epochs=2)
    return Search(ALGORITHMS[algorithm](), config, folder / "out", progress=False)


@pytest.mark.parametrize("algorithm", ["darts", "gdas", "pc-darts"])
def test_one_eigenvalue_in_search_steps(algorithm, benchmark):
    torch.set_num_threads(1)
    run = small_run(algorithm, Path(tempfile.mkdtemp()))
    run.model.train()
    batches = itertools.cycle(zip(run.loader(run.data.train, 0), run.loader(run.data.valid, 1)))

    def step():
        train, valid = next(batches)
        run.bilevel.step(run.bilevel.batch(train), run.bilevel.batch(valid))

    for _ in range(WARMUP_STEPS):
        step()
    step_time = mean_seeded_time(step, 3)
    start = time.perf_counter()
    eigen = benchmark.pedantic(hessian.validation_eigenvalue, args=(run,), rounds=1, iterations=1)
    eigen_time = time.perf_counter() - start
    with frozen(run.bilevel.weights):  # one product alone, for the whole Hessian's time
        product = hessian.hessian_vector_products(run.bilevel.loss(run.bilevel.batch(run.fixed_batches(1)[0])),
                                                  run.bilevel.alphas)
        dim = sum(p.numel() for p in run.bilevel.alphas)
        product_time = mean_seeded_time(lambda: product(torch.randn(dim, dtype=torch.float64)), 3)
    benchmark.extra_info.update(steps=eigen_time / step_time, products=eigen.products, converged=eigen.converged,
                                eigenvalue=eigen.value, step_s=step_time, eigenvalue_s=eigen_time, dim=dim,
                                speedup=dim * product_time / eigen_time)
    print(f"\n{algorithm}: one eigenvalue ({eigen.value:.4g}, {eigen.products} products) = "
          f"{eigen_time / step_time:.1f} search steps ({eigen_time:.1f} s / {step_time:.2f} s); the whole Hessian "
          f"({dim} products) would take {dim * product_time / eigen_time:.1f}x as long")
    assert eigen.products < dim  # the point of the method: fewer products than rows of the Hessian
