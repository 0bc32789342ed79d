"""Map the authors' checkpoints onto nas-zoo's layout (same tensors, new names).

``read_checkpoint`` reads the files the authors' scripts save, with ``torch.load(weights_only=True)``:

* ``torch.save(model.state_dict())`` (``utils.save`` in quark0/darts and the repositories that copied it);
* ``{"state_dict": ..., "epoch": ..., "best_acc_top1": ..., "optimizer": ...}`` (their ``train_imagenet.py``),
  with the ``module.`` prefix ``nn.DataParallel`` adds;
* ``{"model": ..., "optimizer": ...}`` (EDNAS's Horovod ImageNet script);
* NAS-Projects' GDAS checkpoints, ``{"epoch", "args", "state_dict", "optimizer", "scheduler", "accuracies"}``,
  whose ``args`` is an ``argparse.Namespace`` (plain data, allowed; its ``arch``, ``init_channels``,
  ``layers`` and ``dataset`` say which network the weights are for).

Anything else that needs unpickling (a class from the authors' code, a whole pickled model) is refused
with the name of the object: nas-zoo never runs code from a checkpoint.
"""
import argparse
import pickle
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import torch
from safetensors.torch import load_file
from torch import nn

from .checkpoint import refusal_reason
from .genotype import Genotype

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
# The code family of each paper file: the repository whose layout its released checkpoints have.
_FILE_FAMILIES = {"darts": "darts", "pdarts": "pdarts", "pc_darts": "pc-darts", "ednas": "ednas", "gdas": "gdas",
                  "bnasv2": "bnas"}
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
    """Rename an authors' ``state_dict`` of ``family`` to ``model``'s keys; raise on missing/unexpected keys.

    The result is complete for ``model`` (BatchNorm step counters the file lacks are taken from ``model``).
    """
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
    # Checkpoints saved before PyTorch 0.4.1 have no BatchNorm step counters; they do not affect outputs.
    return {**{k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}, **converted}


def family_of(genotype: Genotype) -> str:
    """The code family (``--from``) of a zoo genotype's paper, ``darts`` for genotypes outside the zoo."""
    return _FILE_FAMILIES.get(Path(genotype.source).stem, "darts")


class CheckpointFormatError(ValueError):
    """A checkpoint file that cannot be read as tensors and plain data, or holds no state_dict."""


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def read_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The state_dict in an authors' checkpoint file (``module.`` stripped) and what else it says.

    The second value holds the plain entries beside the weights (``epoch``, ``best_acc_top1``; GDAS's
    ``args`` as a dict). A ``.safetensors`` file is read as is.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            data: Any = load_file(str(path))
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, not a torch file: all mean the same to the user
        reason = refusal_reason(e)
        if not isinstance(e, pickle.UnpicklingError) or not reason.startswith("it pickles"):
            raise CheckpointFormatError(f"{path}: not a readable PyTorch or safetensors checkpoint ({reason})") from None
        raise CheckpointFormatError(
            f"{path}: cannot be read with torch.load(weights_only=True): {reason}; nas-zoo reads tensors and plain "
            "data only. Re-save its tensors where the authors' code is installed: "
            "torch.save(model.state_dict(), 'state_dict.pt'), and convert that") from None
    extra: Dict[str, Any] = {}
    if not _is_state_dict(data):
        if not isinstance(data, Mapping):
            raise CheckpointFormatError(f"{path}: holds a {type(data).__name__}, not a state_dict or a dict with one")
        key = next((k for k in ("state_dict", "model") if _is_state_dict(data.get(k))), None)
        if key is None:
            raise CheckpointFormatError(f"{path}: holds no state_dict (top-level keys: {', '.join(map(str, data))}); "
                                        "expected the tensors at the top level or under 'state_dict' or 'model'")
        extra = {k: vars(v) if isinstance(v, argparse.Namespace) else v for k, v in data.items()
                 if k not in (key, "optimizer", "scheduler")}
        data = data[key]
    if all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return dict(data), extra
