"""Train a zoo architecture (or a genotype file) with its paper's recipe; resumable at every epoch.

The loop is DARTS's ``train.py``: per epoch, set the learning rate and the linearly ramped drop-path
probability, train with the auxiliary loss (weight ``auxiliary_weight``) and gradient clipping, then
evaluate on the test split. Every epoch ends in an atomic checkpoint (weights, optimizer, RNG and data
order) and a rewritten ``metrics.jsonl``; ``resume=True`` continues from it, and in deterministic mode
reproduces the losses of an uninterrupted run. A run holds its folder locked, never writes over another run
(or a user's files) and never saves non-finite weights.

Under torchrun each process trains a replica (``DistributedDataParallel``) on its share of every batch: the
batch size stays the global batch, so the learning rate keeps its meaning; the batches of an epoch (order and
augmentation: ``batched.BatchedCifar``, ``data.epoch_loader``) do not depend on the number of processes. Batch
norm normalises each process's share, as the papers' multi-GPU runs did, or the whole batch with ``sync_bn``.
"""
import json
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..language.lm import LMConfig, LMError, train_language_model
from ..models.networks import NetworkBase, build_network
from ..registry.genotype import Genotype, TEXT_DATASETS
from ..registry.summary import family
from ..registry.zoo import NUM_CLASSES, data_config
from ..resolver import resolve
from . import distributed
from .batched import BatchedCifar
from .checkpoint import CheckpointError, find_checkpoint, load_state, load_weights
from .data import IMAGE_SOURCES, DatasetError, DataSpec, build_dataset, epoch_loader
from .execution import Execution
from .recipes import TrainConfig, paper_recipe, read_config_file
from .run import Run, saved_settings, to_stderr


@dataclass(frozen=True)
class Target:
    """What to build: a genotype as one network, for one dataset."""

    genotype: Genotype
    network: str
    dataset: str
    model_name: Optional[str] = None  # the zoo model, when it is one

    @classmethod
    def of(cls, name: str, dataset: str) -> "Target":
        """``name`` (``nas_zoo.resolve``) on ``dataset``: the network its paper evaluated there, else the
        genotype's setting for the dataset, else the dataset's default network."""
        if dataset not in IMAGE_SOURCES:
            raise DatasetError(f"dataset {dataset!r} is not one of: {', '.join(IMAGE_SOURCES)} (images), "
                               f"{', '.join(TEXT_DATASETS)} (language models)")
        lookup = "imagenet" if dataset == "folder" else dataset  # a class-folder dataset is built as ImageNet's
        resolved = resolve(name, lookup)
        if resolved.model is not None:
            return cls(resolved.genotype, resolved.model.network, dataset, resolved.model.name)
        setting = resolved.genotype.evaluation(lookup)
        network = setting["network"] if setting else ("imagenet" if lookup == "imagenet" else "cifar")
        return cls(resolved.genotype, network, dataset)

    def recipe(self) -> TrainConfig:
        """The paper's training recipe for this network on this dataset."""
        return paper_recipe(self.genotype, family(self.genotype), self.dataset, self.network)

    def build(self, config: TrainConfig, num_classes: Optional[int] = None) -> NetworkBase:
        auxiliary = config.auxiliary_weight > 0 and not self.network.startswith("bcnn")
        model = build_network(self.genotype, self.network, C=config.init_channels, layers=config.layers,
                              num_classes=num_classes or NUM_CLASSES.get(self.dataset, 1000), auxiliary=auxiliary,
                              drop_path_rate=config.drop_path_prob, enhancement_layers=config.en_layers)
        model.pretrained_cfg = dict(data_config(self.network, self.dataset), num_classes=model.num_classes)
        return model


#: Settings a resumed run may change: they do not change what it computes (epochs only stretches the schedule).
RESUMABLE = ("epochs", "num_workers", "compile")


def device_for_run(name: Optional[str] = None) -> torch.device:
    """``name`` (cpu, cuda, cuda:1 ...), checked to be here; by default the GPU when there is one."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r} is not cpu, cuda or cuda:N")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: no such CUDA GPU is visible here; use --device cpu")
    return device


def architecture_difference(state: Mapping[str, Any], target: Target) -> Optional[str]:
    """How the network a checkpoint holds differs from ``target`` (a genotype can be rewired without changing
    any weight's shape, so the weights alone cannot tell); None when it is the same."""
    if state.get("network") != target.network:
        return f"network {state.get('network')!r} in the checkpoint, {target.network!r} asked for"
    stored, given = state.get("genotype") or {}, target.genotype.to_dict()
    for key in ("normal", "normal_concat", "reduce", "reduce_concat"):
        a, b = stored.get(key), given[key]
        if a != b:
            if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
                key, a, b = f"{key}[{i}]", a[i], b[i]
            return f"{key} {json.dumps(a)} in the checkpoint, {json.dumps(b)} in {target.genotype.name}"
    return None


def load_trained(target: Target, path, config: TrainConfig,
                 num_classes: Optional[int] = None) -> Tuple[NetworkBase, TrainConfig]:
    """The network in a run's checkpoint (its folder, the run's folder, or a bare ``.safetensors`` file built
    with ``config``), checked to be ``target``'s architecture, and the settings that sized it; a save killed
    mid-swap leaves ``.old``, read too."""
    path = Path(path)
    found = None if path.is_file() else find_checkpoint(path) or find_checkpoint(path / "checkpoint")
    if found is not None:
        state = load_state(found)
        difference = architecture_difference(state, target)
        if difference:
            raise CheckpointError(f"{found} holds another architecture ({difference}); evaluate it with the "
                                  "genotype it was trained with")
        config, num_classes = TrainConfig(**state["config"]), state.get("num_classes", num_classes)
    model = target.build(config, num_classes)
    load_weights(found or path, model)
    return model, config


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader, device: torch.device,
                    execution: Optional[Execution] = None) -> Dict[str, float]:
    """Top-1 / top-5 error (%) and mean cross-entropy of ``model`` over ``loader``, in a training run's
    ``execution`` (its precision), else under autocast on GPUs. Under torchrun ``loader`` is this rank's share
    (``epoch_loader(..., shuffle=False)``, ``BatchedCifar``): the sums are added up over the ranks."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss = correct1 = correct5 = total = 0.0
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with execution.autocast() if execution else torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = model(images)
        loss += criterion(logits.float(), targets).item()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top5[:, 0] == targets).sum().item()
        correct5 += (top5 == targets[:, None]).any(dim=1).sum().item()
        total += len(targets)
    loss, correct1, correct5, total = distributed.sum_values([loss, correct1, correct5, total], device)
    return dict(top1_error=100 * (1 - correct1 / total), top5_error=100 * (1 - correct5 / total),
                loss=loss / total, images=int(total))


def train_named(name: str, dataset: str, data_dir, out: Optional[Path] = None, resume: bool = False,
                config: Optional[Path] = None, overrides: Optional[Mapping[str, Any]] = None, download: bool = False,
                device: Optional[str] = None, log: Callable[[str], None] = to_stderr):
    """Train ``name`` (``nas_zoo.resolve``) on ``dataset`` with its paper's recipe, the fields in the JSON file
    ``config`` and then ``overrides`` on top: ``TrainConfig`` fields for images, ``LMConfig`` ones (rnn/train.py's
    names) for the corpora. A resumed run starts from its saved settings. The run goes to ``out`` (default
    ``runs/MODEL-DATASET``); returns the per-epoch metrics, or a language model's best perplexities."""
    values = {**read_config_file(config), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    if dataset in TEXT_DATASETS:
        lm_fields = [f.name for f in fields(LMConfig)]
        given = sorted(set(values) & {f.name for f in fields(TrainConfig)} - set(lm_fields))
        given += [k for k, v in (("download", download), ("device", device)) if v]
        if given:
            raise LMError(f"{', '.join(given)}: not for a language model ({dataset}), which trains on the CPU with "
                          f"rnn/train.py's settings: {', '.join(lm_fields)}")
        distributed.one_process(f"training a language model ({dataset})")
        return train_language_model(name, dataset, data_dir, out, resume, values, log)
    target = Target.of(name, dataset)
    out = Path(out or Path("runs") / f"{target.model_name or target.genotype.name}-{dataset}")
    saved = saved_settings(out) if resume else None
    recipe = (TrainConfig(**saved["config"]) if saved else target.recipe()).override(values)
    return train(target, recipe, DataSpec(dataset, data_dir, download), out, resume, log, device)


def train(target: Target, config: TrainConfig, data: DataSpec, out: Path, resume: bool = False,
          log: Callable[[str], None] = to_stderr, device: Optional[str] = None,
          progress: bool = True) -> List[Dict[str, Any]]:
    """Run (or resume) training into ``out``; returns the per-epoch metrics.

    ``config`` of a resumed run must be the saved one (``run.saved_settings``) up to the ``RESUMABLE`` fields.
    """
    run = Run(out, {"dataset": target.dataset, "config": config.to_dict()}, RESUMABLE, progress, log)
    distributed.split_batch(config.batch_size)
    device = distributed.start(device_for_run(device))
    with run.start(resume) as state:
        if state is not None:
            _check_resume(state, target, config, run)
        return _train(run, state, target, config, data, device)


def _train(run: Run, state: Optional[Mapping[str, Any]], target: Target, config: TrainConfig, data: DataSpec,
           device: torch.device) -> List[Dict[str, Any]]:
    torch.manual_seed(config.seed + distributed.rank())  # DDP starts every rank from rank 0's weights
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    probe = target.build(config)
    train_set = build_dataset(DataSpec(data.dataset, data.data_dir, data.download, config.cutout_length),
                              probe.pretrained_cfg, train=True)
    test_set = build_dataset(data, probe.pretrained_cfg, train=False)
    num_classes = len(train_set.classes) if data.dataset == "folder" else None
    model = target.build(config, num_classes) if num_classes else probe
    if config.sync_bn:
        model = distributed.sync_batch_norm(model, device)
    execution = Execution(device, config.precision, config.channels_last, config.compile)
    execution.prepare(model)
    optimizer = torch.optim.SGD(model.parameters(), config.learning_rate, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smooth)
    order = torch.Generator().manual_seed(config.seed)
    start = 0
    if state is not None:
        run.load(model, state)
        optimizer.load_state_dict(state["optimizer"])
        execution.scaler.load_state_dict(state["scaler"])
        order.set_state(state["data_order"])
        start = state["epoch"]
        run.log(f"resumed from {run.checkpoint} at epoch {start}")
    forward = replicate(model, device)

    if config.data_path == "batched":
        stats = probe.pretrained_cfg["mean"], probe.pretrained_cfg["std"]
        batched = BatchedCifar(train_set, config.batch_size, device, *stats, order, config.cutout_length)
        test_loader = BatchedCifar(test_set, config.batch_size, device, *stats)

        def train_loader(epoch: int):  # its generator draws each epoch's choices
            return batched
    else:
        test_loader = epoch_loader(test_set, config.batch_size, config.seed, 0, False, config.num_workers)

        def train_loader(epoch: int):
            return epoch_loader(train_set, config.batch_size, config.seed, epoch, True, config.num_workers)
    steps = len(train_loader(0))
    with run.display(steps * config.epochs, steps * start) as display:
        for epoch in range(start, config.epochs):
            lr = config.lr_at(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.drop_path_prob = config.drop_path_prob * epoch / config.epochs
            display.describe(f"epoch {epoch + 1}/{config.epochs}")
            trained = _train_epoch(model, forward, train_loader(epoch), optimizer, execution, criterion, config,
                                   epoch, display)
            distributed.broadcast_(list(model.buffers()))  # every rank evaluates, and rank 0 saves, its statistics
            metrics = dict(epoch=epoch + 1, lr=lr, drop_path_prob=model.drop_path_prob,
                           threads=torch.get_num_threads(), devices=distributed.world_size(),
                           precision=execution.precision, channels_last=execution.channels_last, **trained,
                           **{f"test_{k}": v
                              for k, v in evaluate_loader(model, test_loader, device, execution).items()})
            if not math.isfinite(metrics["test_loss"]):
                raise FloatingPointError(f"epoch {epoch}: the test loss became {metrics['test_loss']}; the "
                                         f"checkpoint after {epoch} epochs is kept; lower --learning-rate")
            display.line(f"epoch {epoch + 1}/{config.epochs}: train loss {metrics['train_loss']:.4f} "
                         f"acc {metrics['train_acc']:.2f}%  test top-1 error {metrics['test_top1_error']:.2f}%  "
                         f"({metrics['images_per_s']:.0f} img/s)")
            run.save(model, dict(
                epoch=epoch + 1, config=config.to_dict(), optimizer=optimizer.state_dict(),
                scaler=execution.scaler.state_dict(), data_order=order.get_state(), devices=distributed.world_size(),
                genotype=target.genotype.to_dict(),
                network=target.network, dataset=target.dataset, model=target.model_name or "",
                num_classes=model.num_classes), metrics)
    return run.history


def _check_resume(state: Mapping[str, Any], target: Target, config: TrainConfig, run: Run) -> None:
    """Refuse to continue a run as another architecture; say what a change of ``epochs`` does."""
    difference = architecture_difference(state, target)
    if difference:
        raise ValueError(f"{run.checkpoint} holds a run of another architecture ({difference}); resume it with "
                         "its own genotype or use another --out")
    saved = state["config"]
    if config.epochs < state["epoch"]:
        raise ValueError(f"{run.checkpoint} has trained {state['epoch']} epochs already; --epochs {config.epochs} "
                         "cannot undo them")
    if config.epochs != saved["epochs"]:
        run.log(f"epochs {saved['epochs']} -> {config.epochs}: from epoch {state['epoch']} on, the "
                f"{config.lr_scheduler} learning rate and the drop-path ramp follow a {config.epochs}-epoch run (no "
                f"longer the same run as one trained for {saved['epochs']} epochs)")


class TrainingForward(nn.Module):
    """``network.forward_train`` as a module's forward, which is what ``DistributedDataParallel`` wraps."""

    def __init__(self, network: NetworkBase):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor):
        return self.network.forward_train(images)


def replicate(model: NetworkBase, device: torch.device) -> Callable:
    """``model.forward_train``, under torchrun as one replica of ``DistributedDataParallel``: it starts every rank
    from rank 0's weights and buffers, averages the gradients during the backward pass, and gives every forward
    rank 0's batch-norm statistics."""
    if distributed.world_size() == 1:
        return model.forward_train
    return DistributedDataParallel(TrainingForward(model), device_ids=[device.index] if device.type == "cuda" else None)


def _train_epoch(model, forward, loader, optimizer, execution: Execution, criterion, config: TrainConfig, epoch,
                 display) -> Dict[str, float]:
    model.train()
    device = execution.device
    loss_sum = correct = seen = 0.0
    started = time.perf_counter()
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        loss, logits = execution.train_step(model, images, targets, optimizer, criterion, config.auxiliary_weight,
                                            config.grad_clip, forward)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"epoch {epoch + 1}: the training loss became {loss.item()}; "
                                     "lower --learning-rate")
        loss_sum += loss.item() * len(targets)
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(targets)
        rate = seen * distributed.world_size() / (time.perf_counter() - started)
        display.advance(f"loss {loss_sum / seen:.3f} acc {100 * correct / seen:.1f}% {rate:.0f} img/s")
    loss_sum, correct, seen = distributed.sum_values([loss_sum, correct, seen], device)
    return dict(train_loss=loss_sum / seen, train_acc=100 * correct / seen, images_per_s=rate)
