"""Atomic, resumable checkpoints: model weights as safetensors, the rest of the run state beside them.

A checkpoint is a directory ``DIR/`` holding ``model.safetensors`` (the weights) and ``state.pt`` (optimizer,
scheduler, RNG states, epoch and any JSON-like extras), loaded with ``torch.load(weights_only=True)``.
It is written into a temporary sibling directory and renamed into place (``files.atomic_directory``), so a
run killed mid-save leaves the previous checkpoint intact.
"""
import random
import re
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import atomic_directory


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says which keys."""


def refusal_reason(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line, without torch's advice to retry
    with ``weights_only=False`` (which would run the file's code)."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it pickles {found.group(1)}, which would run code from outside torch to load"
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return lines[0] if lines else type(error).__name__


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory, model: nn.Module, state: Dict[str, Any]) -> Path:
    """Write ``model``'s weights and ``state`` (tensors, numbers, strings, lists, dicts) atomically.

    Non-finite weights are refused: the checkpoint already there (finite) is kept.
    """
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    broken = next((k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()), None)
    if broken is not None:
        raise FloatingPointError(f"{directory}: not saved, the weights hold non-finite values ({broken}); "
                                 "lower the learning rate and resume from the last checkpoint")
    with atomic_directory(directory) as tmp:
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
    return Path(directory)


def find_checkpoint(directory) -> Optional[Path]:
    """The checkpoint at ``directory``, or the one left as ``.old`` by a save that was killed mid-swap."""
    target = Path(directory)
    for candidate in (target, target.with_name(target.name + ".old")):
        if (candidate / "model.safetensors").is_file() and (candidate / "state.pt").is_file():
            return candidate
    return None


def load_weights(path, model: nn.Module) -> None:
    """Load safetensors weights (a file, or a checkpoint directory) into ``model``, strictly."""
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    try:
        weights = load_file(str(file))
    except Exception as e:  # noqa: BLE001 - missing file, truncated header, bad JSON: all mean the same here
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None
    load_fitting(weights, model, str(file))


def load_fitting(weights: Dict[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """``model.load_state_dict(weights)``, after checking keys and shapes; the error names the misfits."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or mismatched:
        def few(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "") if keys else "none"
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: missing keys {few(missing)}; "
                              f"unexpected keys {few(unexpected)}; shape mismatches {few(mismatched)}")
    model.load_state_dict(weights)


def load_state(directory) -> Dict[str, Any]:
    """The run state saved beside the weights (``torch.load(weights_only=True)``: no code is unpickled)."""
    path = Path(directory) / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the same thing to the user
        raise CheckpointError(f"{path}: cannot be read as tensors and plain data ({refusal_reason(e)})") from None
