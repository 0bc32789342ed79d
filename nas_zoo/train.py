"""Train a zoo architecture (or a genotype file) with its paper's recipe; resumable at every epoch.

The loop is DARTS's ``train.py``: per epoch, set the learning rate and the linearly ramped drop-path
probability, train with the auxiliary loss (weight ``auxiliary_weight``) and gradient clipping, then
evaluate on the test split. Every epoch ends in an atomic checkpoint (weights, optimizer, RNG and data
order) and a rewritten ``metrics.jsonl``; ``resume=True`` continues from it, and in deterministic mode
reproduces the losses of an uninterrupted run.
"""
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import find_checkpoint, load_state, load_weights, rng_state, save_checkpoint, set_rng_state
from .data import DataSpec, build_dataset
from .genotype import Genotype, write_text_atomic
from .networks import NetworkBase, build_network
from .recipes import TrainConfig
from .zoo import NUM_CLASSES, data_config


@dataclass(frozen=True)
class Target:
    """What to build: a genotype as one network, for one dataset."""

    genotype: Genotype
    network: str
    dataset: str
    model_name: Optional[str] = None  # the zoo model, when it is one

    def build(self, config: TrainConfig, num_classes: Optional[int] = None) -> NetworkBase:
        auxiliary = config.auxiliary_weight > 0 and not self.network.startswith("bcnn")
        model = build_network(self.genotype, self.network, C=config.init_channels, layers=config.layers,
                              num_classes=num_classes or NUM_CLASSES.get(self.dataset, 1000), auxiliary=auxiliary,
                              drop_path_rate=config.drop_path_prob)
        model.pretrained_cfg = dict(data_config(self.network, self.dataset), num_classes=model.num_classes)
        return model


def device_for_run() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_loader(dataset, batch_size: int, shuffle: bool, num_workers: int, generator=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=generator, pin_memory=torch.cuda.is_available(), drop_last=False,
                      persistent_workers=False)


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: DataLoader, device: torch.device,
                    on_batch: Optional[Callable[[int], None]] = None) -> Dict[str, float]:
    """Top-1 / top-5 error (%) and mean cross-entropy of ``model`` over ``loader``."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss = correct1 = correct5 = total = 0.0
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = model(images)
        loss += criterion(logits.float(), targets).item()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top5[:, 0] == targets).sum().item()
        correct5 += (top5 == targets[:, None]).any(dim=1).sum().item()
        total += len(targets)
        if on_batch:
            on_batch(len(targets))
    return dict(top1_error=100 * (1 - correct1 / total), top5_error=100 * (1 - correct5 / total),
                loss=loss / total, images=int(total))


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=True)


def train(target: Target, config: TrainConfig, data: DataSpec, out: Path, resume: bool = False,
          log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Run (or resume) training into ``out``; returns the per-epoch metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise PermissionError(f"{out}: output directory is not writable; choose another --out")
    device = device_for_run()
    torch.manual_seed(config.seed)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    probe = target.build(config)
    train_set = build_dataset(DataSpec(data.dataset, data.data_dir, data.download, config.cutout_length),
                              probe.pretrained_cfg, train=True)
    test_set = build_dataset(data, probe.pretrained_cfg, train=False)
    num_classes = len(train_set.classes) if data.dataset == "folder" else None
    model = target.build(config, num_classes) if num_classes else probe
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), config.learning_rate, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda")
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smooth)
    order = torch.Generator().manual_seed(config.seed)
    history: List[Dict[str, Any]] = []
    start = 0

    checkpoint = find_checkpoint(out / "checkpoint") if resume else None
    if resume and checkpoint is None:
        log(f"no checkpoint in {out / 'checkpoint'}; starting from epoch 0")
    if checkpoint is not None:
        state = load_state(checkpoint)
        if state["config"] != config.to_dict():
            changed = sorted(k for k, v in config.to_dict().items() if state["config"].get(k) != v)
            raise ValueError(f"{checkpoint} was trained with other settings ({', '.join(changed)}); "
                             "resume with the same ones or use another --out")
        load_weights(checkpoint, model)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        order.set_state(state["data_order"])
        history, start = state["history"], state["epoch"]
        log(f"resumed from {checkpoint} at epoch {start}")

    train_loader = make_loader(train_set, config.batch_size, True, config.num_workers, order)
    test_loader = make_loader(test_set, config.batch_size, False, config.num_workers)
    for epoch in range(start, config.epochs):
        lr = config.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.drop_path_prob = config.drop_path_prob * epoch / config.epochs
        metrics = dict(epoch=epoch + 1, lr=lr, drop_path_prob=model.drop_path_prob, threads=torch.get_num_threads(),
                       **_train_epoch(model, train_loader, optimizer, scaler, criterion, config, device, epoch),
                       **{f"test_{k}": v for k, v in evaluate_loader(model, test_loader, device).items()})
        history.append(metrics)
        log(f"epoch {epoch + 1}/{config.epochs}: train loss {metrics['train_loss']:.4f} "
            f"acc {metrics['train_acc']:.2f}%  test top-1 error {metrics['test_top1_error']:.2f}%  "
            f"({metrics['images_per_s']:.0f} img/s)")
        save_checkpoint(out / "checkpoint", model, dict(
            epoch=epoch + 1, config=config.to_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
            rng=rng_state(), data_order=order.get_state(), history=history, genotype=target.genotype.to_dict(),
            network=target.network, dataset=target.dataset, model=target.model_name or "", num_classes=model.num_classes))
        write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))
    return history


def _train_epoch(model, loader, optimizer, scaler, criterion, config: TrainConfig, device, epoch) -> Dict[str, float]:
    model.train()
    loss_sum = correct = seen = 0.0
    started = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task(f"epoch {epoch + 1}/{config.epochs}", total=len(loader), stats="")
        for images, targets in loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                logits, auxiliary = model.forward_train(images)
                loss = criterion(logits, targets)
                if auxiliary is not None:
                    loss = loss + config.auxiliary_weight * criterion(auxiliary, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"epoch {epoch + 1}: the training loss became {loss.item()}; "
                                         "lower --learning-rate")
            loss_sum += loss.item() * len(targets)
            correct += (logits.argmax(1) == targets).sum().item()
            seen += len(targets)
            rate = seen / (time.perf_counter() - started)
            progress.update(task, advance=1, stats=f"loss {loss_sum / seen:.3f} acc {100 * correct / seen:.1f}% "
                                                   f"{rate:.0f} img/s")
    return dict(train_loss=loss_sum / seen, train_acc=100 * correct / seen, images_per_s=rate)
