"""GDAS: Searching for a Robust Neural Architecture in Four GPU Hours (Dong & Yang, CVPR 2019).

Each edge samples one operation per forward pass with the Gumbel-max trick and computes only it; the
gradient reaches alpha through the Gumbel-softmax relaxation at temperature tau (Sec. 3.2, eq. 3-7;
``supernet.GumbelHard``). tau decays linearly from 10 to 0.1 over the search (Sec. 4.1). GDAS-FRC
(Sec. 3.3) searches the normal cell only, with the hand-designed reduction cell fixed. Every step updates
the weights first, then alpha; the genotype keeps each node's two strongest (operation, input) pairs.
Defaults: 240 epochs, batch 64. The authors' released search config (NAS-Projects
``configs/search-opts/GDAS-NASNet-CIFAR.config``) differs: 250 epochs, batch 256, weight decay 5e-4 with
Nesterov momentum; pass ``--epochs``/``--batch-size`` to follow it.

The supernet is the authors' ``NASNetworkGDAS`` (and ``NASNetworkGDAS_FRC``): pooling without DARTS's
batch norm after it, BN + ReLU before the global pooling. Their convolutions before a non-affine batch norm
carry biases, which that batch norm's mean subtraction cancels; ours leave them out. With xautodl's weights
and the same samples our supernet computes xautodl's logits (``benchmarks/test_search_speed.py``). Note that
xautodl's ``N=2`` builds 6 cells (``--layers 6``), not the 3N+2 = 8 of DARTS's supernet (our default).
"""
from typing import Any, Dict

from .loop import SearchAlgorithm, SearchConfig
from .supernet import GumbelHard, SearchNetwork


class Gdas(SearchAlgorithm):
    name = "gdas"
    defaults = dict(epochs=240, batch_size=64, lr=0.025, lr_min=0.001, arch_lr=3e-4)
    arch_first = False
    distinct_inputs = False

    def __init__(self, frc: bool = False, tau_max: float = 10.0, tau_min: float = 0.1):
        super().__init__(frc=frc, tau_max=tau_max, tau_min=tau_min)

    @property
    def label(self) -> str:
        return "gdas_frc" if self.options["frc"] else "gdas"

    def network(self, config: SearchConfig, num_classes: int) -> SearchNetwork:
        return SearchNetwork(config.init_channels, num_classes, config.layers, config.nodes,
                             strategy=GumbelHard(self.options["tau_max"]), fixed_reduction=self.options["frc"],
                             pool_bn=False, last_bn_relu=True)

    def start_epoch(self, model: SearchNetwork, epoch: int, epochs: int) -> Dict[str, Any]:
        hi, lo = self.options["tau_max"], self.options["tau_min"]
        model.strategy.tau = hi - (hi - lo) * epoch / max(epochs - 1, 1)
        return {"tau": model.strategy.tau}
