"""B-PC-DARTS (BNAS-v2-PC): PC-DARTS on the broad scalable supernet (Ding et al., "Faster Gradient-based NAS
Pipelines Using Broad Scalable Architecture"; the authors' ``BNASv2PC/train_search_b.py`` and
``model_search_b.py`` at d649dfd).

Partial channels (K=4, channel shuffle, max-pooled bypass on stride-2 edges) and edge normalisation
(``pc_darts.PartialChannels``) on every edge of ``broad.BroadSearchNetwork``; the genotype ranks edges by
operation weight times edge weight, as PC-DARTS. Defaults are the authors' script: 50 epochs, batch 512,
lr 0.2 cosine to 0, alpha by Adam 6e-4, alpha and beta frozen for the first 15 epochs (``if epoch>=15``).
On ImageNet, ``train_search_imagenet_b.py`` and ``model_search_imagenet_b.py``: PC-DARTS's ImageNet search
(``pc_darts.py``) with the broad supernet's 2 convolution blocks, batch 512 and lr 0.2; the genotype is
evaluated in the ImageNet BCNN (C=44, 6 cells, 2 enhancement cells, ``train_imagenet_b.py``).
"""
from .algorithm import Option, SearchConfig, network_stem
from .broad import BroadSearchNetwork
from .pc_darts import PartialChannels, PcDarts


class BPcDarts(PcDarts):
    name = "b-pc-darts"
    defaults = dict(epochs=50, batch_size=512, layers=2, lr=0.2, lr_min=0.0, arch_lr=6e-4, arch_warmup=15)
    options = PcDarts.options + (Option("enhancement_layers", 1, "enhancement blocks of the broad supernet"),)
    evaluation = dict(network="bcnn", C=48, layers=6, enhancement_layers=2)  # BNASv2PC/train_b.py
    imagenet = dict(PcDarts.imagenet, layers=2, batch_size=512, lr=0.2,
                    evaluation=dict(network="bcnn_imagenet", C=44, layers=6, enhancement_layers=2))

    @property
    def label(self) -> str:
        return "b_pc_darts"

    def network(self, config: SearchConfig, num_classes: int, stage: int = 0, candidates=None):
        return BroadSearchNetwork(config.init_channels, num_classes, config.layers, self.enhancement_layers,
                                  config.nodes, PartialChannels(self.k), candidates, stem=network_stem(config))
