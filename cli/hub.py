"""``nas-zoo convert`` (the authors' checkpoints into nas-zoo's weights folder) and ``nas-zoo push`` (to the Hub)."""
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from nas_zoo.weights.convert import LAYOUTS
from nas_zoo.weights.download import WEIGHTS_NAME
from nas_zoo.weights.hub import convert, push
from nas_zoo.threads import set_threads

from .output import library_errors, threads_option

# What the weights are for, shared by convert and push.
DATASET = typer.Option(None, help="what it was trained on", show_default="from the tag or classes")
NETWORK = typer.Option(None, help="for a genotype file: cifar, imagenet, bcnn, bcnn_imagenet",
                       show_default="its first evaluation's")
WIDTH = typer.Option(None, "--C", help="initial channels", show_default="the paper's")
LAYERS = typer.Option(None, help="cells", show_default="the paper's")
EN_LAYERS = typer.Option(None, help="the broad network's enhancement cells", show_default="the paper's 2")


def convert_command(
    family: str = typer.Option(..., "--from", help=f"the code the checkpoint comes from: {', '.join(LAYOUTS)}"),
    path: Path = typer.Argument(..., help="the authors' checkpoint (.pt/.pth/.pth.tar, or .safetensors)"),
    model: str = typer.Option(..., help="zoo model (gdas_v1, gdas_v1.cifar10), genotype, or genotype file"),
    out: Path = typer.Option(..., help="the weights folder to write (model.safetensors, config.json, README.md)"),
    dataset: Optional[str] = DATASET, network: Optional[str] = NETWORK, C: Optional[int] = WIDTH,
    layers: Optional[int] = LAYERS, en_layers: Optional[int] = EN_LAYERS,
    threads: int = threads_option(),
) -> None:
    """Convert an authors' released checkpoint into nas-zoo's weights folder (loadable with local-dir:OUT)."""
    set_threads(threads)
    with library_errors(out):
        written = convert(path, family, model, out, dataset, network, C, layers, en_layers)
    Console().print(f"wrote {written.folder} ({written.holds}); load it with {written.load}", highlight=False,
                    markup=False, soft_wrap=True)


def push_command(
    name: str = typer.Argument(..., help="zoo model (gdas_v1.cifar10), genotype, or genotype file"),
    checkpoint: Path = typer.Option(..., help="nas-zoo weights: a .safetensors file, a run's checkpoint directory "
                                              "or a converted folder"),
    repo_id: str = typer.Option(..., help="the Hub repository, ORG/REPO"),
    evaluation: Optional[Path] = typer.Option(None, "--eval", help="`nas-zoo evaluate --json` output for the card",
                                             show_default="none"),
    dataset: Optional[str] = DATASET, network: Optional[str] = NETWORK, C: Optional[int] = WIDTH,
    layers: Optional[int] = LAYERS, en_layers: Optional[int] = EN_LAYERS,
    private: bool = typer.Option(False, help="create the repository private"),
    threads: int = threads_option(),
) -> None:
    """Upload weights to the Hub as model.safetensors + config.json + README.md (token: HF_TOKEN or login)."""
    set_threads(threads)
    with library_errors():
        pushed = push(name, checkpoint, repo_id, evaluation, dataset, network, C, layers, en_layers, private)
    target = pushed.target
    weights = json.dumps({"hf_hub_id": repo_id, "sha256": pushed.sha256, "published": True})
    Console().print(f"pushed {target.spec.name} ({target.dataset}) to {pushed.url}\nsha256 of {WEIGHTS_NAME}: "
                    f"{pushed.sha256}\nto publish it as {target.spec.name}.{target.tag}, add to its evaluation in the "
                    f"genotype file: \"weights\": {weights}", highlight=False, markup=False, soft_wrap=True)
