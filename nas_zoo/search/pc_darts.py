"""PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search (Xu et al., ICLR 2020).

Partial channels (Sec. 3.2, eq. 2): each edge sends 1/K of its channels (K = 4 on CIFAR) through the
operations and the rest around them, then shuffles the channels. Edge normalisation (Sec. 3.3, eq. 3-4):
each node weights its incoming edges by a softmax over ``beta``, and the genotype ranks edges by the
operation weights times these edge weights. Defaults are the authors' ``train_search.py``: batch 256,
lr 0.1 -> 0, alpha's Adam lr 6e-4, and alpha and beta frozen for the first 15 of the 50 epochs.
"""
from .loop import SearchAlgorithm, SearchConfig
from .supernet import SearchNetwork


class PcDarts(SearchAlgorithm):
    name = "pc-darts"
    defaults = dict(epochs=50, batch_size=256, lr=0.1, lr_min=0.0, arch_lr=6e-4, arch_warmup=15)

    def __init__(self, k: int = 4):
        super().__init__(k=k)

    @property
    def label(self) -> str:
        return "pc_darts"

    def network(self, config: SearchConfig, num_classes: int) -> SearchNetwork:
        return SearchNetwork(config.init_channels, num_classes, config.layers, config.nodes,
                             partial=self.options["k"], edge_norm=True)
