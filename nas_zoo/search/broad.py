"""The broad search network of BNAS-v2 (Ding et al., "Faster Gradient-based NAS Pipelines Using Broad
Scalable Architecture"; the authors' ``BNASv2CLR/model_search_b.py`` and ``BNASv2PC/model_search_b.py``).

Instead of a deep chain of cells, a broad network: ``layers`` convolution blocks, each one stride-2 search
cell (all mixing the ``normal`` alpha), then ``enhancement_layers`` stride-1 search cells (mixing the
``reduce`` alpha), and broad connections to the classifier:

* a 1x1 ReLU-conv-BN tap on each convolution cell's input (C channels), brought down to the last
  resolution by a factorized reduction (affine BN) at every later halving and once more at the end;
* a 1x1 tap on each convolution cell's output (C_i channels; 4 C_i for the last cell), reduced likewise:
  the first enhancement cell reads the first two of these, the next ones the usual (k-2, k-1) pair;
* a 1x1 tap on each enhancement cell's output (C_last; 4 C_last for the last);
* the concatenation of the input taps and enhancement taps, global pooling, a linear classifier.

So the derived ``normal`` cell is the convolution-block cell and ``reduce`` the enhancement cell, as the
zoo's BCNN reads them (``build_network(genotype, network="bcnn")``). The two codes size the first
enhancement cell differently (CLR: ``C_curr // 2`` and ``4 C_curr`` inputs; PC: the widths of the two taps
it reads); they agree at the default ``layers=2``, the only depth at which CLR's code builds, and we size it
as PC does, which builds at every depth. With the authors' weights, ours gives their logits
(``tests/test_search_broad.py``, fixtures in ``tests/fixtures/bnas_search``).
"""
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from ..models.ops import FactorizedReduce, ReLUConvBN
from .supernet import Operation, SearchCell, Supernet, search_operation, search_stem


class BroadSearchNetwork(Supernet):
    """BNAS-v2's ``Network`` (model_search_b.py): convolution blocks, enhancement blocks, broad taps."""

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 2, enhancement_layers: int = 1,
                 nodes: int = 4, mixing=None, candidates: Optional[Mapping[str, Sequence[Sequence[str]]]] = None,
                 operation: Operation = search_operation, in_chans: int = 3, stem: str = "cifar"):
        if layers < 2 or enhancement_layers < 1:
            raise ValueError(f"the broad supernet needs --layers >= 2 convolution blocks and >= 1 enhancement "
                             f"block; got {layers} and {enhancement_layers}")
        super().__init__(nodes, mixing, candidates)
        self.stem = search_stem(stem, in_chans, C)  # BNAS-v2 model_search_imagenet_b.py on ImageNet
        C_stem = self.stem.out_chs
        self.cells, self.enhancement_cells = nn.ModuleList(), nn.ModuleList()
        self.input_taps, self.input_reductions = nn.ModuleList(), nn.ModuleList()
        self.output_taps, self.output_reductions = nn.ModuleList(), nn.ModuleList()
        self.enhancement_taps = nn.ModuleList()
        C_prev_prev, C_prev, C_curr = C_stem, C_stem, C
        input_widths, output_widths = [], []
        for i in range(layers):  # convolution blocks
            input_widths.append(C if i == 0 else C_curr)
            self.input_taps.append(ReLUConvBN(C_prev, input_widths[-1], 1, 1, 0))
            self.input_reductions.extend(FactorizedReduce(w, w) for w in input_widths[:-1])
            C_curr *= 2
            reduction_prev = i > 0 or stem == "imagenet"
            self.cells.append(SearchCell(C_prev_prev, C_prev, C_curr, True, reduction_prev, self.candidates["normal"],
                                         self.mixing, operation, nodes, cell_type="normal"))
            C_prev_prev, C_prev = C_prev, nodes * C_curr
            output_widths.append(C_prev if i + 1 == layers else C_curr)
            self.output_taps.append(ReLUConvBN(C_prev, output_widths[-1], 1, 1, 0))
            self.output_reductions.extend(FactorizedReduce(w, w) for w in output_widths[:-1])
        self.input_reductions.extend(FactorizedReduce(w, w) for w in input_widths)  # to the last resolution
        for j in range(enhancement_layers):  # enhancement blocks
            inputs = output_widths[:2] if j == 0 else [C_prev_prev, C_prev]
            self.enhancement_cells.append(SearchCell(*inputs, C_curr, False, False, self.candidates["reduce"],
                                                     self.mixing, operation, nodes, cell_type="reduce"))
            C_prev_prev, C_prev = C_prev, nodes * C_curr
            last = j + 1 == enhancement_layers
            self.enhancement_taps.append(ReLUConvBN(C_prev, C_prev if last else C_curr, 1, 1, 0))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(sum(input_widths) + (enhancement_layers - 1) * C_curr + C_prev, num_classes)
        self.init_architecture()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixes = self.mixes()
        input_reductions, output_reductions = iter(self.input_reductions), iter(self.output_reductions)
        taps, outputs = [], []
        s0, s1 = self.stem(x)
        for cell, input_tap, output_tap in zip(self.cells, self.input_taps, self.output_taps):
            taps = [next(input_reductions)(t) for t in taps] + [input_tap(s1)]
            s0, s1 = s1, cell(s0, s1, mixes[cell.cell_type])
            outputs = [next(output_reductions)(o) for o in outputs] + [output_tap(s1)]
        taps = [next(input_reductions)(t) for t in taps]
        for j, (cell, tap) in enumerate(zip(self.enhancement_cells, self.enhancement_taps)):
            a, b = outputs[:2] if j == 0 else (s0, s1)
            s0, s1 = s1, cell(a, b, mixes[cell.cell_type])
            taps.append(tap(s1))
        return self.classifier(self.global_pool(torch.cat(taps, dim=1)).flatten(1))
