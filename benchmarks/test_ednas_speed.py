"""One EDNAS weights step and one policy step of ours against the EDNAS authors' own (logue311/EDNAS,
``EDNAS_on_CIFAR-10``), side by side in one run, at the paper's CIFAR shape: C=16, 8 cells, 7 operations,
batches of 128 32x32 images (the weights' and the policies'), 10 classes.

A weights step is the body of their ``train`` in ``train_search.py``: ``model.train()``, a new child
(``sample_new_architecture``), the loss, backward, ``clip_grad_norm`` at 5, SGD (lr 0.05, Nesterov momentum
0.9, weight decay 3e-4); the loss and top-1 read back. A policy step is the body of their ``train_arch``:
``model.eval()``, a new child, the logits, then ``Architect.step`` (its own forward pass, the reward, the
moving-average baseline, REINFORCE through their log-probability, Adam 3.5e-4). Ours are
``Ednas.weights_step`` and ``Ednas.policy_step``. Ours runs with ``authors_code=True`` so that both do the
same work: their sample swap and double softmax (the paper's single softmax costs the same). Both draw the
same children: ``SameChildren`` draws ours in their order from the same seed and the same policies, and
``test_ednas_same_children_same_numbers`` checks that the two then give the same logits, the same weights
after a weights step and the same policies and baseline after a policy step.

Their code was written for PyTorch 0.3; the shims, kept here and nowhere else: ``.cuda()`` calls return the
tensor on a machine without CUDA (``measure.cuda_calls_stay_on_device``), and their log-probabilities are
1-element tensors, as PyTorch 0.3's losses were, so that their ``torch.cat`` of them runs (``_Loss1``).
Their ``train_search.py`` itself does not parse on Python 3 (``cuda(async=True)``), so the two loop bodies
are written out here from it. On current PyTorch their ``optimizer.zero_grad()`` sets gradients to None,
so their unsampled operations take no SGD step either, as ours.

Time: the mean over the same seeds after a warm-up step; ``extra_info.speedup`` = their time / ours. Peak
memory: each side in a fresh process (``measure.py``); ``memory_ratio`` = ours / theirs.

Run (their code is read from a checkout, never copied here)::

    mkdir -p /tmp/ednas && git --git-dir=<mirror of logue311/EDNAS> archive HEAD EDNAS_on_CIFAR-10 \
        EDNAS_on_ImageNet_horovod | tar -x -C /tmp/ednas
    EDNAS_CODE=/tmp/ednas python -m pytest benchmarks/test_ednas_speed.py -p no:cacheprovider -s

Without ``EDNAS_CODE`` the file is skipped.
"""
import contextlib
import io
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

CODE = os.environ.get("EDNAS_CODE")
if not CODE:
    pytest.skip("EDNAS_CODE is not set: give it a checkout of logue311/EDNAS to compare with",
                allow_module_level=True)

from nas_zoo.search import BiLevel, Ednas, SearchConfig, with_defaults  # noqa: E402
from nas_zoo.search.ednas import OPERATIONS, CellSample, input_pairs  # noqa: E402
from nas_zoo.search.supernet import num_edges  # noqa: E402

from measure import DEVICE, cuda_calls_stay_on_device, load_authors, mean_seeded_time, peak_memory  # noqa: E402
from measure import report_peak, seeded  # noqa: E402

#: the paper's search shape (init channels, cells, batch, image size) and a small one for the exact check
PAPER, SMALL = (16, 8, 128, 32), (8, 5, 4, 16)
CLASSES, NODES, ROUNDS = 10, 4, 3
AUTHORS = load_authors(Path(CODE) / "EDNAS_on_CIFAR-10", ("genotypes", "operations", "model_search", "architect"),
                       "_ednas_authors")
assert list(AUTHORS.genotypes.PRIMITIVES) == OPERATIONS, "their operation order is not ours"


class _Loss1(nn.CrossEntropyLoss):
    """PyTorch 0.3's losses were 1-element tensors; their ``torch.cat`` of the log-probabilities needs it."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(input, target).view(1)


AUTHORS.model_search.nn = types.SimpleNamespace(**{**vars(nn), "CrossEntropyLoss": _Loss1})


class SameChildren(Ednas):
    """Our sampler drawing in their order (``sample_new_architecture``): each node's input pair, the normal
    cell's then the reduction cell's, node by node; then the operation of each chosen edge, the normal cell's
    edges first. From the same seed and the same policies both sides run the same child."""

    def sample(self, model):
        policies = {t: model.arch.of(t) for t in ("normal", "reduce")}
        pairs = {t: [] for t in policies}
        for i in range(1, model.nodes):
            for t, policy in policies.items():
                pairs[t].append(int(torch.multinomial(policy[f"inputs{i}"].detach().softmax(-1), 1)))
        child = {}
        for t, policy in policies.items():
            edges = CellSample(tuple(pairs[t]), ()).edges()
            ops = [int(torch.multinomial(policy["alphas"][e].detach().softmax(-1), 1)) for e in edges]
            child[t] = CellSample(tuple(pairs[t]), tuple(ops))
        return child


def _batches(shape):
    """A batch for the weights and one for the policies."""
    _, _, batch, size = shape
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, size, size, generator=generator).to(DEVICE),
             torch.randint(0, CLASSES, (batch,), generator=generator).to(DEVICE)) for _ in range(2)]


def _policy_pairs(theirs, ours):
    """(ours, theirs) for every policy vector: their ``alphas_*`` and ``edge_alphas_*[i - 1]`` are our
    ``alphas`` and ``inputs{i}``."""
    names = {f"alphas.{t}": getattr(theirs, f"alphas_{t}") for t in ("normal", "reduce")}
    names.update({f"inputs{i}.{t}": getattr(theirs, f"edge_alphas_{t}")[i - 1] for i in range(1, NODES)
                  for t in ("normal", "reduce")})
    return [(p, names[name]) for name, p in ours.arch.named_parameters()]


def _networks(shape, channels_last: bool = True):
    """Their supernet and ours with the same weights, buffers and policies (the paper's settings)."""
    C, layers, _, _ = shape
    criterion = nn.CrossEntropyLoss()
    torch.manual_seed(0)
    with cuda_calls_stay_on_device():
        theirs = AUTHORS.model_search.Network(C, CLASSES, layers, criterion).to(DEVICE)
    algorithm = SameChildren(authors_code=True)
    config = with_defaults(algorithm, SearchConfig(init_channels=C, layers=layers, channels_last=channels_last,
                                                   device=DEVICE))
    assert (config.batch_size, config.lr, config.nesterov, config.weight_decay, config.grad_clip,
            config.arch_lr) == (PAPER[2], 0.05, True, 3e-4, 5.0, 3.5e-4)
    ours = algorithm.network(config, CLASSES).to(DEVICE)
    mine = [v for k, v in ours.state_dict().items() if not k.startswith("arch.") and k != "baseline"]
    their = list(theirs.state_dict().values())
    assert [v.shape for v in mine] == [v.shape for v in their]
    with torch.no_grad():
        for a, b in [*zip(mine, their), *_policy_pairs(theirs, ours)]:
            a.copy_(b)
    return theirs, criterion, (algorithm, config, ours)


def _authors_steps(theirs, criterion, shape):
    """Their weights step (``train`` body) and policy step (``train_arch`` body), each on its batch."""
    args = types.SimpleNamespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3.5e-4, arch_weight_decay=1e-3)
    optimizer = torch.optim.SGD(theirs.parameters(), 0.05, momentum=0.9, weight_decay=3e-4, nesterov=True)
    with cuda_calls_stay_on_device():
        architect = AUTHORS.architect.Architect(theirs, args)
    (x, y), (x_arch, y_arch) = _batches(shape)

    def weights_step():
        theirs.train()
        optimizer.zero_grad()
        with cuda_calls_stay_on_device():
            theirs.sample_new_architecture()
        logits = theirs(x)
        loss = criterion(logits, y)
        loss.backward()
        nn.utils.clip_grad_norm_(theirs.parameters(), 5)
        optimizer.step()
        return loss.item(), (logits.argmax(-1) == y).float().mean().item() * 100

    def policy_step():
        theirs.eval()
        with cuda_calls_stay_on_device():
            theirs.sample_new_architecture()
            logits = theirs(x_arch)
            architect.step(x_arch, y_arch, 0.05, optimizer, unrolled=False)
        return (logits.argmax(-1) == y_arch).float().mean().item() * 100

    return {"weights": weights_step, "policy": policy_step}, architect


def _our_steps(algorithm, config, ours, shape):
    search = BiLevel(algorithm, ours, config)
    train, arch = (search.batch(b) for b in _batches(shape))
    return {"weights": lambda: algorithm.weights_step(search, train),
            "policy": lambda: algorithm.policy_step(search, arch)}


def test_ednas_same_children_same_numbers():
    """From the same seed, weights and policies, in float64 at a small shape: the same children (their
    one-hot samples are ours), the same weights after two weights steps (Nesterov momentum included), the
    same policies and baseline after two policy steps (their double softmax is our ``authors_code``), then
    the same logits in train and eval mode. (In float32 the two differ by 1e-7 after a step, as summation
    orders do, and training amplifies that about 40-fold a step.)"""
    torch.set_default_dtype(torch.float64)
    try:
        theirs, criterion, (algorithm, config, ours) = _networks(SMALL, channels_last=False)
        their_steps, architect = _authors_steps(theirs, criterion, SMALL)
        our_steps = _our_steps(algorithm, config, ours, SMALL)
        x = _batches(SMALL)[0][0]
    finally:
        torch.set_default_dtype(torch.float32)
    assert [list(theirs.edge_comb_dict[i - 1].values()) for i in range(1, NODES)] == [
        input_pairs(i) for i in range(1, NODES)]
    for kind in ("weights", "policy"):
        for seed in (1, 2):
            seeded(their_steps[kind], seed)
            seeded(our_steps[kind], seed)
            for t, cell in ours.child.items():
                one_hot = torch.zeros(num_edges(NODES), len(OPERATIONS))
                one_hot[cell.edges(), list(cell.ops)] = 1
                assert torch.equal(getattr(theirs, f"sampled_weight_{t}").cpu(), one_hot), (kind, seed, t)
        for a, b in [*zip(ours.weights(), theirs.parameters()), *_policy_pairs(theirs, ours)]:
            assert a.dtype == torch.float64 and torch.allclose(a, b, rtol=1e-12, atol=1e-14), kind
    assert ours.baseline.item() == pytest.approx(architect.baseline.item(), abs=1e-12)
    for mode in (True, False):
        theirs.train(mode)
        ours.train(mode)
        with torch.no_grad():
            assert torch.allclose(ours(x), theirs(x), rtol=1e-12, atol=1e-14)


def test_ednas_imagenet_supernets_same_size():
    """Our ImageNet search supernet (5 nodes, the width-C stem without affine BN) has the weights and buffers
    of theirs (``EDNAS_on_ImageNet_horovod/model_search.py``), tensor by tensor, at C=8 and 5 cells."""
    folder = Path(CODE) / "EDNAS_on_ImageNet_horovod"
    imagenet = load_authors(folder, ("genotypes", "operations", "model_search"), "_ednas_imagenet_authors")
    with cuda_calls_stay_on_device(), contextlib.redirect_stdout(io.StringIO()):  # their cells print widths
        theirs = imagenet.model_search.Network(8, 1000, 5, nn.CrossEntropyLoss())
    algorithm = Ednas()
    ours = algorithm.network(with_defaults(algorithm, SearchConfig(dataset="imagenet", init_channels=8, layers=5)),
                             1000)
    mine = [v.shape for k, v in ours.state_dict().items() if not k.startswith("arch.") and k != "baseline"]
    assert mine == [v.shape for v in theirs.state_dict().values()]
    assert sum(p.numel() for p in ours.weights()) == sum(p.numel() for p in theirs.parameters())


def _sides(kind: str, channels_last: bool):
    """Both sides' step of ``kind`` at the paper's shape, from the same weights and policies."""
    theirs, criterion, ours = _networks(PAPER, channels_last)
    return _authors_steps(theirs, criterion, PAPER)[0][kind], _our_steps(*ours, PAPER)[kind]


@pytest.mark.parametrize("kind", ["weights", "policy"])
def test_ednas_step_against_authors(benchmark, kind):
    their_step, our_step = _sides(kind, channels_last=True)
    their_time = mean_seeded_time(their_step, ROUNDS)
    seeded(our_step, 1000)
    seeds = iter(range(ROUNDS))

    def reseed():
        torch.manual_seed(next(seeds))
    benchmark.pedantic(our_step, setup=reseed, rounds=ROUNDS, iterations=1)
    our_time = benchmark.stats.stats.mean
    del their_step, our_step
    their_memory, our_memory = (peak_memory(__file__, side, kind) for side in ("authors", "ours"))
    C, layers, batch, _ = PAPER
    benchmark.extra_info.update(device=DEVICE, step=kind, batch=batch, cells=layers, C=C,
                                speedup=their_time / our_time, ours_s=our_time, authors_s=their_time,
                                ours_peak_bytes=our_memory, authors_peak_bytes=their_memory,
                                memory_ratio=our_memory / their_memory)
    print(f"\nEDNAS {kind} step (C={C}, {layers} cells, batch {batch}, {DEVICE}): ours {our_time:.3f} s, authors "
          f"{their_time:.3f} s, speedup {their_time / our_time:.2f}x; peak memory ours {our_memory / 2**20:.0f} MiB, "
          f"authors {their_memory / 2**20:.0f} MiB, ratio {our_memory / their_memory:.2f}")


if __name__ == "__main__":  # one side's peak memory, in its own process: SIDE KIND
    side, kind = sys.argv[1:3]
    their_step, our_step = _sides(kind, channels_last=True)
    report_peak(their_step if side == "authors" else our_step)
