"""Map the authors' state_dict layouts onto nas-zoo's (same tensors, new names)."""
import re
from typing import Dict, List, Tuple

import torch
from torch import nn

# Renames shared by every repository that copied DARTS's model.py (and by GDAS and BNASv2).
_DARTS_RULES = [(r"^stem0\.", "stem.stem0."), (r"^stem1\.", "stem.stem1."), (r"\._ops\.", ".ops.")]
_GDAS_RULES = _DARTS_RULES + [(r"\.ops1\.", ".conv_branches."), (r"\.ops2\.", ".pool_branches.")]
_BNAS_RULES = _DARTS_RULES + [
    (r"^conv_cells\.", "cells."), (r"^en_cells\.", "enhancement_cells."),
    (r"^restricted_ens_gap\.", "enhancement_outputs."),
    (r"^restricted_convs_gap\.(\d+)\.", r"taps.\1.0."), (r"^restricted_convs_en\.(\d+)\.", r"enhancement_inputs.\1.0."),
]
# The DARTS language model (rnn/model.py; GDAS lib/nas_rnn, EDNAS PTB): its decoder.weight is the embedding.
_RNN_RULES = [(r"^rnns\.0\.", "cell."), (r"^decoder\.bias$", "decoder_bias")]
FAMILIES = {"darts": _DARTS_RULES, "pdarts": _DARTS_RULES, "pc-darts": _DARTS_RULES, "ednas": _DARTS_RULES,
            "gdas": _GDAS_RULES, "bnas": _BNAS_RULES, "darts_rnn": _RNN_RULES}


def _bnas_reduction_order(num_branches: int) -> List[Tuple[int, int]]:
    """(branch, position in its chain) of each FactorizedReduce in BNASv2's flat list, in creation order.

    BNASv2 appends one FactorizedReduce for every earlier branch each time a new branch appears, and the
    GAP taps get one more each at the end; our branches hold their reductions as a chain after the squeeze.
    """
    order, made = [], [0] * num_branches
    for new in range(1, num_branches):
        for branch in range(new):
            made[branch] += 1
            order.append((branch, made[branch]))
    return order, made


def convert_state_dict(state_dict: Dict[str, torch.Tensor], family: str, model: nn.Module) -> Dict[str, torch.Tensor]:
    """Rename an authors' ``state_dict`` of ``family`` to ``model``'s keys; raise on missing/unexpected keys."""
    rules = FAMILIES[family]
    flat_lists = {}
    if family == "bnas":
        gap_order, made = _bnas_reduction_order(len(model.taps))
        gap_order += [(branch, made[branch] + 1) for branch in range(len(model.taps))]
        flat_lists = {"reduction_convs_gap": ("taps", gap_order),
                      "reduction_convs_en": ("enhancement_inputs", _bnas_reduction_order(len(model.enhancement_inputs))[0])}
    converted = {}
    for key, tensor in state_dict.items():
        if family == "darts_rnn" and key == "decoder.weight":
            continue  # tied to encoder.weight
        new = key
        for pattern, replacement in rules:
            new = re.sub(pattern, replacement, new)
        head, _, rest = new.partition(".")
        if head in flat_lists:
            target, order = flat_lists[head]
            index, _, rest = rest.partition(".")
            branch, position = order[int(index)]
            new = f"{target}.{branch}.{position}.{rest}"
        converted[new] = tensor
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - set(converted)), sorted(set(converted) - set(model.state_dict()))
    if missing or unexpected:
        raise KeyError(f"checkpoint does not fit {type(model).__name__}: missing keys {missing[:10]}"
                       f"{'...' if len(missing) > 10 else ''}; unexpected keys {unexpected[:10]}"
                       f"{'...' if len(unexpected) > 10 else ''}")
    return converted
