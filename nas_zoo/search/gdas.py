"""GDAS: Searching for a Robust Neural Architecture in Four GPU Hours (Dong & Yang, CVPR 2019).

Each edge samples one operation per forward pass with the Gumbel-max trick and computes only it; the
gradient reaches alpha through the Gumbel-softmax relaxation at temperature tau (Sec. 3.2, eq. 3-7;
``supernet.GumbelHard``). tau decays linearly from 10 to 0.1 over the search (Sec. 4.1). GDAS-FRC
(Sec. 3.3) searches the normal cell only, with the hand-designed reduction cell fixed. Defaults are the
authors' (``xautodl``): 240 epochs, batch 64, weights first then alpha in every step; the genotype keeps
each node's two strongest (operation, input) pairs.
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
