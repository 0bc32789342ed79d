"""GDAS: Searching for a Robust Neural Architecture in Four GPU Hours (Dong & Yang, CVPR 2019).

Each edge samples one operation per forward pass with the Gumbel-max trick and computes only it; the
gradient reaches alpha through the Gumbel-softmax relaxation at temperature tau (Sec. 3.2, eq. 3-7;
``GumbelHard``). tau decays linearly from 10 to 0.1 over the search (Sec. 4.1). GDAS-FRC (Sec. 3.3)
searches the normal cell only, with the hand-designed reduction cell fixed. Every step updates the weights
first, then alpha; the genotype keeps each node's two strongest (operation, input) pairs.
Defaults: 240 epochs, batch 64. The authors' released search config (NAS-Projects
``configs/search-opts/GDAS-NASNet-CIFAR.config``) differs: 250 epochs, batch 256, weight decay 5e-4 with
Nesterov momentum; pass ``--epochs``/``--batch-size`` to follow it.

The supernet is the authors' ``NASNetworkGDAS`` (and ``NASNetworkGDAS_FRC``): pooling without DARTS's
batch norm after it, BN + ReLU before the global pooling. Their convolutions before a non-affine batch norm
carry biases, which that batch norm's mean subtraction cancels; ours leave them out. With xautodl's weights
and the same samples our supernet computes xautodl's logits (``benchmarks/test_search_speed.py``). Note that
xautodl's ``N=2`` builds 6 cells (``--layers 6``), not the 3N+2 = 8 of DARTS's supernet (our default).

Recurrent cells (``--dataset ptb``, the run is ``recurrent.LanguageSearch``): DARTS's recurrent search cell
with the Gumbel sample of every step's edges, tau annealed linearly from 10 to 1 over 200 epochs (the
authors' ``scripts-nas-rnn/search-accelerate.sh 0 200 10 1``), the other settings DARTS's
(``PTB_DEFAULTS``), and DARTS's recurrent derivation. The paper's method is the hard sample (forward one-hot,
straight-through gradient), our default; the authors' released RNN search mixed every operation with the
soft sample ``softmax((log_softmax(alpha) + g) / tau)``: ``--soft`` runs that.
"""
from typing import Any, Dict, List, Mapping, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models.cells import FixedReductionCell
from ..models.ops import make_op
from .algorithm import Option, SearchAlgorithm, SearchConfig, cell_fields, without_none
from .supernet import Mix, SearchNetwork, Softmax, node_slices


class GumbelHard(Softmax):
    """GDAS eq. 3-7: sample one operation per edge, compute only it, differentiate through a soft sample.

    Forward: ``h = one_hot(argmax(log softmax(alpha) + g))`` with Gumbel noise ``g``; backward: the
    gradient of ``softmax((log softmax(alpha) + g) / tau)`` (straight-through, ``h - p.detach() + p``).
    The sample is shared by every cell of one type in a forward pass, as in the authors' code.
    """

    def __init__(self, tau: float = 10.0):
        self.tau = tau

    def gumbel_noise(self, alpha: torch.Tensor) -> torch.Tensor:
        """-log(Exp(1)) noise shaped as ``alpha``: from ``generator`` where the run set one (drawn on its device,
        the CPU, so that a seed samples the same operations on every device and rank), else from the global
        stream of alpha's device."""
        device = alpha.device if self.generator is None else self.generator.device
        noise = torch.empty(alpha.shape, dtype=alpha.dtype, device=device).exponential_(generator=self.generator)
        return -noise.log().to(alpha.device)

    def soft_sample(self, alpha: torch.Tensor) -> torch.Tensor:
        """softmax((log softmax(alpha) + g) / tau), Gumbel noise g drawn per row."""
        while True:  # resample on the (rare) overflow, as the authors do
            gumbels = self.gumbel_noise(alpha)
            probs = ((alpha.log_softmax(-1) + gumbels) / self.tau).softmax(-1)
            if torch.isfinite(gumbels).all() and torch.isfinite(probs).all():
                return probs

    def __call__(self, params: Mapping[str, torch.Tensor], nodes: int) -> Mix:
        alpha = params["alphas"]
        probs = self.soft_sample(alpha)
        index = probs.argmax(-1)
        hard = F.one_hot(index, alpha.shape[-1]).to(probs) - probs.detach() + probs
        return Mix(hard, index.tolist())


class GumbelSoft(GumbelHard):
    """The authors' released RNN search: every operation, weighted by the soft Gumbel-softmax sample."""

    def __call__(self, params: Mapping[str, torch.Tensor], nodes: int) -> Mix:
        return Mix(self.soft_sample(params["alphas"]))


def gdas_operation(name: str, C: int, stride: int) -> nn.Module:
    """A candidate of the GDAS authors' supernet: no affine BN, and no BN after pooling."""
    return make_op(name, C, stride, affine=False, pool_bn=False)


class GdasNetwork(SearchNetwork):
    """``NASNetworkGDAS``: the DARTS supernet with Gumbel edges, GDAS's operations and BN + ReLU before
    the global pooling."""

    def make_head(self, C: int) -> nn.Module:
        return nn.Sequential(nn.BatchNorm2d(C), nn.ReLU())


class GdasFrcNetwork(GdasNetwork):
    """``NASNetworkGDAS_FRC``: the fixed reduction cell (searched in its non-affine form) at both reductions."""

    def make_cell(self, C_prev_prev, C_prev, C, reduction, reduction_prev, operation) -> nn.Module:
        if reduction:
            return FixedReductionCell(C_prev_prev, C_prev, C, reduction_prev, affine=False)
        return super().make_cell(C_prev_prev, C_prev, C, reduction, reduction_prev, operation)


def strongest_pairs(weights: torch.Tensor, candidates, nodes: int) -> List[Tuple[str, int]]:
    """The authors' ``NASNetworkGDAS.genotype``: per node the two strongest (operation, input) pairs other
    than ``none``; both may leave the same input. Ties go to the earlier edge, then operation."""
    weights = without_none(weights, candidates)
    cell = []
    for rows in node_slices(nodes):
        pairs = sorted(((e, k) for e in range(rows.start, rows.stop) for k in range(weights.shape[1])),
                       key=lambda ek: -weights[ek].item())[:2]
        cell += [(candidates[e][k], e - rows.start) for e, k in pairs]
    return cell


class Gdas(SearchAlgorithm):
    name = "gdas"
    defaults = dict(epochs=240, batch_size=64, lr=0.025, lr_min=0.001, arch_lr=3e-4)
    options = (Option("frc", False, "search the normal cell only, with GDAS's fixed reduction cell (GDAS-FRC)"),
               Option("tau_max", 10.0, "Gumbel-softmax temperature at the first epoch"),
               Option("tau_min", 0.1, "temperature at the last epoch (linear decay)"),
               Option("soft", False, "mix every operation by the soft Gumbel-softmax sample (the authors' released "
                                     "RNN search) instead of computing the hard sample's"))
    ptb = dict(epochs=200, tau_min=1.0)  # scripts-nas-rnn/search-accelerate.sh: 200 epochs, tau 10 -> 1

    @property
    def label(self) -> str:
        return "gdas_frc" if self.frc else "gdas"

    def mixing(self) -> GumbelHard:
        return (GumbelSoft if self.soft else GumbelHard)(self.tau_max)

    def network(self, config: SearchConfig, num_classes: int, stage: int = 0, candidates=None) -> SearchNetwork:
        network = GdasFrcNetwork if self.frc else GdasNetwork
        return network(config.init_channels, num_classes, config.layers, config.nodes, self.mixing(), candidates,
                       operation=gdas_operation)

    def recurrent_mixing(self) -> GumbelHard:
        return self.mixing()

    def start_epoch(self, model: SearchNetwork, config: SearchConfig, stage: int, epoch: int) -> Dict[str, Any]:
        model.mixing.tau = self.tau_max - (self.tau_max - self.tau_min) * epoch / max(config.epochs - 1, 1)
        return {"tau": model.mixing.tau}

    def step(self, search, train, valid):
        """The weights first, then alpha (the authors' ``search_func``)."""
        result = search.weights_step(train)
        if valid is not None:
            search.arch_step(self.arch_gradient(search, train, valid))
        return result

    def derive(self, model: SearchNetwork):
        cells = {t: strongest_pairs(model.arch.alphas[t].softmax(-1), model.candidates[t], model.nodes)
                 for t in model.cell_types}
        return cell_fields(cells, model.nodes), {}
