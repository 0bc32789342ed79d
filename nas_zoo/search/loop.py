"""One search run, shared by every algorithm: the data halves, the stages and their epochs, checkpoints, the
genotype and the search record.

The training set gives one part to the weights and one to the architecture (``data.py``; halves on CIFAR
as in DARTS's ``train_search.py``). Each epoch is the algorithm's training pass
(``SearchAlgorithm.train_epoch``: by default ``bilevel.BiLevel`` takes one step of each per batch) at the
algorithm's learning rate for the epoch (``SearchAlgorithm.weights_lr``: a cosine from ``lr`` to ``lr_min``,
after ``lr_warmup`` epochs of linear warm-up where the paper has one). A
search has one stage or, like P-DARTS, several: each stage is a new supernet (fresh weights, fresh alpha,
new optimizers and cosine schedule) on the candidates the algorithm keeps from the stage before.

The run's folder is a ``harness.run.Run``: every epoch ends with its atomic checkpoint (stage, candidates,
weights, architecture, optimizers, RNG states, the records so far) from which ``resume`` continues exactly,
mid-stage or between stages, and ``metrics.jsonl``; then the derived genotype (``genotype.json``) and the
search record (``search.json``), both written from what the run used: the filled-in config and the
algorithm's own settings. After the last
epoch the algorithm may derive the final genotype once more with the data (``SearchAlgorithm.conclude``).

Under torchrun every rank holds the whole supernet and takes its share of every batch (``data.epoch_loader``: the
same global batches as one process). Each stage starts from rank 0's weights and alpha; every gradient of a
step, the weights' and the architecture's (``BiLevel.grad``, ``BiLevel.weights_step``), is averaged over the
ranks, so the weights and alpha stay the same on every rank, step after step. What a mixing samples for the
architecture (GDAS's Gumbel noise) comes from ``Search.sampling``, one generator seeded by the run's seed:
the same samples on every rank and in one process. The rest of the randomness (P-DARTS's dropout) is each
rank's own stream.

Each epoch's record carries the collapse monitor's figures, and DARTS-ES may end the search early and
return an earlier epoch's genotype (``hessian.py``).
"""
import dataclasses
import itertools
import json
import math
import platform
import resource
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..files import write_text_atomic
from ..harness import distributed
from ..harness.data import epoch_loader
from ..harness.evaluate import device_name
from ..harness.run import Run, to_stderr
from ..harness.train import device_for_run
from ..registry.genotype import Genotype, parse_genotypes, save_genotype, thaw
from . import hessian
from .algorithm import Candidates, SearchAlgorithm, SearchConfig, with_defaults
from .bilevel import BiLevel
from .data import search_data
from .supernet import SearchNetwork

#: settings that change speed, not results: a resumed run may differ in these
SPEED_ONLY = ("data_dir", "num_workers", "device", "channels_last")


def versions() -> Dict[str, str]:
    import timm
    import torchvision

    from .. import __version__
    return {"nas_zoo": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "python": platform.python_version()}


def peak_memory(device: torch.device) -> Dict[str, Any]:
    if device.type == "cuda":
        return {"bytes": torch.cuda.max_memory_allocated(device), "kind": "cuda max_memory_allocated"}
    return {"bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "kind": "process peak RSS"}


def plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists)."""
    return json.loads(json.dumps(thaw(value)))


class Search:
    """One search run of ``algorithm`` with ``config``, writing into ``out``: on images here; on a text
    corpus ``recurrent.LanguageSearch`` replaces the data, the epoch and the validation (``new_search``)."""

    bilevel_class = BiLevel
    #: whether the run's epoch can run under torchrun (the recurrent search's cannot)
    several_processes = True

    def __init__(self, algorithm: SearchAlgorithm, config: SearchConfig, out: Path, progress: bool = True):
        self.config = config = with_defaults(algorithm, config)
        config.check()
        hessian.check(algorithm, config)
        algorithm.for_dataset(config.dataset)
        if not (self.several_processes and algorithm.several_processes):
            distributed.one_process(f"the {algorithm.label} search on {config.dataset}")
        distributed.split_batch(config.batch_size)
        self.device = distributed.start(device_for_run(config.device))
        self.algorithm, self.out, self.progress = algorithm, Path(out), progress
        self.folder = Run(out, self._settings(), SPEED_ONLY, progress, to_stderr if progress else lambda line: None)
        torch.manual_seed(config.seed + distributed.rank())  # each stage starts from rank 0's weights
        self.sampling = torch.Generator().manual_seed(config.seed)  # the architecture's samples, as every rank's
        self.data = self.load_data()
        self.elapsed, self.stages, self.notes = 0.0, [], {}
        self.normal: list = []  # the normal cell of the genotype last derived
        self.start_stage(0, None)

    @property
    def model(self) -> SearchNetwork:
        return self.bilevel.model

    @property
    def history(self) -> List[Dict[str, Any]]:
        """The finished epochs' records (``metrics.jsonl``)."""
        return self.folder.history

    def load_data(self):
        return search_data(self.config)

    def network(self, stage: int, candidates: Optional[Candidates]) -> SearchNetwork:
        return self.algorithm.network(self.config, self.data.num_classes, stage, candidates)

    @staticmethod
    def shape(model: SearchNetwork) -> Dict[str, int]:
        """The supernet's size as the record notes it."""
        return {"cells": len(model.cells)}

    def start_stage(self, stage: int, candidates: Optional[Candidates]) -> None:
        """A new supernet for ``stage`` on ``candidates``, new optimizers and a new schedule."""
        model = self.network(stage, candidates)
        if self.config.sync_bn:
            model = distributed.sync_batch_norm(model, self.device)
        model.to(self.device)
        distributed.broadcast_(list(model.state_dict().values()))
        model.mixing.generator = self.sampling
        self.stage, self.epoch = stage, 0
        self.bilevel = self.bilevel_class(self.algorithm, model, self.config)
        if len(self.stages) == stage:  # not a resumed stage
            searched = {t: model.candidates[t] for t in model.cell_types}
            self.stages.append({"stage": stage, **self.shape(model), **self.algorithm.describe_stage(
                self.config, stage), "candidates_per_edge": len(searched[model.cell_types[0]][0]),
                "candidates": searched, "epochs": self.config.epochs, "wall_time_s": 0.0})

    # -- epochs ---------------------------------------------------------------------------------------
    def loader(self, data: Dataset, seed: int, shuffle: bool = True, batch_size: Optional[int] = None) -> DataLoader:
        """This rank's batches of ``data`` (``batch_size``: the config's, the global batch), their order and
        augmentation fixed by ``seed`` (the same on resume and for any number of processes)."""
        return epoch_loader(data, batch_size or self.config.batch_size, self.config.seed, seed, shuffle,
                            self.config.num_workers)

    def train_epoch(self, epoch: int, advance=lambda: None) -> Dict[str, Any]:
        """The algorithm's epoch (``SearchAlgorithm.train_epoch``): training, then its measure."""
        return self.algorithm.train_epoch(self, epoch, advance)

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """The supernet on the architecture half (DARTS's ``infer``), in eval mode, with rank 0's batch-norm
        statistics (each rank's own share of the batches updated them)."""
        self.model.eval()
        distributed.broadcast_(list(self.model.buffers()))
        loss, correct, n = 0.0, 0.0, 0
        for batch in self.loader(self.data.valid, 0, shuffle=False):
            x, y = self.bilevel.batch(batch)
            logits = self.model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(-1) == y).sum().item()
            n += len(y)
        loss, correct, n = distributed.sum_values([loss, correct, n], self.device)
        return {"valid_loss": loss / n, "valid_acc": 100 * correct / n}

    def run_epoch(self, advance=lambda: None) -> Dict[str, Any]:
        """One epoch of the current stage, then the checkpoint and the outputs; returns its record."""
        epoch, start = self.epoch, time.perf_counter()
        notes = self.algorithm.start_epoch(self.model, self.config, self.stage, epoch)
        lr = self.algorithm.weights_lr(self.config, epoch)
        for group in self.bilevel.w_optimizer.param_groups:
            group["lr"] = lr
        stats = self.train_epoch(epoch, advance)
        collapse = hessian.monitor(self, epoch)
        took = time.perf_counter() - start
        self.elapsed += took
        self.stages[self.stage]["wall_time_s"] = round(self.stages[self.stage]["wall_time_s"] + took, 3)
        self.epoch += 1
        genotype = self.genotype()
        cells = {k: v for k, v in genotype.to_dict().items() if k in ("normal", "reduce", "recurrent")}
        self.save_checkpoint({"stage": self.stage, "epoch": epoch, "lr": lr, **notes,
                              **{k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()},
                              "genotype": cells, "operation_weights": self.algorithm.operation_weights(self.model),
                              **collapse})
        self.write_outputs(genotype)
        return self.history[-1]

    def run(self, resume: bool = False) -> Dict[str, Any]:
        """Every remaining epoch of every stage (``resume``: from the checkpoint in ``out``, if there is one); ends
        by (re)writing the outputs from the last checkpoint. The folder is a ``harness.run.Run``: held by this
        process alone, a run in it refused without ``resume``; with ``progress``, a bar on stderr and one line per
        finished epoch that stays."""
        with self.folder.start(resume) as state:
            if state is not None:
                self.restore(state)
            return self._run()

    def _run(self) -> Dict[str, Any]:
        epochs, stages = self.config.epochs, self.algorithm.stages
        steps = self.steps_per_epoch()
        with self.folder.display(steps * epochs * stages, steps * (self.stage * epochs + self.epoch)) as display:
            while not hessian.early_stop(self.history, self.config):
                if self.epoch == epochs:
                    if self.stage + 1 == stages:
                        break
                    self.start_stage(self.stage + 1, self.algorithm.next_candidates(self.model, self.stage))
                stage = f"stage {self.stage + 1}/{stages} " if stages > 1 else ""
                display.describe(f"{self.algorithm.label} {stage}epoch {self.epoch + 1}/{epochs}")
                done = self.run_epoch(display.advance)
                display.line(f"{self.algorithm.label} {stage}epoch {self.epoch}/{epochs}: {self.summary(done)}")
        final = hessian.stopped_genotype(self) or self.conclude()
        self.write_outputs(self.genotype(final))
        return self.record()

    def conclude(self) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
        """The genotype derived once more with the data after the last epoch (``SearchAlgorithm.conclude``), or
        None."""
        return self.algorithm.conclude(self)

    def fixed_batches(self, n: int) -> list:
        """``n`` batches of the architecture part, the same ones at every call (the collapse monitor's)."""
        return list(itertools.islice(self.loader(self.data.valid, 30_000), n))

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.train) / self.config.batch_size)

    @staticmethod
    def summary(stats: Dict[str, Any]) -> str:
        """An epoch's (or the run's last epoch's) figures, in one line."""
        return (f"train {stats.get('train_acc', 0):.1f}% valid {stats.get('valid_acc', 0):.1f}% (loss "
                f"{stats.get('train_loss', 0):.3f} / {stats.get('valid_loss', 0):.3f})")

    @staticmethod
    def outcome(record: Dict[str, Any]) -> str:
        """The run's result, in the words of the command's last line."""
        last = record["epochs"][-1] if record["epochs"] else {}
        return (f"train {last.get('train_acc', 0):.1f}% valid {last.get('valid_acc', 0):.1f}%, "
                f"{record['skip_connections_normal']} skip-connections in the normal cell")

    # -- genotype, record, checkpoint ------------------------------------------------------------------
    def derive(self) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        return self.algorithm.derive(self.model)

    def genotype(self, derived: Optional[Tuple[Dict[str, Any], Dict[str, Any]]] = None) -> Genotype:
        """The genotype ``derived`` (``SearchAlgorithm.conclude``), or else the algorithm's of the current
        supernet; its notes go to the record."""
        cfg = self.config
        fields, self.notes = derived or self.derive()
        self.normal = fields.get("normal", [])
        record = {"name": f"{self.algorithm.label}_{cfg.dataset}_seed{cfg.seed}".upper(), **fields,
                  "evaluations": [{"dataset": cfg.dataset, **self.algorithm.paper(cfg.dataset)["evaluation"]}]}
        return next(iter(parse_genotypes(record, str(self.out / "genotype.json")).values()))

    def cell_notes(self) -> Dict[str, Any]:
        """What the record notes about the cells and data beside the architecture weights."""
        return {"skip_connections_normal": sum(op == "skip_connect" for op, _ in self.normal),
                **({"data": self.data.sample} if self.data.sample else {})}

    def record(self) -> Dict[str, Any]:
        """The search record (``search.json``); ``devices`` counts the processes (one device each), and the GPU-
        or CPU-hours are device-hours: the wall time times the devices."""
        hours = self.elapsed / 3600 * distributed.world_size()
        device = self.bilevel.device
        arch = {name: p.detach().cpu().tolist() for name, p in self.model.arch.named_parameters()}
        return {
            "algorithm": self.algorithm.label, "options": plain(self.algorithm.settings()),
            "config": plain(dataclasses.asdict(self.config)), "seed": self.config.seed, "versions": versions(),
            "device": device_name(device), "devices": distributed.world_size(), "wall_time_s": round(self.elapsed, 3),
            ("gpu_hours" if device.type == "cuda" else "cpu_hours"): round(hours, 6),
            "peak_memory": peak_memory(device), "epochs_done": len(self.history), "stages": self.stages,
            "epochs": self.history, "architecture": arch, **self.cell_notes(), **self.notes,
            "early_stop": hessian.early_stop(self.history, self.config),
        }

    def _settings(self) -> Dict[str, Any]:
        return {"algorithm": self.algorithm.label, "options": plain(self.algorithm.settings()),
                "config": plain(dataclasses.asdict(self.config))}

    def save_checkpoint(self, record: Dict[str, Any]) -> None:
        """The epoch's checkpoint (``Run.save``), with ``record`` added to the history."""
        self.folder.save(self.model, {
            "stage": self.stage, "epoch": self.epoch, "elapsed": self.elapsed, "stages": json.dumps(self.stages),
            "candidates": json.dumps(self.model.candidates), "w_optimizer": self.bilevel.w_optimizer.state_dict(),
            "a_optimizer": self.bilevel.a_optimizer.state_dict(), "sampling": self.sampling.get_state(),
            "devices": distributed.world_size()}, record)

    def write_outputs(self, genotype: Genotype) -> None:
        """``genotype.json`` and ``search.json``, written by rank 0."""
        search = {"algorithm": self.algorithm.label, "dataset": self.config.dataset, "seed": self.config.seed,
                  "epochs": len(self.history), "record": "search.json"}
        record = self.record()

        def write() -> None:
            self.out.mkdir(parents=True, exist_ok=True)
            save_genotype(genotype, self.out / "genotype.json", search)
            write_text_atomic(self.out / "search.json", json.dumps(record, indent=2) + "\n")
        distributed.on_main(write)

    def restore(self, state: Dict[str, Any]) -> None:
        """Continue from a checkpoint's ``state``, mid-stage or between stages."""
        self.stages = json.loads(state["stages"])
        self.start_stage(state["stage"], json.loads(state["candidates"]))
        self.folder.load(self.model, state)
        self.bilevel.w_optimizer.load_state_dict(state["w_optimizer"])
        self.bilevel.a_optimizer.load_state_dict(state["a_optimizer"])
        if "sampling" in state:  # written before the architecture's samples had their own generator
            self.sampling.set_state(state["sampling"])
        self.epoch, self.elapsed = state["epoch"], state["elapsed"]
