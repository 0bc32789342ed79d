"""``nas-zoo train`` and ``nas-zoo evaluate``: the papers' recipes and the evaluation table."""
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from nas_zoo.data import IMAGE_SOURCES
from nas_zoo.evaluate import evaluate_named
from nas_zoo.genotype import TEXT_DATASETS, write_text_atomic
from nas_zoo.train import train_named

from .output import fail, library_errors


def parse_settings(pairs: List[str]) -> Dict[str, Any]:
    """``--set FIELD=VALUE`` pairs to overrides: JSON values (numbers, booleans), else the text (``cosine``)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"--set {pair!r}: expected FIELD=VALUE, e.g. --set epochs=40")
        try:
            overrides[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip().replace("-", "_")] = value
    return overrides


def train_command(
    name: str = typer.Argument(..., help="zoo model or genotype name, or a genotype file"),
    dataset: str = typer.Option(..., help=f"one of {', '.join(IMAGE_SOURCES + TEXT_DATASETS)}"),
    data_dir: Path = typer.Option(Path("data"), help="where the dataset lies (standard layouts)"),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/NAME-DATASET)"),
    resume: bool = typer.Option(False, help="continue from OUT/checkpoint"),
    download: bool = typer.Option(False, help="download CIFAR with torchvision first"),
    config: Optional[Path] = typer.Option(None, help="JSON file of training fields to override"),
    epochs: Optional[int] = typer.Option(None), batch_size: Optional[int] = typer.Option(None),
    learning_rate: Optional[float] = typer.Option(None), lr_scheduler: Optional[str] = typer.Option(None),
    momentum: Optional[float] = typer.Option(None), weight_decay: Optional[float] = typer.Option(None),
    grad_clip: Optional[float] = typer.Option(None), label_smooth: Optional[float] = typer.Option(None),
    auxiliary_weight: Optional[float] = typer.Option(None), drop_path_prob: Optional[float] = typer.Option(None),
    cutout_length: Optional[int] = typer.Option(None), init_channels: Optional[int] = typer.Option(None),
    layers: Optional[int] = typer.Option(None), seed: Optional[int] = typer.Option(None),
    en_layers: Optional[int] = typer.Option(None, help="the broad network's enhancement cells (bcnn; paper: 2)"),
    num_workers: Optional[int] = typer.Option(None),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--no-deterministic"),
    settings: List[str] = typer.Option([], "--set", help="FIELD=VALUE: a training field (rnn/train.py's for ptb/wt2)"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available)"),
) -> None:
    """Train with the paper's evaluation recipe; every field can be overridden (--config, then --set, then flags).

    Image models take the flags below; language models (ptb, wt2) --epochs, --batch-size, --seed and rnn/train.py's
    fields by --set or --config. --resume continues with the run's saved settings; it may raise --epochs and
    change --num-workers."""
    flags = dict(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, lr_scheduler=lr_scheduler,
                 momentum=momentum, weight_decay=weight_decay, grad_clip=grad_clip, label_smooth=label_smooth,
                 auxiliary_weight=auxiliary_weight, drop_path_prob=drop_path_prob, cutout_length=cutout_length,
                 init_channels=init_channels, layers=layers, en_layers=en_layers, seed=seed, num_workers=num_workers,
                 deterministic=deterministic)
    flags, settings = {k: v for k, v in flags.items() if v is not None}, parse_settings(settings)
    twice = sorted(set(flags) & set(settings))
    if twice:
        raise fail(f"{', '.join(twice)}: given by its flag and by --set; give it once")
    log = Console(stderr=True)
    with library_errors(out):
        train_named(name, dataset, data_dir, out, resume, config, {**settings, **flags}, download, device,
                    log=lambda message: log.print(message, highlight=False, markup=False, soft_wrap=True))


def evaluate_command(
    name: str = typer.Argument(..., help="zoo model or genotype name, or a genotype file"),
    dataset: str = typer.Option(..., help=f"one of {', '.join(IMAGE_SOURCES + TEXT_DATASETS)}"),
    data_dir: Optional[Path] = typer.Option(None, help="where the dataset lies; omit with --no-accuracy"),
    checkpoint: Optional[Path] = typer.Option(None, help="a run's checkpoint directory or a .safetensors file"),
    pretrained: bool = typer.Option(False, help="the published weights of the model (Hub)"),
    accuracy: Optional[bool] = typer.Option(None, "--accuracy/--no-accuracy", help="evaluate on the test split",
                                            show_default="on"),
    speed: Optional[bool] = typer.Option(None, "--speed/--no-speed", help="measure latency (batch 1) and throughput "
                                         "(64)", show_default="on"),
    fast: bool = typer.Option(False, help="folded batch norm + channels-last for the speed figures"),
    batch_size: Optional[int] = typer.Option(None, show_default="128"),
    num_workers: Optional[int] = typer.Option(None, show_default="2"),
    json_path: Optional[str] = typer.Option(None, "--json", help="write the result as JSON to PATH, or - for stdout"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available)"),
) -> None:
    """Top-1/top-5 error, loss, params, FLOPs, latency and throughput (perplexity and tokens/s for ptb/wt2)."""
    with library_errors():
        result = evaluate_named(name, dataset, data_dir, checkpoint, pretrained, accuracy, speed, fast, batch_size,
                                num_workers, device)
    if dataset in TEXT_DATASETS:  # no table for perplexities: JSON, on standard output by default
        _write_result(result, json_path or "-")
        return
    if json_path:
        _write_result(result, json_path)
    if json_path != "-":
        _print_result(result)


def _write_result(result: dict, json_path: str) -> None:
    """The result as JSON on standard output (``-``) or in a file, written atomically."""
    if json_path == "-":
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    try:
        write_text_atomic(Path(json_path), json.dumps(result, indent=2) + "\n")
    except OSError as e:
        raise fail(f"{json_path}: cannot write the result ({e.strerror})") from None


def _print_result(result: dict) -> None:
    reported = result["reported"] or {}
    table = Table(title=f"{result['model'] or result['genotype']} on {result['dataset']} ({result['device']})")
    table.add_column("")
    table.add_column("measured", justify="right")
    table.add_column("reported", justify="right")
    macs = next(iter(result["flops"].values()))

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    rows = [("top-1 error %", result.get("top1_error"), reported.get("test_error", reported.get("top1_error")), ".2f"),
            ("top-5 error %", result.get("top5_error"), reported.get("top5_error"), ".2f"),
            ("loss", result.get("loss"), None, ".4f"),
            ("params (M)", result["params"] / 1e6, reported.get("params_M"), ".3f"),
            ("mult-adds (M)", macs / 1e6, reported.get("mult_adds_M"), ".1f"),
            ("latency, batch 1 (ms)", result.get("latency_ms_batch1"), None, ".2f"),
            ("throughput, batch 64 (img/s)", result.get("throughput_batch64"), None, ".1f")]
    for label, measured, paper, spec in rows:
        table.add_row(label, fmt(measured, spec), fmt(paper, spec))
    Console().print(table)
