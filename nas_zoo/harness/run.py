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

Under torchrun (``distributed``) rank 0 alone holds, reads and writes the folder; the other ranks receive what
it read (the state, the weights) and wait while it writes, and they display nothing. The checkpoint holds every
rank's RNG streams: a run resumed on as many processes continues exactly; on another number it continues from
rank 0's streams, which it says is not bit for bit the run it would have been.

What differs between the loops (their model, optimizers, data order and what an epoch records) stays in them:
``harness.train``, ``language.lm`` and ``search.loop``.
"""
import json
import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..files import locked_output, write_text_atomic
from . import distributed
from .checkpoint import find_checkpoint, load_state, load_weights, rng_state, save_checkpoint, set_rng_state

#: what a folder holding a run has; a new run refuses such a folder
RUN_FILES = ("checkpoint", "checkpoint.old", "metrics.jsonl")


def to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def saved_settings(out) -> Optional[Dict[str, Any]]:
    """The settings of the run in ``out`` (what ``--resume`` starts from), or None without a checkpoint; read by
    rank 0."""
    def read():
        path = find_checkpoint(Path(out) / "checkpoint")
        return None if path is None else json.loads(load_state(path)["run"]["settings"])
    return distributed.on_main(read)


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
        if not distributed.is_main():  # rank 0 speaks for the run
            progress, log = False, lambda line: None
        self.progress, self.log = progress, log
        self.history: List[Dict[str, Any]] = []  # one record per finished epoch: metrics.jsonl
        self.checkpoint: Optional[Path] = None  # the one resumed from

    @contextmanager
    def start(self, resume: bool) -> Iterator[Optional[Dict[str, Any]]]:
        """Hold the folder while the block runs; yields the saved state to continue from (None for a new run)."""
        main = distributed.is_main()
        with locked_output(self.out) if main else nullcontext(Path(os.path.abspath(self.out))) as self.out:
            state, self.history, self.checkpoint = distributed.on_main(lambda: self._open(resume))
            yield state

    def _open(self, resume: bool):
        self.out.mkdir(exist_ok=True)
        if not os.access(self.out, os.W_OK):
            raise PermissionError(f"{self.out}: the output folder is not writable; choose another --out")
        state = self._restore() if resume else self._check_new()
        return state, self.history, self.checkpoint

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
        """Put the checkpoint's weights into ``model`` (rank 0 reads them, every rank gets them) and this rank's RNG
        streams back, and rewrite ``metrics.jsonl`` from the records: call it once everything the run builds (which
        draws random numbers) is built, just before the first step."""
        distributed.on_main(lambda: load_weights(self.checkpoint, model))
        distributed.broadcast_(list(model.state_dict().values()))
        streams = state["run"]["rng"]
        streams = [streams] if isinstance(streams, dict) else streams  # written by one process before ranks
        if len(streams) == distributed.world_size():
            set_rng_state(streams[distributed.rank()])
        else:
            self.log(f"resumed on {distributed.world_size()} processes from a checkpoint of {len(streams)}: the run "
                     "continues, but not bit for bit as it would have on the same number")
            set_rng_state(streams[0])
            torch.manual_seed(int(torch.randint(2 ** 62, ())) + distributed.rank())  # one new stream per rank
        distributed.on_main(self._write_metrics)  # only now: a resume the caller refuses leaves the folder as it was

    def save(self, model: nn.Module, state: Mapping[str, Any], record: Optional[Mapping[str, Any]] = None) -> None:
        """End an epoch: its ``record`` joins the history; the checkpoint, then ``metrics.jsonl``, are rewritten
        (by rank 0, while the others wait)."""
        if record is not None:
            self.history.append(dict(record))
        run = {"settings": json.dumps(self.settings), "history": json.dumps(self.history),
               "rng": distributed.gather_objects(rng_state())}

        def write() -> None:
            save_checkpoint(self.out / "checkpoint", model, {**state, "run": run})
            self._write_metrics()
        distributed.on_main(write)

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
