"""The bi-level search loop shared by every algorithm (DARTS Sec. 2.3, Alg. 1), its record and checkpoints.

The training set is split in halves: the first half trains the weights ``w`` (SGD with momentum, cosine
learning rate, weight decay, gradient clipping), the second half the architecture parameters ``alpha``
(Adam), one step of each per batch. An algorithm (``darts.py``, ``gdas.py``, ``pc_darts.py``) is a
``SearchAlgorithm``: its paper's defaults, its supernet and, where it differs from the first-order step
(the gradient of the validation loss), its architecture gradient.

Every epoch ends with an atomic checkpoint (weights, architecture, optimizers, scheduler, RNG states, the
record so far) from which ``resume`` continues exactly, the derived genotype (``genotype.json``) and the
search record (``search.json``).
"""
import contextlib
import dataclasses
import json
import math
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..checkpoint import find_checkpoint, load_state, load_weights, rng_state, save_checkpoint, set_rng_state
from ..data import CIFAR_LAYOUTS, CifarPickles, DatasetError, cifar_transforms
from ..evaluate import device_name
from ..genotype import Genotype, parse_genotypes, save_genotype, thaw, write_text_atomic
from ..ops import FactorizedReduce
from ..zoo import DATASET_STATS, NUM_CLASSES
from .derive import derive
from .supernet import SearchNetwork

Batch = Tuple[torch.Tensor, torch.Tensor]
SEARCH_DATASETS = tuple(CIFAR_LAYOUTS)


@dataclass
class SearchConfig:
    """Everything a search run depends on; ``None`` fields take the algorithm's paper defaults."""

    dataset: str = "cifar10"
    data_dir: str = "data"
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    init_channels: int = 16
    layers: int = 8
    nodes: int = 4
    seed: int = 2
    train_portion: float = 0.5
    lr: Optional[float] = None
    lr_min: Optional[float] = None
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: Optional[float] = None
    arch_betas: Tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    arch_warmup: Optional[int] = None  # epochs of weights-only training before alpha moves (PC-DARTS: 15)
    num_workers: int = 2
    channels_last: bool = True  # activations in NHWC: same math, faster depthwise convolutions on CPU
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    options: Dict[str, Any] = field(default_factory=dict)  # the algorithm's own (order, frc, tau, K)


#: Defaults of the bi-level loop (DARTS's ``train_search.py``); an algorithm overrides its paper's.
LOOP_DEFAULTS = dict(epochs=50, batch_size=64, lr=0.025, lr_min=0.001, arch_lr=3e-4, arch_warmup=0)


class SearchAlgorithm:
    """One search method on the shared parts. Subclasses set ``name``, ``defaults`` and ``network``."""

    name = ""
    defaults: Dict[str, Any] = {}
    #: the authors' order within a step: DARTS and PC-DARTS update alpha first, GDAS the weights first
    arch_first = True
    #: genotype derivation: two distinct inputs per node (DARTS) or the two strongest pairs (GDAS)
    distinct_inputs = True

    def __init__(self, **options):
        self.options = options

    @property
    def label(self) -> str:
        """The variant's name, as used in genotype names (``darts_2nd``, ``gdas_frc``)."""
        return self.name

    def network(self, config: SearchConfig, num_classes: int) -> SearchNetwork:
        return SearchNetwork(config.init_channels, num_classes, config.layers, config.nodes)

    def start_epoch(self, model: SearchNetwork, epoch: int, epochs: int) -> Dict[str, Any]:
        """Per-epoch schedule of the algorithm (GDAS's tau); returns what the record should note."""
        return {}

    def arch_gradient(self, search: "BiLevel", train: Batch, valid: Batch) -> Sequence[torch.Tensor]:
        """The first-order architecture gradient: d L_val(w, alpha) / d alpha (DARTS eq. 6 with xi = 0)."""
        with frozen(search.weights):
            return search.grad(search.loss(valid), search.alphas)


@contextlib.contextmanager
def frozen(params: Iterable[nn.Parameter]):
    """Treat ``params`` as constants inside the block: autograd neither computes their gradients nor keeps
    the activations that only those gradients need (the architecture step skips every weight gradient)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def search_split(config: SearchConfig) -> Tuple[Dataset, Dataset, int]:
    """The training set with the search augmentation (crop + flip, no cutout), split into the weights half
    (the first ``train_portion``) and the architecture half, as DARTS's ``train_search.py``."""
    if config.dataset not in SEARCH_DATASETS:
        raise DatasetError(f"search supports {', '.join(SEARCH_DATASETS)}; got --dataset {config.dataset!r}")
    mean, std = DATASET_STATS[config.dataset]
    data = CifarPickles(Path(config.data_dir).expanduser(), config.dataset, train=True,
                        transform=cifar_transforms(mean, std, train=True, cutout=0))
    split = int(math.floor(config.train_portion * len(data)))
    if split < 1 or split >= len(data):
        raise DatasetError(f"{config.dataset}: {len(data)} training images cannot be split at "
                           f"--train-portion {config.train_portion}")
    return Subset(data, range(split)), Subset(data, range(split, len(data))), NUM_CLASSES[config.dataset]


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> float:
    return (logits.argmax(-1) == target).float().mean().item() * 100


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


def channels_last_safe(model: nn.Module) -> bool:
    """False for supernets so narrow that a factorized reduction's convolutions have fewer than 4 output
    channels: torch's channels-last CPU convolution backward corrupts memory there (torch 2.14, seen with
    ``--init-channels 4`` and PC-DARTS at 8), so those stay NCHW."""
    return all(m.conv_1.out_channels >= 4 for m in model.modules() if isinstance(m, FactorizedReduce))


def with_defaults(algorithm: SearchAlgorithm, config: SearchConfig) -> SearchConfig:
    """``config`` with its unset fields filled from the algorithm's paper defaults and the loop's."""
    filled = {key: value for key, value in {**LOOP_DEFAULTS, **algorithm.defaults}.items()
              if getattr(config, key) is None}
    return dataclasses.replace(config, **filled, options={**algorithm.options, **config.options})


class BiLevel:
    """The two optimisation steps of the search on a supernet (no data, no epochs: see ``Search``)."""

    def __init__(self, algorithm: SearchAlgorithm, model: SearchNetwork, config: SearchConfig):
        self.algorithm, self.model, self.config = algorithm, model, config
        self.device = next(model.parameters()).device
        self.memory_format = (torch.channels_last if config.channels_last and channels_last_safe(model)
                              else torch.contiguous_format)
        model.to(memory_format=self.memory_format)
        self.weights = list(model.weights())
        self.alphas = model.arch_parameters()
        self.w_optimizer = torch.optim.SGD(self.weights, config.lr, momentum=config.momentum,
                                           weight_decay=config.weight_decay)
        self.a_optimizer = torch.optim.Adam(self.alphas, config.arch_lr, betas=tuple(config.arch_betas),
                                            weight_decay=config.arch_weight_decay)

    # -- the two steps -------------------------------------------------------------------------------
    def batch(self, batch) -> Batch:
        """A batch on the supernet's device, the images in its memory format."""
        images, labels = batch
        return (images.to(self.device, memory_format=self.memory_format, non_blocking=True),
                labels.to(self.device, non_blocking=True))

    def loss(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.model(batch[0]), batch[1])

    @staticmethod
    def grad(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        return torch.autograd.grad(loss, params)

    def lr(self) -> float:
        return self.w_optimizer.param_groups[0]["lr"]

    def weights_step(self, batch: Batch) -> Tuple[float, float]:
        """One SGD step on the training loss (alpha held constant); returns (loss, accuracy)."""
        self.w_optimizer.zero_grad(set_to_none=True)
        with frozen(self.alphas):
            logits = self.model(batch[0])
            loss = F.cross_entropy(logits, batch[1])
            loss.backward()
        nn.utils.clip_grad_norm_(self.weights, self.config.grad_clip)
        self.w_optimizer.step()
        return loss.item(), accuracy(logits.detach(), batch[1])

    def arch_step(self, train: Batch, valid: Batch) -> None:
        """One Adam step on the algorithm's architecture gradient."""
        for p, g in zip(self.alphas, self.algorithm.arch_gradient(self, train, valid)):
            p.grad = g
        self.a_optimizer.step()

    def step(self, train: Batch, valid: Optional[Batch]) -> Tuple[float, float]:
        """One search step: alpha on ``valid`` (skipped when None) and the weights on ``train``, in the
        algorithm's order; returns the training (loss, accuracy)."""
        if valid is not None and self.algorithm.arch_first:
            self.arch_step(train, valid)
        result = self.weights_step(train)
        if valid is not None and not self.algorithm.arch_first:
            self.arch_step(train, valid)
        return result


class Search(BiLevel):
    """One search run: ``BiLevel`` plus the data halves, the schedule, checkpoints and the record."""

    def __init__(self, algorithm: SearchAlgorithm, config: SearchConfig, out: Path, progress: bool = True):
        config = with_defaults(algorithm, config)
        self.out, self.progress = Path(out), progress
        torch.manual_seed(config.seed)
        self.train_data, self.valid_data, num_classes = search_split(config)
        super().__init__(algorithm, algorithm.network(config, num_classes).to(config.device), config)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_optimizer, config.epochs,
                                                                    eta_min=config.lr_min)
        self.epoch, self.elapsed, self.history = 0, 0.0, []

    # -- epochs ---------------------------------------------------------------------------------------
    def _loader(self, data: Dataset, epoch: int, shuffle: bool = True) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)  # the same order on resume
        return DataLoader(data, self.config.batch_size, shuffle=shuffle, generator=generator, drop_last=False,
                          num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def train_epoch(self, epoch: int, advance) -> Dict[str, float]:
        self.model.train()
        search_arch = epoch >= self.config.arch_warmup
        valid_batches = iter(self._loader(self.valid_data, epoch + 10_000))
        totals = [0.0, 0.0, 0]
        for batch in self._loader(self.train_data, epoch):
            train = self.batch(batch)
            valid = None
            if search_arch:
                try:
                    valid = self.batch(next(valid_batches))
                except StopIteration:
                    valid_batches = iter(self._loader(self.valid_data, epoch + 10_000 + totals[2]))
                    valid = self.batch(next(valid_batches))
            loss, acc = self.step(train, valid)
            n = len(train[1])
            totals[0] += loss * n
            totals[1] += acc * n
            totals[2] += n
            advance()
        return {"train_loss": totals[0] / totals[2], "train_acc": totals[1] / totals[2]}

    @torch.no_grad()
    def validate(self, epoch: int) -> Dict[str, float]:
        """The supernet on the architecture half (DARTS's ``infer``), in eval mode."""
        self.model.eval()
        loss, correct, n = 0.0, 0.0, 0
        for batch in self._loader(self.valid_data, epoch, shuffle=False):
            x, y = self.batch(batch)
            logits = self.model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(-1) == y).sum().item()
            n += len(y)
        return {"valid_loss": loss / n, "valid_acc": 100 * correct / n}

    # -- genotype, record, checkpoint ------------------------------------------------------------------
    def genotype(self) -> Genotype:
        cfg = self.config
        record = {"name": f"{self.algorithm.label}_{cfg.dataset}_seed{cfg.seed}".upper(), **derive(
            self.model, self.algorithm.distinct_inputs),
            "evaluations": [{"dataset": cfg.dataset, "network": "cifar", "C": 36, "layers": 20}]}
        return next(iter(parse_genotypes(record, str(self.out / "genotype.json")).values()))

    def record(self) -> Dict[str, Any]:
        normal = self.history[-1]["genotype"]["normal"] if self.history else []
        hours = self.elapsed / 3600
        arch = {name: p.detach().cpu().tolist() for name, p in self.model.arch.named_parameters()}
        return {
            "algorithm": self.algorithm.label, "config": thaw(dataclasses.asdict(self.config)),
            "seed": self.config.seed, "versions": versions(), "device": device_name(self.device),
            "wall_time_s": round(self.elapsed, 3),
            ("gpu_hours" if self.device.type == "cuda" else "cpu_hours"): round(hours, 6),
            "peak_memory": peak_memory(self.device), "epochs_done": self.epoch, "epochs": self.history,
            "architecture": arch, "skip_connections_normal": sum(op == "skip_connect" for op, _ in normal),
        }

    def save(self, genotype: Genotype) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        state = {"epoch": self.epoch, "elapsed": self.elapsed, "history": json.dumps(self.history),
                 "w_optimizer": self.w_optimizer.state_dict(), "a_optimizer": self.a_optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                 "config": json.dumps(thaw(dataclasses.asdict(self.config)))}
        save_checkpoint(self.out / "checkpoint", self.model, state)
        search = {"algorithm": self.algorithm.label, "dataset": self.config.dataset, "seed": self.config.seed,
                  "epochs": self.epoch, "record": "search.json"}
        save_genotype(genotype, self.out / "genotype.json", search)
        write_text_atomic(self.out / "search.json", json.dumps(self.record(), indent=2) + "\n")

    def resume(self) -> bool:
        """Continue from ``out/checkpoint`` if one is there; False when there is nothing to resume."""
        path = find_checkpoint(self.out / "checkpoint")
        if path is None:
            return False
        state = load_state(path)
        saved = json.loads(state["config"])
        mine = thaw(dataclasses.asdict(self.config))
        speed_only = ("data_dir", "num_workers", "device", "channels_last")
        changed = sorted(k for k in mine if k not in speed_only and saved.get(k) != mine[k])
        if changed:
            raise ValueError(f"{path} was written by a run with other settings ({', '.join(changed)}); "
                             "resume with the same options or use another --out")
        load_weights(path, self.model)
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.a_optimizer.load_state_dict(state["a_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.epoch, self.elapsed, self.history = state["epoch"], state["elapsed"], json.loads(state["history"])
        return True

    def run(self) -> Dict[str, Any]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        steps = math.ceil(len(self.train_data) / self.config.batch_size)
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[status]}")]
        with Progress(*columns, disable=not self.progress) as bar:
            task = bar.add_task(self.algorithm.label, total=steps * self.config.epochs,
                                completed=steps * self.epoch, status="")
            while self.epoch < self.config.epochs:
                epoch, start = self.epoch, time.perf_counter()
                notes = self.algorithm.start_epoch(self.model, epoch, self.config.epochs)
                lr = self.lr()
                stats = self.train_epoch(epoch, lambda: bar.advance(task))
                stats.update(self.validate(epoch))
                self.scheduler.step()
                self.elapsed += time.perf_counter() - start
                self.epoch += 1
                genotype = self.genotype()
                self.history.append({"epoch": epoch, "lr": lr, **notes, **{k: round(v, 4) for k, v in stats.items()},
                                     "genotype": {"normal": [list(e) for e in genotype.normal],
                                                  "reduce": None if genotype.reduce is None
                                                  else [list(e) for e in genotype.reduce]}})
                self.save(genotype)
                bar.update(task, status=f"epoch {self.epoch}/{self.config.epochs} train {stats['train_acc']:.1f}% "
                                        f"valid {stats['valid_acc']:.1f}%")
        if not self.history:  # nothing to do (epochs=0): still write what a search writes
            self.save(self.genotype())
        return self.record()

