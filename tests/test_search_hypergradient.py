"""DARTS second order: the finite-difference hypergradient (eq. 7-8) against the exact one (autograd
through one SGD step of the weights) on a tiny supernet in float64.

The difference quotient is taken with a small radius (r = 1e-6 instead of the paper's 1e-2): the supernet
is piecewise smooth (ReLU, max-pool), and at r = 1e-2 the probes w+- cross kinks of a random-init tiny
network, so there the approximation itself, not the code, is off (we measured 30-250 % relative error
at r = 1e-2, 4e-10 at r = 1e-6).
"""
import torch
import torch.nn.functional as F
from torch.func import functional_call

from nas_zoo.search import Darts, Search, SearchConfig
from nas_zoo.search.darts import unrolled_gradient


def _exact_hypergradient(search, train, valid, xi):
    """d/d alpha of L_val(w - xi (grad_w L_train(w, alpha) + wd w), alpha), through the step."""
    model = search.model
    names = [n for n, _ in model.named_parameters() if not n.startswith("arch.")]
    weights, alphas = search.weights, search.alphas
    loss = F.cross_entropy(model(train[0]), train[1])
    grads = torch.autograd.grad(loss, weights, create_graph=True)
    decay = search.config.weight_decay
    unrolled = {n: w - xi * (g + decay * w) for n, w, g in zip(names, weights, grads)}
    loss_val = F.cross_entropy(functional_call(model, unrolled, (valid[0],)), valid[1])
    return torch.autograd.grad(loss_val, alphas)


def test_unrolled_hypergradient_matches_autograd(tiny_cifar, tmp_path):
    torch.manual_seed(0)
    config = SearchConfig(data_dir=str(tiny_cifar), init_channels=4, layers=3, num_workers=0, device="cpu")
    search = Search(Darts(order=2), config, tmp_path / "out", progress=False).bilevel
    search.model.double()
    with torch.no_grad():
        for alpha in search.alphas:
            alpha.normal_(0, 0.5)  # away from the uniform start, so the second-order term is not tiny
    train = torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,))
    valid = torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,))
    xi = 0.1
    before = [w.detach().clone() for w in search.weights]

    exact = _exact_hypergradient(search, train, valid, xi)
    approx = unrolled_gradient(search, train, valid, xi, r=1e-6)
    first_order = torch.autograd.grad(F.cross_entropy(search.model(valid[0]), valid[1]), search.alphas)

    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    exact, approx, first_order = flat(exact), flat(approx), flat(first_order)
    error = (approx - exact).norm() / exact.norm()
    second_order_term = (exact - first_order).norm() / exact.norm()
    assert second_order_term > 1e-2, "the test cannot tell first from second order"
    assert error < 1e-6, (error, second_order_term)
    # the virtual step and the w+- probes leave the weights as they were
    assert all(torch.equal(w, b) for w, b in zip(search.weights, before))
