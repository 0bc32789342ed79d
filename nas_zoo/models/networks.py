"""Evaluation networks built from a genotype.

* ``CellNetwork``: DARTS's NetworkCIFAR (``stem="cifar"``) and NetworkImageNet, the mobile setting
  (``stem="imagenet"``): a stem, then ``layers`` cells with reduction cells at 1/3 and 2/3 of the depth,
  then global pooling and a linear classifier; optionally an auxiliary head (DARTS App. A.2).
* ``BroadNetwork``: the broad convolutional network (BCNN) that B-DARTS / B-PC-DARTS evaluate
  (Ding et al., BNAS-v2, Sec. 3; BNASv2 ``model_b.py``).

Both follow timm's model contract (``forward_features``, ``forward_head``, ``get_classifier``,
``reset_classifier``, ``forward_intermediates`` and ``feature_info``); ``forward`` returns the logits
alone and ``forward_train`` returns ``(logits, auxiliary_logits)`` for the papers' training loss.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import create_classifier
from timm.models._features import feature_take_indices
from torch import nn

from ..registry.genotype import MAX_C, MAX_LAYERS, Genotype, get_genotype
from .cells import Cell, FixedReductionCell
from .ops import FactorizedReduce, ReLUConvBN

STEM_MULTIPLIER = 3  # CIFAR stem width = 3 C


class CifarStem(nn.Sequential):
    """3x3 conv to 3C + BN; it feeds both inputs of the first cell."""

    def __init__(self, in_chans: int, C: int):
        super().__init__(nn.Conv2d(in_chans, STEM_MULTIPLIER * C, 3, padding=1, bias=False),
                         nn.BatchNorm2d(STEM_MULTIPLIER * C))
        self.out_chs = STEM_MULTIPLIER * C
        self.reduction = 1  # of s1, where the cells start
        self.feature_info: List[dict] = []  # s0 == s1: no map of its own

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        s = super().forward(x)
        return s, s


class ImageNetStem(nn.Module):
    """Three stride-2 3x3 convs: s0 after two (224 -> 56), s1 after the third (56 -> 28). ``affine=False``:
    BNs without affine parameters, as EDNAS's ImageNet search supernet has them."""

    def __init__(self, in_chans: int, C: int, affine: bool = True):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_chans, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2, affine=affine),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )
        self.out_chs = C
        self.reduction = 8
        self.feature_info = [dict(num_chs=C, reduction=4, module="stem")]  # s0, 56x56 at 224

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


STEMS = {"cifar": CifarStem, "imagenet": ImageNetStem}


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier on the output of the second reduction cell (8x8 on CIFAR, 14x14 on ImageNet).

    The ImageNet head pools with stride 2 instead of 3 and, as in the DARTS experiments, has no BN after
    its 2x2 conv (a typo in the original experiments, kept by every repository but P-DARTS: ``last_bn``).
    """

    def __init__(self, C: int, num_classes: int, imagenet: bool = False, last_bn: Optional[bool] = None):
        super().__init__()
        last_bn = not imagenet if last_bn is None else last_bn
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=2 if imagenet else 3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            *([nn.BatchNorm2d(768)] if last_bn else []),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class NetworkBase(nn.Module):
    """timm's head contract, shared by the networks: global pool -> dropout -> linear."""

    def _init_head(self, num_features: int, num_classes: int, global_pool: str, drop_rate: float) -> None:
        self.num_features = self.head_hidden_size = num_features
        self.drop_rate = drop_rate
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes, global_pool)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifier (and auxiliary classifier) for ``num_classes``; 0 removes them."""
        self.num_classes = num_classes
        pool_type = global_pool if global_pool is not None else self.global_pool.pool_type
        self.global_pool, self.classifier = create_classifier(self.num_features, num_classes, pool_type=pool_type)
        if self.auxiliary_head is not None:
            self.auxiliary_head.classifier = nn.Linear(768, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.classifier(x)

    def _prune_head(self, max_index: int, prune_head: bool) -> None:
        """timm's ``prune_intermediate_layers`` tail (as resnet.py): features now end at feature ``max_index``,
        so a head sized for the last features goes, as it does on request (the auxiliary head with it)."""
        prune_end = max_index < len(self.feature_info) - 1
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.auxiliary_head = None
            self.reset_classifier(0, "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class CellNetwork(NetworkBase):
    """A chain of genotype cells: DARTS's NetworkCIFAR / NetworkImageNet.

    Reduction cells sit at ``layers // 3`` and ``2 * layers // 3``; each doubles the width. A genotype
    without a reduce cell gets GDAS's fixed reduction cell there. ``drop_path_prob`` is read at every
    forward, so a training loop can ramp it (DARTS: ``drop_path_rate * epoch / epochs``).
    """

    def __init__(self, genotype: Genotype, num_classes: int = 10, C: int = 36, layers: int = 20,
                 stem: str = "cifar", auxiliary: bool = False, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, global_pool: str = "avg", pool_bn: bool = False,
                 auxiliary_last_bn: Optional[bool] = None):
        super().__init__()
        self.genotype = genotype
        self.drop_path_prob = drop_path_rate
        self.stem = STEMS[stem](in_chans, C)
        reductions = (layers // 3, 2 * layers // 3)
        self.auxiliary_index = reductions[1]

        C_prev_prev = C_prev = self.stem.out_chs
        C_curr, reduction_prev, stride = C, stem == "imagenet", self.stem.reduction
        self.feature_info = list(self.stem.feature_info)
        self.feature_states: List[int] = [0] * len(self.feature_info)  # state 0 = the stem's s0
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
                stride *= 2
            if reduction and genotype.reduce is None:
                cell = FixedReductionCell(C_prev_prev, C_prev, C_curr, reduction_prev)
            else:
                edges, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (
                    genotype.normal, genotype.normal_concat)
                cell = Cell(edges, concat, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, pool_bn)
            self.cells.append(cell)
            C_prev_prev, C_prev, reduction_prev = C_prev, cell.multiplier * C_curr, reduction
            if i == self.auxiliary_index:
                C_auxiliary = C_prev
            if i + 1 in reductions or i == layers - 1:  # last cell at its resolution
                self.feature_info.append(dict(num_chs=C_prev, reduction=stride, module=f"cells.{i}"))
                self.feature_states.append(i + 2)

        self.auxiliary_head = AuxiliaryHead(C_auxiliary, num_classes, stem == "imagenet", auxiliary_last_bn) \
            if auxiliary else None
        self._init_head(C_prev, num_classes, global_pool, drop_rate)

    def _forward_states(self, x: torch.Tensor, keep: Sequence[int], cells: Optional[int] = None
                        ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The last cell's output and the states listed in ``keep``, running the first ``cells`` cells (all).

        States 0 and 1 are the stem's two outputs (s0, s1); state i + 2 is the output of cell i.
        """
        s0, s1 = self.stem(x)
        kept = [s for i, s in enumerate((s0, s1)) if i in keep]
        for i, cell in enumerate(self.cells):
            if i == cells:
                break
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i + 2 in keep:
                kept.append(s1)
        return s1, kept

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_states(x, ())[0]

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's feature API: the last feature map at each resolution (see ``feature_info``).

        ``stop_early`` runs no cell after the last one asked for; ``norm`` has nothing to apply (the networks
        end in a cell, with no final norm layer).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        cells = max(self.feature_states[max_index] - 1, 0) if stop_early or intermediates_only else None
        final, intermediates = self._forward_states(x, [self.feature_states[i] for i in take], cells)
        return intermediates if intermediates_only else (final, intermediates)

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the cells after the last feature in ``indices`` (and the head); returns the kept indices."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        del self.cells[max(self.feature_states[max_index] - 1, 0):]
        self._prune_head(max_index, prune_head)
        return take

    def forward_train(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits and auxiliary logits (None without an auxiliary head), for the training loss."""
        if self.auxiliary_head is None:
            return self.forward(x), None
        final, (auxiliary_input,) = self._forward_states(x, (self.auxiliary_index + 2,))
        return self.forward_head(final), self.auxiliary_head(auxiliary_input)


def _squeeze(C_in: int, C_out: int, halvings: int) -> nn.Sequential:
    """1x1 ReLUConvBN to C_out, then one FactorizedReduce per resolution halving still ahead."""
    return nn.Sequential(ReLUConvBN(C_in, C_out, 1, 1, 0), *(FactorizedReduce(C_out, C_out) for _ in range(halvings)))


class BroadNetwork(NetworkBase):
    """B-DARTS's broad convolutional network, BCNN (BNASv2 ``model_b.py``: NetworkCIFAR / NetworkImageNet_b2).

    ``layers`` convolution cells, all built from the genotype's *normal* cell; the cells at
    ``layers // 2 - 1`` and ``2 * (layers // 2) - 1`` have stride 2 and double the width. Then
    ``enhancement_layers`` stride-1 enhancement cells built from the genotype's *reduce* cell: the first one
    reads the squeezed outputs of the two stride-2 cells, the next ones the usual (k-2, k-1) pair.
    The classifier sees the concatenation, at the final resolution, of "GAP taps" (the squeezed output of
    the last cell before each stride-2 cell) and of every enhancement cell's squeezed output.
    BNASv2 accepts ``auxiliary`` but builds no auxiliary head; so does this class.
    """

    def __init__(self, genotype: Genotype, num_classes: int = 10, C: int = 48, layers: int = 6,
                 enhancement_layers: int = 2, stem: str = "cifar", auxiliary: bool = False, in_chans: int = 3,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg",
                 pool_bn: bool = False):
        super().__init__()
        if genotype.reduce is None:
            raise ValueError(f"genotype {genotype.name}: the broad network needs a reduce cell "
                             "(it builds the enhancement cells)")
        if layers < 2 or enhancement_layers < 1:
            raise ValueError("the broad network needs layers >= 2 and enhancement_layers >= 1")
        self.genotype = genotype
        self.drop_path_prob = drop_path_rate
        self.auxiliary_head = None
        self.stem = STEMS[stem](in_chans, C)
        self.pool_layers = [layers // 2 - 1, 2 * (layers // 2) - 1]

        C_prev_prev = C_prev = self.stem.out_chs
        C_curr, reduction_prev, stride = C, stem == "imagenet", self.stem.reduction
        self.stem_is_feature = bool(self.stem.feature_info)
        self.feature_info = list(self.stem.feature_info)
        self.feature_cells: List[int] = [0] * len(self.feature_info)  # cells each feature needs run
        self.cells, self.taps, self.enhancement_inputs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        tap_widths, enhancement_input_widths = [], []
        for i in range(layers):
            reduction = i in self.pool_layers
            if reduction:
                C_curr *= 2
                stride *= 2
            cell = Cell(genotype.normal, genotype.normal_concat, C_prev_prev, C_prev, C_curr, reduction,
                        reduction_prev, pool_bn)
            self.cells.append(cell)
            C_prev_prev, C_prev, reduction_prev = C_prev, cell.multiplier * C_curr, reduction
            halvings_ahead = sum(p > i for p in self.pool_layers)
            if i + 1 in self.pool_layers:
                self.taps.append(_squeeze(C_prev, C_curr, halvings_ahead))
                tap_widths.append(C_curr)
                self.feature_info.append(dict(num_chs=C_prev, reduction=stride, module=f"cells.{i}"))
                self.feature_cells.append(i + 1)
            if reduction:
                width = C_prev if i == self.pool_layers[-1] else C_curr
                self.enhancement_inputs.append(_squeeze(C_prev, width, halvings_ahead))
                enhancement_input_widths.append(width)

        self.enhancement_cells, self.enhancement_outputs = nn.ModuleList(), nn.ModuleList()
        for j in range(enhancement_layers):
            first = j == 0
            cell = Cell(genotype.reduce, genotype.reduce_concat,
                        enhancement_input_widths[0] if first else C_prev_prev,
                        C_prev, C_curr, reduction=False, reduction_prev=False, pool_bn=pool_bn)
            self.enhancement_cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            last = j == enhancement_layers - 1
            self.enhancement_outputs.append(ReLUConvBN(C_prev, C_prev if last else C_curr, 1, 1, 0))

        num_features = sum(tap_widths) + (enhancement_layers - 1) * C_curr + C_prev
        self.feature_info.append(dict(num_chs=num_features, reduction=stride, module="enhancement_outputs"))
        self.feature_cells.append(layers)
        self._init_head(num_features, num_classes, global_pool, drop_rate)

    def _forward_broad(self, x: torch.Tensor, cells: Optional[int] = None) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The classifier's input and the feature maps listed in ``feature_info``.

        With ``cells`` (or once pruned), only the first convolution cells run and the last one's output is
        the final map: the broad head needs them all.
        """
        s0, s1 = self.stem(x)
        features = [s0] if self.stem_is_feature else []
        taps: List[torch.Tensor] = []
        enhancement_inputs: List[torch.Tensor] = []
        for i, cell in enumerate(self.cells):
            if i == cells:
                break
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i + 1 in self.pool_layers:
                taps.append(s1)
                features.append(s1)
            if i in self.pool_layers:
                enhancement_inputs.append(s1)
        if (cells is not None and cells < len(self.cells)) or not len(self.enhancement_cells):
            return s1, features
        outputs = [squeeze(t) for squeeze, t in zip(self.taps, taps)]
        first_inputs = [squeeze(e) for squeeze, e in zip(self.enhancement_inputs, enhancement_inputs)]
        for j, (cell, squeeze) in enumerate(zip(self.enhancement_cells, self.enhancement_outputs)):
            inputs = first_inputs if j == 0 else (s0, s1)
            s0, s1 = s1, cell(inputs[0], inputs[1], self.drop_path_prob)
            outputs.append(squeeze(s1))
        features.append(torch.cat(outputs, dim=1))
        return features[-1], features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_broad(x)[0]

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's feature API: the last map at each resolution, then the classifier's input.

        ``stop_early`` runs no cell after the last one asked for; ``norm`` has nothing to apply.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        cells = self.feature_cells[max_index] if stop_early or intermediates_only else None
        final, features = self._forward_broad(x, cells)
        intermediates = [features[i] for i in take]
        return intermediates if intermediates_only else (final, intermediates)

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop what runs after the last feature in ``indices`` (and the head); returns the kept indices."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        if max_index < len(self.feature_info) - 1:  # the broad head (taps and enhancement cells) goes too
            del self.cells[self.feature_cells[max_index]:]
            for chain in (self.taps, self.enhancement_inputs, self.enhancement_cells, self.enhancement_outputs):
                del chain[:]
        self._prune_head(max_index, prune_head)
        return take

    def forward_train(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits and ``None``: the broad network has no auxiliary head."""
        return self.forward(x), None


#: Per network: (class, stem, default C, default layers, default classes).
NETWORK_DEFAULTS = {
    "cifar": (CellNetwork, "cifar", 36, 20, 10),
    "imagenet": (CellNetwork, "imagenet", 48, 14, 1000),
    "bcnn": (BroadNetwork, "cifar", 48, 6, 10),
    "bcnn_imagenet": (BroadNetwork, "imagenet", 44, 6, 1000),
}


def build_network(genotype: Union[Genotype, str], network: str = "cifar", C: Optional[int] = None,
                  layers: Optional[int] = None, num_classes: Optional[int] = None, auxiliary: bool = False,
                  enhancement_layers: Optional[int] = None, **kwargs) -> NetworkBase:
    """Build ``genotype`` (a Genotype or a zoo name) as the evaluation ``network`` of its paper.

    ``network`` is "cifar" (NetworkCIFAR, C=36, 20 cells), "imagenet" (mobile setting, C=48, 14 cells),
    "bcnn" (B-DARTS's broad network, C=48, 6 cells + ``enhancement_layers`` enhancement cells, 2 by default
    as in BNASv2's ``train_b.py --en_layers``) or "bcnn_imagenet" (C=44). The genotype's ``network_options``
    (GDAS's BN after pooling, P-DARTS's auxiliary-head BN) apply unless ``kwargs`` overrides them. Other
    ``kwargs``: ``in_chans``, ``drop_rate``, ``drop_path_rate``, ``global_pool``.
    """
    if isinstance(genotype, str):
        genotype = get_genotype(genotype)
    if network not in NETWORK_DEFAULTS:
        raise ValueError(f"unknown network {network!r}; expected one of {', '.join(NETWORK_DEFAULTS)}")
    cls, stem, default_C, default_layers, default_classes = NETWORK_DEFAULTS[network]
    C, layers = C or default_C, layers or default_layers
    if not (0 < C <= MAX_C and 0 < layers <= MAX_LAYERS):
        raise ValueError(f"C={C}, layers={layers} is out of range: C must be 1..{MAX_C} and layers 1..{MAX_LAYERS}")
    options = dict(genotype.network_options)
    if cls is BroadNetwork:
        options.pop("auxiliary_last_bn", None)
    if enhancement_layers is not None:
        if cls is not BroadNetwork:
            raise ValueError(f"enhancement_layers applies to the broad networks (bcnn, bcnn_imagenet), not {network}")
        options["enhancement_layers"] = enhancement_layers
    options.update(kwargs)
    return cls(genotype, num_classes=default_classes if num_classes is None else num_classes,
               C=C, layers=layers, stem=stem, auxiliary=auxiliary, **options)
