"""One resumable run: what training, language-model training and search share.

A run owns a folder. ``Run.start`` holds it for this process (``files.locked_output``) and refuses one that
holds another run unless told to resume. On ``resume`` it reads the last checkpoint back (a run killed before
its first checkpoint starts again): the settings it was written with are compared with this run's (a change
that would change the results is refused, naming it) and the per-epoch records are restored. ``Run.load`` then
puts the weights and the RNG streams back and rewrites ``metrics.jsonl`` from the records (a kill between the
checkpoint and the metrics may have left it an epoch behind; a resume refused before it changes nothing).
``Run.save`` ends an epoch: one atomic checkpoint (``checkpoint/``: the weights as safetensors, the rest as
tensors and plain data) holding the caller's state, the settings, the RNG streams and the records, then
``metrics.jsonl``. ``Run.display`` is the one progress display: a bar over the whole run on stderr and one
line per epoch that stays.

What differs between the loops (their model, optimizers, data order and what an epoch records) stays in them:
``harness.train``, ``language.lm`` and ``search.loop``.
"""
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from torch import nn

from ..files import locked_output, write_text_atomic
from .checkpoint import find_checkpoint, load_state, load_weights, rng_state, save_checkpoint, set_rng_state

#: what a folder holding a run has; a new run refuses such a folder
RUN_FILES = ("checkpoint", "checkpoint.old", "metrics.jsonl")


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def saved_settings(out) -> Optional[Dict[str, Any]]:
    """The settings of the run in ``out`` (what ``--resume`` starts from), or None without a checkpoint."""
    path = find_checkpoint(Path(out) / "checkpoint")
    return None if path is None else json.loads(load_state(path)["run"]["settings"])


def changed_settings(saved: Mapping[str, Any], given: Mapping[str, Any], may_change=()) -> List[str]:
    """``key old -> new`` for every setting (nested mappings by their leaf key) that differs, except ``may_change``."""
    changed = []
    for key in sorted(set(saved) | set(given)):
        old, new = saved.get(key), given.get(key)
        if key in may_change or old == new:
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            changed += changed_settings(old, new, may_change)
        else:
            changed.append(f"{key} {json.dumps(old)} -> {json.dumps(new)}")
    return changed


class Run:
    """The folder ``out`` of one run with ``settings`` (JSON data: what the run computes with).

    ``may_change``: the settings a resumed run may change (speed only, or the number of epochs);
    ``log``: where the per-epoch lines go; ``progress``: whether to draw the bar.
    """

    def __init__(self, out, settings: Mapping[str, Any], may_change: Tuple[str, ...] = (), progress: bool = True,
                 log: Callable[[str], None] = to_stderr):
        self.out, self.settings, self.may_change = Path(out), json.loads(json.dumps(settings)), may_change
        self.progress, self.log = progress, log
        self.history: List[Dict[str, Any]] = []  # one record per finished epoch: metrics.jsonl

    @contextmanager
    def start(self, resume: bool) -> Iterator[Optional[Dict[str, Any]]]:
        """Hold the folder while the block runs; yields the saved state to continue from (None for a new run)."""
        with locked_output(self.out) as self.out:
            self.out.mkdir(exist_ok=True)
            if not os.access(self.out, os.W_OK):
                raise PermissionError(f"{self.out}: the output folder is not writable; choose another --out")
            yield self._restore() if resume else self._check_new()

    def _check_new(self) -> None:
        held = [name for name in RUN_FILES if (self.out / name).exists()]
        if held:
            raise ValueError(f"{self.out} already holds a run ({', '.join(held)}); pass --resume to continue it "
                             "or choose another --out")

    def _restore(self) -> Optional[Dict[str, Any]]:
        self.checkpoint = find_checkpoint(self.out / "checkpoint")
        if self.checkpoint is None:  # killed before its first checkpoint: nothing to continue, nothing to lose
            held = [name for name in RUN_FILES if (self.out / name).exists()]
            if held:
                raise ValueError(f"{self.out} holds {', '.join(held)} but no readable checkpoint to resume from; "
                                 "choose another --out")
            self.log(f"--resume: no checkpoint in {self.out} yet; starting from the beginning")
            return None
        state = load_state(self.checkpoint)
        changed = changed_settings(json.loads(state["run"]["settings"]), self.settings, self.may_change)
        if changed:
            raise ValueError(f"{self.checkpoint} was written by a run with other settings ({', '.join(changed)}), "
                             "which change its results; resume with the same settings or choose another --out")
        self.history = json.loads(state["run"]["history"])
        return state

    def load(self, model: nn.Module, state: Mapping[str, Any]) -> None:
        """Put the checkpoint's weights into ``model`` and its RNG streams back: call it once everything the run
        builds (which draws random numbers) is built, just before the first step."""
        load_weights(self.checkpoint, model)
        set_rng_state(state["run"]["rng"])
        self._write_metrics()  # only now: a resume the caller refuses leaves the folder as it was

    def save(self, model: nn.Module, state: Mapping[str, Any], record: Optional[Mapping[str, Any]] = None) -> None:
        """End an epoch: its ``record`` joins the history; the checkpoint, then ``metrics.jsonl``, are rewritten."""
        if record is not None:
            self.history.append(dict(record))
        run = {"settings": json.dumps(self.settings), "history": json.dumps(self.history), "rng": rng_state()}
        save_checkpoint(self.out / "checkpoint", model, {**state, "run": run})
        self._write_metrics()

    def _write_metrics(self) -> None:
        write_text_atomic(self.out / "metrics.jsonl",
                          "".join(json.dumps(m, allow_nan=False) + "\n" for m in self.history))

    def display(self, total: int, completed: int = 0) -> "Display":
        """The run's progress (a context manager): ``total`` steps, ``completed`` of them done before (resumed)."""
        return Display(total, completed, self.progress, self.log)


class Display:
    """A bar over every step of the run (stderr, only with ``progress``) and the lines that stay (``log``)."""

    def __init__(self, total: int, completed: int, progress: bool, log: Callable[[str], None]):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.log = log
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=True,
                            console=Console(stderr=True), disable=not progress)
        self.task = self.bar.add_task("", total=total, completed=completed, stats="")

    def __enter__(self) -> "Display":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def describe(self, text: str) -> None:
        """What the bar is on (e.g. ``epoch 3/50``)."""
        self.bar.update(self.task, description=text)

    def advance(self, stats: Optional[str] = None, steps: int = 1) -> None:
        """``steps`` more done; ``stats``: the running figures shown beside the bar."""
        self.bar.update(self.task, advance=steps, **({"stats": stats} if stats is not None else {}))

    def line(self, text: str) -> None:
        """A line that stays above the bar (an epoch's result)."""
        self.log(text)
