"""The collapse monitor of a search: the dominant eigenvalue of the Hessian of the validation loss with respect
to the architecture parameters, the skip-connections of the derived normal cell and the entropy of every edge's
operation weights, per epoch; and DARTS-ES, early stopping when the eigenvalue grows.

RobustDARTS (Zela et al., "Understanding and Robustifying Differentiable Architecture Search", ICLR 2020,
Sec. 4; automl/RobustDARTS at 3dec3fe: ``src/search/analyze.py`` ``Analyzer.compute_Hw``, ``train_search.py``
``train``, ``src/utils.py`` ``EVLocalAvg``) shows that a DARTS search that collapses into parameter-free
operations does so while the dominant eigenvalue of nabla^2_alpha L_valid grows, and stops the search then.

**The eigenvalue.** Their code builds the whole Hessian, one double backward per architecture parameter (224 on
the DARTS space), and keeps the largest of ``numpy.linalg.eigvals``. We reach the same eigenvalue from a few
Hessian-vector products, each one double backward (H v = d(g . v) / d alpha, g = dL/d alpha built once with
``create_graph``). Not by plain power iteration: it converges to the eigenvalue of largest magnitude at the rate
|lambda_2 / lambda_1|, and not at all when the most negative eigenvalue is as large as the largest (for
eigenvalues +1 and -1 and a start a e_1 + b e_2 its Rayleigh quotient stays a^2 - b^2); these Hessians are
indefinite, with extremes of about the same size (lambda_min / lambda_max is -0.46, -0.89 and -1.28 in the tests'
tiny DARTS, GDAS and PC-DARTS supernets). The Lanczos method runs on the same products but keeps the whole
Krylov space of v, H v, H^2 v ... instead of its last vector: its estimate, the largest Ritz value, is never
below the power iterate's Rayleigh quotient after as many products, and reaches lambda_max whatever the signs.

**The loss**, as theirs: the supernet in train mode (batch norm on the batch's statistics, as in the
architecture step), the algorithm's own loss (``BiLevel.loss``), on batches of the architecture part. Theirs is
the last batch alpha saw in the epoch, a random one; ours are the same ``batches`` batches at every measurement
(drawn by the run's seed), so that the series follows alpha, not the sample. Their Hessian adds
``arch_weight_decay`` to its diagonal (the gradient of alpha's L2 term), which shifts every eigenvalue by that
constant (1e-3); we report the validation loss's, the paper's nabla^2_alpha L_valid. What the forward pass
draws at random (GDAS's Gumbel sample, P-DARTS's dropout after skip-connections, the language model's dropout
masks) is drawn once, from forked RNG streams seeded by the run's seed: every product of one measurement
differentiates the same graph, so for GDAS the eigenvalue is that of the straight-through loss of one fixed
sample, the function whose gradient alpha's step follows (not of the softmax relaxation). PC-DARTS's channel
split and shuffle are fixed functions and do not change either. The monitor leaves the search as it was: the
run's RNG streams are forked, the batch norms' running statistics restored, the weights frozen; a search
takes the same steps with and without it (``tests/test_search_hessian.py``).

**DARTS-ES** (Sec. 4.3; ``EVLocalAvg``): the eigenvalues of a stage are smoothed by a local average over
``window`` measurements centred on each (the window is cut at the stage's start); after each measurement the
newest full average (``window // 2`` measurements back) is compared with the one ``lookback`` measurements
before it, and when it has grown by more than ``threshold`` the search stops and returns the genotype of the
earlier one's epoch. ``paper``: lambda(i - k) / lambda(i) < 0.75 with k = 5 (Sec. 4.3), so a growth by
1 / 0.75 and 5 measurements back (k = 5 epochs with an eigenvalue every epoch, ``--hessian-every 1``).
``code``: ``EVLocalAvg.early_stop`` at their defaults (``args.py``: ``--factor 1.3 --delta 4 --window 5``), a
growth by 1.3 and 4 measurements back, 8 epochs at their scripts' eigenvalue every 2 epochs
(``--report_freq_hessian 2``). Both, as their code: no stop at a stage's last epoch, and no epoch before 10
chosen (``--es_start_epoch``); nor, here, one before alpha moved (``--arch-warmup``). A search with stages
(P-DARTS) watches each stage apart and ends when one stops.
"""
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from ..harness import distributed
from .bilevel import frozen

if TYPE_CHECKING:
    from .algorithm import SearchAlgorithm, SearchConfig
    from .loop import Search

Vector = Sequence[torch.Tensor]  # one tensor per architecture parameter
#: the Lanczos method's limit on Hessian-vector products, and its stopping rule: the residual of the largest
#: Ritz pair within this fraction of the Ritz value (which is then that close to an eigenvalue)
STEPS, TOLERANCE = 20, 1e-3


class Eigenvalue(NamedTuple):
    value: float
    products: int  # Hessian-vector products it took
    converged: bool


def hessian_vector_products(loss: torch.Tensor, params: Vector) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> H v for the Hessian of ``loss`` in ``params``, on flat float64 CPU vectors (the parameters'
    elements in order): each product one double backward through the gradient's graph, built once and kept.
    Under torchrun ``loss`` is each rank's share of the batches and the products are averaged over the ranks:
    the Hessian of the whole batches' loss, the same vectors, and so the same eigenvalue, on every rank."""
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True) if loss.requires_grad else []
    sizes = [p.numel() for p in params]

    def product(v: torch.Tensor) -> torch.Tensor:
        parts = [x.view_as(p).to(p) for x, p in zip(v.split(sizes), params)]
        dot = sum((g * x).sum() for g, x in zip(grads, parts) if g is not None and g.requires_grad)
        if not torch.is_tensor(dot) or not dot.requires_grad:  # the loss is at most linear in them: H = 0
            return torch.zeros_like(v)
        rows = torch.autograd.grad(dot, params, retain_graph=True, allow_unused=True)
        rows = [torch.zeros_like(p) if r is None else r for p, r in zip(params, rows)]
        return torch.cat([r.flatten() for r in distributed.average(rows)]).to(v)
    return product


def lanczos(product: Callable[[torch.Tensor], torch.Tensor], dim: int, generator: torch.Generator,
            steps: int = STEPS, tol: float = TOLERANCE) -> Eigenvalue:
    """The largest eigenvalue of a symmetric ``dim`` x ``dim`` matrix given by ``product`` (v -> H v): the
    largest Ritz value of the Krylov space of v, H v, H^2 v ... from a random unit v, each basis vector
    orthogonalised against all before it (twice, as one Gram-Schmidt pass loses orthogonality in floating
    point). Stops when the Ritz pair's residual, beta_m |s_m|, is within ``tol`` of the value."""
    basis = [torch.randn(dim, generator=generator, dtype=torch.float64)]
    basis[0] /= basis[0].norm()
    diagonal: List[float] = []
    off: List[float] = []
    for m in range(1, min(steps, dim) + 1):
        w = product(basis[-1])
        diagonal.append(torch.dot(w, basis[-1]).item())
        for _ in range(2):
            w = w - torch.stack(basis).T @ (torch.stack(basis) @ w)
        beta = w.norm().item()
        sub = torch.tensor(off, dtype=torch.float64)
        T = torch.diag(torch.tensor(diagonal, dtype=torch.float64)) + torch.diag(sub, 1) + torch.diag(sub, -1)
        values, vectors = torch.linalg.eigh(T)
        top, residual = values[-1].item(), beta * abs(vectors[-1, -1].item())
        if residual <= tol * abs(top) or beta == 0.0 or m == dim:
            return Eigenvalue(top, m, True)
        off.append(beta)
        basis.append(w / beta)
    return Eigenvalue(top, min(steps, dim), False)


def dominant_eigenvalue(loss: torch.Tensor, params: Vector, seed: int = 0, steps: int = STEPS,
                        tol: float = TOLERANCE) -> Eigenvalue:
    """The largest eigenvalue of the Hessian of ``loss`` in ``params`` (RobustDARTS's ``max(eigvals(H))``),
    by ``lanczos`` on Hessian-vector products from a start drawn with ``seed``."""
    product = hessian_vector_products(loss, params)
    generator = torch.Generator().manual_seed(seed)
    return lanczos(product, sum(p.numel() for p in params), generator, steps, tol)


def validation_eigenvalue(run: "Search", batches: int = 1) -> Eigenvalue:
    """The dominant eigenvalue of the Hessian of the run's validation loss with respect to its architecture
    parameters, on ``run.fixed_batches(batches)``, with the run left as it was (module docstring)."""
    model, bilevel = run.model, run.bilevel
    device = bilevel.device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    buffers, training = [b.detach().clone() for b in model.buffers()], model.training
    sampling = model.mixing.generator  # the architecture's samples (GDAS's): the run's, the same on every rank
    try:
        with torch.random.fork_rng(devices=cuda), frozen(bilevel.weights):
            torch.manual_seed(run.config.seed)
            model.mixing.generator = torch.Generator().manual_seed(run.config.seed)
            model.train()
            data = run.fixed_batches(batches)
            loss = sum(bilevel.loss(bilevel.batch(b)) for b in data) / len(data)
            return dominant_eigenvalue(loss, bilevel.alphas, run.config.seed, STEPS, TOLERANCE)
    finally:
        model.mixing.generator = sampling
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        model.train(training)


def edge_entropy(model) -> Dict[str, List[float]]:
    """Per searched cell type, the entropy (nats) of each edge's softmax over its candidate operations: log 8 =
    2.079 uniform over the DARTS space, 0 when one operation takes all the weight."""
    entropy = {}
    for t in model.cell_types:
        logp = model.arch.alphas[t].detach().double().log_softmax(-1)
        entropy[t] = [round(h, 4) for h in (-(logp.exp() * logp).sum(-1)).tolist()]
    return entropy


def due(config: "SearchConfig", epoch: int) -> bool:
    """Whether ``epoch`` (0-based, in its stage) has an eigenvalue: every K-th from the first, and the last
    (``train_search.py``: ``epoch % report_freq_hessian == 0 or epoch == epochs - 1``)."""
    return bool(config.hessian_every) and (epoch % config.hessian_every == 0 or epoch == config.epochs - 1)


def monitor(run: "Search", epoch: int) -> Dict[str, Any]:
    """The record's collapse figures for the epoch just trained: ``skip_connections`` (the derived normal cell's),
    ``edge_entropy`` and, when ``due``, ``hessian_eigenvalue`` with the products and seconds it took."""
    if not run.algorithm.differentiable:
        return {}
    fields, _ = run.derive()
    notes: Dict[str, Any] = {}
    if fields.get("normal"):
        notes["skip_connections"] = sum(op == "skip_connect" for op, _ in fields["normal"])
    notes["edge_entropy"] = edge_entropy(run.model)
    if due(run.config, epoch):
        start = time.perf_counter()
        eigen = validation_eigenvalue(run)
        notes.update(hessian_eigenvalue=eigen.value, hessian_products=eigen.products,
                     hessian_time_s=round(time.perf_counter() - start, 3))
    return notes


# -- DARTS-ES ---------------------------------------------------------------------------------------------------
class Rule(NamedTuple):
    window: int  # measurements in a local average
    lookback: int  # measurements between the two averages compared
    threshold: float  # the growth that stops the search
    first_epoch: int  # the earliest epoch whose genotype may be returned


RULES = {"paper": Rule(5, 5, 1 / 0.75, 10), "code": Rule(5, 4, 1.3, 10)}


def check(algorithm: "SearchAlgorithm", config: "SearchConfig") -> None:
    """Refuse a monitor or an early stop the run cannot have, with the flag to change."""
    if config.early_stop not in ("off", *RULES):
        raise ValueError(f"--early-stop {config.early_stop!r}: choose off, {' or '.join(RULES)}")
    if not algorithm.differentiable and (config.hessian_every or config.early_stop != "off"):
        raise ValueError(f"{algorithm.name} samples children from policies and has no alpha to take the Hessian of; "
                         "use --hessian-every 0 and --early-stop off")
    if config.early_stop != "off" and not config.hessian_every:
        raise ValueError(f"--early-stop {config.early_stop} watches the Hessian's eigenvalue: set --hessian-every to "
                         "a positive K")


def _local_average(values: Sequence[float], end: int, window: int) -> float:
    """The mean of the ``window`` values before ``end`` (fewer at the start), as ``EVLocalAvg`` keeps them."""
    part = values[max(0, end - window):end]
    return sum(part) / len(part)


def early_stop(history: Sequence[Dict[str, Any]], config: "SearchConfig") -> Optional[Dict[str, Any]]:
    """DARTS-ES on the eigenvalues ``history`` holds (module docstring): the record's ``early_stop`` (the epoch
    whose genotype is the result, 0-based as the record's epochs, its stage, and the reason, in the 1-based
    epochs of the progress lines), or None while the search goes on. A function of the history alone, so a
    resumed run decides as the uninterrupted one."""
    if config.early_stop == "off" or not history:
        return None
    rule, stage = RULES[config.early_stop], history[-1]["stage"]
    measured = [e for e in history if e["stage"] == stage and "hessian_eigenvalue" in e
                and e["epoch"] < config.epochs - 1]
    values = [e["hessian_eigenvalue"] for e in measured]
    n = len(measured)
    centre = n - 1 - rule.window // 2
    back = centre - rule.lookback
    if back < 0 or measured[back]["epoch"] < max(rule.first_epoch, config.arch_warmup):
        return None
    now, then = _local_average(values, n, rule.window), _local_average(values, n - rule.lookback, rule.window)
    if then <= 0 or now / then <= rule.threshold:
        return None
    epoch, around = measured[back]["epoch"], measured[centre]["epoch"]
    return {"epoch": epoch, "stage": stage, "decided_after_epoch": measured[-1]["epoch"], "rule": config.early_stop,
            "reason": f"DARTS-ES ({config.early_stop}): the local average of the dominant Hessian eigenvalue grew "
                      f"{now / then:.2f}x (threshold {rule.threshold:.3g}), from {then:.4g} around epoch {epoch + 1} "
                      f"to {now:.4g} around epoch {around + 1}; the result is the genotype of epoch {epoch + 1}"}


def stopped_genotype(run: "Search") -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """After an early stop, the genotype fields of the epoch it chose (as ``SearchAlgorithm.derive`` returns
    them, without notes: those of the last derivation describe the last epoch); None without one."""
    stop = early_stop(run.history, run.config)
    if stop is None:
        return None
    entry = next(e for e in run.history if (e["stage"], e["epoch"]) == (stop["stage"], stop["epoch"]))
    return dict(entry["genotype"]), {}
