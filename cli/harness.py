"""``nas-zoo train`` and ``nas-zoo evaluate``: the papers' recipes and the evaluation table."""
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from nas_zoo.harness import distributed
from nas_zoo.harness.data import IMAGE_SOURCES, MissingDataError
from nas_zoo.harness.evaluate import evaluate_named
from nas_zoo.registry.genotype import TEXT_DATASETS
from nas_zoo.files import write_text_atomic
from nas_zoo.threads import set_threads
from nas_zoo.harness.train import train_named

from .output import console, fail, library_errors, threads_option


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


def _recipe(help: str, shown: str = "the paper's"):
    """An option that overrides one field of the paper's recipe."""
    return typer.Option(None, help=help, show_default=shown)


def train_command(
    name: str = typer.Argument(..., help="zoo model or genotype name, or a genotype file"),
    dataset: str = typer.Option(..., help=f"one of {', '.join(IMAGE_SOURCES + TEXT_DATASETS)}"),
    data_dir: Path = typer.Option(Path("data"), help="where the dataset lies (standard layouts)"),
    out: Optional[Path] = typer.Option(None, help="run directory", show_default="runs/NAME-DATASET"),
    resume: bool = typer.Option(False, help="continue from OUT/checkpoint"),
    download: bool = typer.Option(False, help="download CIFAR into --data-dir with torchvision first"),
    config: Optional[Path] = typer.Option(None, help="JSON file of training fields to override", show_default="none"),
    epochs: Optional[int] = _recipe("training epochs"),
    batch_size: Optional[int] = _recipe("batch size; under torchrun the global batch, split over the processes"),
    learning_rate: Optional[float] = _recipe("initial learning rate (SGD), for the global batch"),
    lr_scheduler: Optional[str] = _recipe("cosine, step (x0.97 per epoch) or linear"),
    momentum: Optional[float] = _recipe("SGD momentum"),
    weight_decay: Optional[float] = _recipe("weight decay"),
    grad_clip: Optional[float] = _recipe("gradient-norm clipping"),
    label_smooth: Optional[float] = _recipe("label smoothing"),
    auxiliary_weight: Optional[float] = _recipe("weight of the auxiliary head's loss; 0: no head"),
    drop_path_prob: Optional[float] = _recipe("drop-path probability, reached linearly at the last epoch"),
    cutout_length: Optional[int] = _recipe("cutout square side (CIFAR); 0: no cutout"),
    init_channels: Optional[int] = _recipe("network width C"),
    layers: Optional[int] = _recipe("cells"),
    en_layers: Optional[int] = _recipe("the broad network's enhancement cells (bcnn)", "the paper's 2"),
    seed: Optional[int] = _recipe("random seed", "0"),
    num_workers: Optional[int] = _recipe("data-loading worker processes (--data-path torchvision)", "2"),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--no-deterministic", show_default="off",
                                                 help="deterministic algorithms: a resumed run repeats the losses"),
    data_path: Optional[str] = _recipe("batched: CIFAR held and augmented on the training device; torchvision: "
                                       "a DataLoader of per-image transforms", "batched for CIFAR"),
    precision: Optional[str] = _recipe("auto, fp32, bf16 or fp16 (mixed precision; fp16 with loss scaling)",
                                       "auto: bf16, or fp16 before Ampere, on GPUs; fp32 on CPU"),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", show_default="on GPUs",
                                                 help="NHWC memory for the network and its inputs"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", show_default="off",
                                           help="torch.compile the network's parts between drop paths"),
    sync_bn: Optional[bool] = typer.Option(None, "--sync-bn/--no-sync-bn", show_default="off",
                                           help="under torchrun: batch norm over the whole batch, not each process's "
                                                "share"),
    settings: List[str] = typer.Option([], "--set", help="FIELD=VALUE: a training field (rnn/train.py's for ptb/wt2)",
                                       show_default="none"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ...", show_default="cuda when available"),
    threads: int = threads_option(),
) -> None:
    """Train with the paper's evaluation recipe; every field can be overridden (--config, then --set, then flags).

    Image models take the flags below; language models (ptb, wt2) --epochs, --batch-size, --seed and rnn/train.py's
    fields by --set or --config. --resume continues with the run's saved settings; it may raise --epochs and
    change --num-workers and --compile.

    Several processes: torchrun --nproc-per-node N -m nas_zoo.cli train ... (README, Several processes).
    --batch-size stays the global batch, split over the N processes, so the paper's --learning-rate applies
    as it is; to train with a larger global batch, scale the learning rate with it (linear scaling)."""
    set_threads(threads)
    flags = dict(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, lr_scheduler=lr_scheduler,
                 momentum=momentum, weight_decay=weight_decay, grad_clip=grad_clip, label_smooth=label_smooth,
                 auxiliary_weight=auxiliary_weight, drop_path_prob=drop_path_prob, cutout_length=cutout_length,
                 init_channels=init_channels, layers=layers, en_layers=en_layers, seed=seed, num_workers=num_workers,
                 deterministic=deterministic, data_path=data_path, precision=precision, channels_last=channels_last,
                 compile=compile, sync_bn=sync_bn)
    flags, settings = {k: v for k, v in flags.items() if v is not None}, parse_settings(settings)
    twice = sorted(set(flags) & set(settings))
    if twice:
        raise fail(f"{', '.join(twice)}: given by its flag and by --set; give it once")
    log = Console(stderr=True)
    with library_errors(out):
        try:
            train_named(name, dataset, data_dir, out, resume, config, {**settings, **flags}, download, device,
                        log=lambda message: log.print(message, highlight=False, markup=False, soft_wrap=True))
        except MissingDataError as e:  # the data's hint is for train only: evaluate has no --download
            raise fail(f"{e}{', or pass --download' if dataset.startswith('cifar') else ''}") from None


def evaluate_command(
    name: str = typer.Argument(..., help="zoo model or genotype name, or a genotype file"),
    dataset: str = typer.Option(..., help=f"one of {', '.join(IMAGE_SOURCES + TEXT_DATASETS)}"),
    data_dir: Optional[Path] = typer.Option(None, help="where the dataset lies; not needed with --no-accuracy",
                                            show_default="none"),
    checkpoint: Optional[Path] = typer.Option(None, help="a run's checkpoint directory or a .safetensors file",
                                              show_default="none: random weights"),
    pretrained: bool = typer.Option(False, help="the published weights of the model (Hub)"),
    accuracy: Optional[bool] = typer.Option(None, "--accuracy/--no-accuracy", help="evaluate on the test split",
                                            show_default="on"),
    speed: Optional[bool] = typer.Option(None, "--speed/--no-speed", help="measure latency (batch 1) and throughput "
                                         "(64)", show_default="on"),
    fast: bool = typer.Option(False, help="folded batch norm + channels-last for the speed figures"),
    batch_size: Optional[int] = typer.Option(None, help="batch size of the accuracy pass", show_default="128"),
    num_workers: Optional[int] = typer.Option(None, help="data-loading worker processes", show_default="2"),
    json_path: Optional[str] = typer.Option(None, "--json", help="write the result as JSON to PATH, or - for stdout",
                                            show_default="none"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ...", show_default="cuda when available"),
    threads: int = threads_option(),
) -> None:
    """Top-1/top-5 error, loss, params, FLOPs, latency and throughput (perplexity and tokens/s for ptb/wt2)."""
    set_threads(threads)
    with library_errors():
        result = evaluate_named(name, dataset, data_dir, checkpoint, pretrained, accuracy, speed, fast, batch_size,
                                num_workers, device)
    if not distributed.is_main():  # under torchrun every rank has the result; rank 0 reports it
        return
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
    # the heading is a line, not the table's title: it wraps between words, not inside them
    console.print(f"{result['model'] or result['genotype']} ({result['network']} network, C={result['C']}, "
                  f"{result['layers']} cells) on {result['dataset']}; {result['device']}", highlight=False)
    paper = result["paper_network"]
    if result["reported"] is None and paper is not None:
        console.print(f"not the paper's size: its figures (C={paper['C']}, {paper['layers']} cells) are left out",
                      highlight=False)
    columns = ["", "measured"] + (["paper"] if result["reported"] is not None else [])
    table = Table()
    for column in columns:
        table.add_column(column, justify="right" if column else "left")
    macs = next(iter(result["flops"].values()))

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    reported = result["reported"] or {}
    rows = [("top-1 error %", result.get("top1_error"), reported.get("test_error", reported.get("top1_error")), ".2f"),
            ("top-5 error %", result.get("top5_error"), reported.get("top5_error"), ".2f"),
            ("loss", result.get("loss"), None, ".4f"),
            ("params (M)", result["params"] / 1e6, reported.get("params_M"), ".3f"),
            ("mult-adds (M)", macs / 1e6, reported.get("mult_adds_M"), ".1f"),
            ("latency, batch 1 (ms)", result.get("latency_ms_batch1"), None, ".2f"),
            ("throughput, batch 64 (img/s)", result.get("throughput_batch64"), None, ".1f")]
    for label, measured, paper_value, spec in rows:
        table.add_row(*[label, fmt(measured, spec), fmt(paper_value, spec)][:len(columns)])
    console.print(table)
