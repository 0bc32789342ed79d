"""``nas-zoo train`` and ``nas-zoo evaluate``: the papers' recipes and the evaluation table."""
import json
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import typer
from rich.console import Console
from rich.table import Table

from nas_zoo.checkpoint import CheckpointError, OutputError
from nas_zoo.data import IMAGE_SOURCES, DataSpec, DatasetError, MissingDataError, build_dataset
from nas_zoo.evaluate import device_name, measure_speed, model_figures, paper_figures
from nas_zoo.genotype import TEXT_DATASETS, write_text_atomic
from nas_zoo.recipes import TrainConfig, paper_recipe, read_config_file
from nas_zoo.summary import family
from nas_zoo.threads import set_threads
from nas_zoo.train import Target, device_for_run, evaluate_loader, load_trained, make_loader, saved_config, train
from nas_zoo.zoo import DATASET_TAGS, find_model

from . import lm
from .app import resolve_genotype
from .output import console, fail, threads_option



def resolve_target(name: str, dataset: str) -> Target:
    """A model name, genotype name or genotype file, for ``dataset``: the paper's network for it."""
    if dataset not in IMAGE_SOURCES:
        raise fail(f"--dataset {dataset!r} is not one of: {', '.join(IMAGE_SOURCES)}")
    genotype, model = resolve_genotype(name)
    lookup = "imagenet" if dataset == "folder" else dataset
    if model is not None or genotype.source.startswith("genotypes/"):
        try:
            spec = find_model(model or genotype.name, lookup)
            return Target(genotype, spec.network, dataset, spec.name)
        except KeyError:
            pass  # not evaluated on this dataset in its paper: use the default network below
    setting = genotype.evaluation(lookup)
    network = setting["network"] if setting else ("imagenet" if lookup == "imagenet" else "cifar")
    return Target(genotype, network, dataset, None)


def recipe_for(target: Target) -> TrainConfig:
    return paper_recipe(target.genotype, family(target.genotype), target.dataset, target.network)


def _default_out(target: Target) -> Path:
    return Path("runs") / f"{target.model_name or target.genotype.name}-{target.dataset}"


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
    batch_size: Optional[int] = _recipe("batch size"),
    learning_rate: Optional[float] = _recipe("initial learning rate (SGD)"),
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
    num_workers: Optional[int] = _recipe("data-loading worker processes", "2"),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--no-deterministic", show_default="off",
                                                 help="deterministic algorithms: a resumed run repeats the losses"),
    settings: List[str] = typer.Option([], "--set", help="FIELD=VALUE: language-model fields (rnn/train.py names)",
                                       show_default="none"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ...", show_default="cuda when available"),
    threads: int = threads_option(),
) -> None:
    """Train with the paper's evaluation recipe; every field can be overridden (flags win over --config).

    --resume continues with the run's saved settings; it may raise --epochs and change --num-workers."""
    set_threads(threads)
    if dataset in TEXT_DATASETS:
        overrides = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, seed=seed).items() if v is not None}
        lm.train_language_model(name, dataset, data_dir, out or Path("runs") / f"{name}-{dataset}", resume,
                                {**overrides, **lm.parse_settings(settings)})
        return
    target = resolve_target(name, dataset)
    overrides = dict(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, lr_scheduler=lr_scheduler,
                     momentum=momentum, weight_decay=weight_decay, grad_clip=grad_clip, label_smooth=label_smooth,
                     auxiliary_weight=auxiliary_weight, drop_path_prob=drop_path_prob, cutout_length=cutout_length,
                     init_channels=init_channels, layers=layers, en_layers=en_layers, seed=seed, num_workers=num_workers,
                     deterministic=deterministic)
    out = out or _default_out(target)
    try:
        base = (saved_config(out) if resume else None) or recipe_for(target)
        recipe = base.override(read_config_file(config)).override(overrides)
        log = Console(stderr=True)
        train(target, recipe, DataSpec(dataset, data_dir, download), out, resume, device=device,
              log=lambda message: log.print(message, highlight=False, markup=False, soft_wrap=True))
    except MissingDataError as e:
        raise fail(f"{e}{', or pass --download' if dataset.startswith('cifar') else ''}") from None
    except (DatasetError, CheckpointError, OutputError, ValueError, PermissionError, FloatingPointError) as e:
        raise fail(str(e)) from None
    except OSError as e:
        raise fail(f"{e.filename or out}: {e.strerror}") from None


def _load_model(target: Target, checkpoint: Optional[Path], pretrained: bool,
                num_classes: Optional[int]) -> Tuple[torch.nn.Module, TrainConfig]:
    """The network to evaluate and the recipe that sized it: from a checkpoint (its run's width and depth),
    the Hub, or as built."""
    recipe = recipe_for(target)
    if checkpoint is not None:
        return load_trained(target, checkpoint, recipe, num_classes)
    if pretrained:
        if target.model_name is None:
            raise ValueError(f"{target.genotype.name} has no zoo model for {target.dataset}; pass --checkpoint")
        import timm

        tag = DATASET_TAGS["imagenet" if target.dataset == "folder" else target.dataset]
        return timm.create_model(f"{target.model_name}.{tag}", pretrained=True), recipe
    return target.build(recipe, num_classes), recipe


def evaluate_command(
    name: str = typer.Argument(..., help="zoo model or genotype name, or a genotype file"),
    dataset: str = typer.Option(..., help=f"one of {', '.join(IMAGE_SOURCES + TEXT_DATASETS)}"),
    data_dir: Optional[Path] = typer.Option(None, help="where the dataset lies; not needed with --no-accuracy",
                                            show_default="none"),
    checkpoint: Optional[Path] = typer.Option(None, help="a run's checkpoint directory or a .safetensors file",
                                              show_default="none: random weights"),
    pretrained: bool = typer.Option(False, help="the published weights of the model (Hub)"),
    accuracy: bool = typer.Option(True, "--accuracy/--no-accuracy", help="evaluate on the test split"),
    speed: bool = typer.Option(True, "--speed/--no-speed", help="measure latency (batch 1) and throughput (64)"),
    fast: bool = typer.Option(False, help="folded batch norm + channels-last for the speed figures"),
    batch_size: int = typer.Option(128, help="batch size of the accuracy pass"),
    num_workers: int = typer.Option(2, help="data-loading worker processes"),
    json_path: Optional[str] = typer.Option(None, "--json", help="write the result as JSON to PATH, or - for stdout",
                                            show_default="none"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ...", show_default="cuda when available"),
    threads: int = threads_option(),
) -> None:
    """Top-1/top-5 error, loss, params, FLOPs, latency and throughput (perplexity and tokens/s for ptb/wt2)."""
    set_threads(threads)
    if dataset in TEXT_DATASETS:
        if data_dir is None:
            raise fail(f"{dataset}: no --data-dir given; point it at the corpus files")
        _write_result(lm.evaluate_language_model(name, dataset, data_dir, checkpoint), json_path or "-")
        return
    target = resolve_target(name, dataset)
    try:
        device = device_for_run(device)
        model, recipe = _load_model(target, checkpoint, pretrained, None)
        input_size = tuple(model.pretrained_cfg["input_size"])
        result = dict(model=target.model_name, genotype=target.genotype.name, network=target.network,
                      C=recipe.init_channels, layers=recipe.layers, dataset=dataset,
                      checkpoint=str(checkpoint) if checkpoint else None, device=device_name(device),
                      threads=torch.get_num_threads(), **model_figures(model, input_size))
        if accuracy:
            if data_dir is None:
                raise DatasetError(f"{dataset}: no --data-dir given; point it at the dataset, or pass --no-accuracy "
                                   "to measure params, FLOPs and speed only")
            test_set = build_dataset(DataSpec(dataset, data_dir), model.pretrained_cfg, train=False)
            model.to(device)
            result.update(evaluate_loader(model, make_loader(test_set, batch_size, False, num_workers), device))
        if speed:
            result.update(measure_speed(model, input_size, device, fast), fast=fast)
        result.update(paper_figures(target.genotype, "imagenet" if dataset == "folder" else dataset, target.network,
                                    recipe.init_channels, recipe.layers))
    except (DatasetError, CheckpointError, ValueError) as e:
        raise fail(str(e)) from None
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
