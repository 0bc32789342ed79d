"""Map the authors' checkpoints onto nas-zoo's layout (same tensors, new names).

``read_checkpoint`` reads the files the authors' scripts save, with ``torch.load(weights_only=True)``:

* ``torch.save(model.state_dict())`` (``utils.save`` in quark0/darts and the repositories that copied it);
* ``{"state_dict": ..., "epoch": ..., "best_acc_top1": ..., "optimizer": ...}`` (their ``train_imagenet.py``),
  with the ``module.`` prefix ``nn.DataParallel`` adds;
* ``{"model": ..., "optimizer": ...}`` (EDNAS's Horovod ImageNet script);
* NAS-Projects' GDAS checkpoints, ``{"epoch", "args", "state_dict", "optimizer", "scheduler", "accuracies"}``,
  whose ``args`` is an ``argparse.Namespace`` (plain data, allowed; its ``arch``, ``init_channels``,
  ``layers`` and ``dataset`` say which network the weights are for);
* the whole pickled language model that DARTS's ``rnn/train.py`` (``utils.save_checkpoint``:
  ``torch.save(model, 'model.pt')``) and EDNAS's PTB copy save. Its classes (``model.RNNModel``,
  ``model.DARTSCell``, ``utils.LockedDropout``, ``genotypes.Genotype`` and torch's layers) are read as inert
  stand-ins by the same ``weights_only`` unpickler: an object that keeps the state it is given and runs
  nothing. Only the tensors under each module's ``_parameters`` and ``_buffers`` are kept.

Any other global (a class outside that list, a function such as ``os.system``) is refused with its name
before anything is called: nas-zoo never runs code from a checkpoint and imports none of the authors'.
"""
import _compat_pickle
import argparse
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import torch
from safetensors.torch import load_file
from torch import nn

from ..harness.checkpoint import refusal_reason
from ..registry.genotype import Genotype

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
# The checkpoint layout (``--from``) of each paper file: the repository whose layout its released checkpoints have.
_FILE_LAYOUTS = {"darts": "darts", "pdarts": "pdarts", "pc_darts": "pc-darts", "ednas": "ednas", "gdas": "gdas",
                  "bnasv2": "bnas"}
LAYOUTS = {"darts": _DARTS_RULES, "pdarts": _DARTS_RULES, "pc-darts": _DARTS_RULES, "ednas": _DARTS_RULES,
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


def convert_state_dict(state_dict: Dict[str, torch.Tensor], layout: str, model: nn.Module) -> Dict[str, torch.Tensor]:
    """Rename an authors' ``state_dict`` in ``layout`` (a key of ``LAYOUTS``) to ``model``'s keys; raise on missing/unexpected keys.

    The result is complete for ``model`` (BatchNorm step counters the file lacks are taken from ``model``).
    """
    rules = LAYOUTS[layout]
    flat_lists = {}
    if layout == "bnas":
        gap_order, made = _bnas_reduction_order(len(model.taps))
        gap_order += [(branch, made[branch] + 1) for branch in range(len(model.taps))]
        flat_lists = {"reduction_convs_gap": ("taps", gap_order),
                      "reduction_convs_en": ("enhancement_inputs", _bnas_reduction_order(len(model.enhancement_inputs))[0])}
    converted = {}
    for key, tensor in state_dict.items():
        if layout == "darts_rnn" and key == "decoder.weight":
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


def layout_of(genotype: Genotype) -> str:
    """The checkpoint layout (``--from``) of a zoo genotype's paper, ``darts`` for genotypes outside the zoo."""
    return _FILE_LAYOUTS.get(Path(genotype.source).stem, "darts")


class CheckpointFormatError(ValueError):
    """A checkpoint file that cannot be read as tensors and plain data, or holds no state_dict."""


class _StandIn:
    """An inert object in place of a pickled class: takes any arguments, keeps the state it is given."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


# The classes a whole pickled DARTS / EDNAS language model names (rnn/model.py, utils.py, genotypes.py; torch).
WHOLE_MODEL_CLASSES = ("model.RNNModel", "model.DARTSCell", "utils.LockedDropout", "genotypes.Genotype",
                       "torch.nn.modules.sparse.Embedding", "torch.nn.modules.linear.Linear",
                       "torch.nn.modules.dropout.Dropout", "torch.nn.modules.container.ModuleList",
                       "torch.nn.modules.container.ParameterList")
_STAND_INS = [type(path.rpartition(".")[2], (_StandIn,), {"__module__": path.rpartition(".")[0],
                                                          "__qualname__": path.rpartition(".")[2]})
              for path in WHOLE_MODEL_CLASSES]


def _module_tensors(module: _StandIn, prefix: str = "") -> Dict[str, torch.Tensor]:
    """A pickled module's ``state_dict``: its parameters and persistent buffers, then its children's."""
    state = getattr(module, "state", None)
    if not isinstance(state, Mapping):
        return {}
    skip = state.get("_non_persistent_buffers_set") or set()
    tensors = {prefix + k: v for kind in ("_parameters", "_buffers") for k, v in (state.get(kind) or {}).items()
               if isinstance(v, torch.Tensor) and k not in skip}
    for name, child in (state.get("_modules") or {}).items():
        tensors.update(_module_tensors(child, f"{prefix}{name}."))
    return tensors


class _RestrictedUnpickler(pickle.Unpickler):
    """pickle's Unpickler resolving only the globals ``torch.load(weights_only=True)`` allows and the stand-ins;
    any other global is refused before it is looked up, so nothing outside that list can be called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol 2 writes Python 2's names (__builtin__.set)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        allowed = {**torch._weights_only_unpickler._get_allowed_globals(),
                   **{f"{c.__module__}.{c.__qualname__}": c for c in (argparse.Namespace, *_STAND_INS)}}
        if f"{module}.{name}" not in allowed:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")
        return allowed[f"{module}.{name}"]


class _restricted_pickle:  # the ``pickle_module`` torch.load reads with: its Unpickler, and load for the headers
    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(file, **kwargs) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def _load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, with the whole-model classes allowed as inert stand-ins.

    A whole model in PyTorch's legacy format (before 1.6, as the released DARTS model) names each module class
    as a persistent id, which the weights-only unpickler refuses; it is read by ``_RestrictedUnpickler``.
    """
    with torch.serialization.safe_globals([argparse.Namespace, *_STAND_INS]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy files compare their saved class sources with ours
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "Only persistent_load of storage is allowed" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)


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
        data: Any = load_file(str(path)) if path.suffix == ".safetensors" else _load(path)
    except Exception as e:  # noqa: BLE001 - truncated zip, not a torch file: all mean the same to the user
        reason = refusal_reason(e)
        if not isinstance(e, pickle.UnpicklingError) or not reason.startswith("it pickles"):
            raise CheckpointFormatError(f"{path}: not a readable PyTorch or safetensors checkpoint ({reason})") from None
        raise CheckpointFormatError(
            f"{path}: cannot be read with torch.load(weights_only=True): {reason}; nas-zoo reads tensors and plain "
            "data only. Re-save its tensors where the authors' code is installed: "
            "torch.save(model.state_dict(), 'state_dict.pt'), and convert that") from None
    extra: Dict[str, Any] = {}
    if isinstance(data, _StandIn):  # a whole pickled model
        extra = {"pickled_class": f"{type(data).__module__}.{type(data).__qualname__}"}
        data = _module_tensors(data)
        if not data:
            raise CheckpointFormatError(f"{path}: pickles a {extra['pickled_class']} that holds no tensors")
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
