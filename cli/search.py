"""``nas-zoo search ALGORITHM``: regenerate a genotype with DARTS, GDAS or PC-DARTS."""
import sys
from pathlib import Path
from typing import Optional

import typer

from nas_zoo.checkpoint import CheckpointError
from nas_zoo.data import DatasetError
from nas_zoo.search import ALGORITHMS, Search, SearchConfig


def search_command(
    algorithm: str = typer.Argument(..., help=f"one of: {', '.join(ALGORITHMS)}"),
    dataset: str = typer.Option("cifar10", help="cifar10 or cifar100 (the standard python layout)"),
    data_dir: Path = typer.Option(Path("data"), help="folder holding cifar-10-batches-py / cifar-100-python"),
    epochs: Optional[int] = typer.Option(None, help="search epochs [default: the paper's]"),
    batch_size: Optional[int] = typer.Option(None, help="batch size of each half [default: the paper's]"),
    init_channels: int = typer.Option(16, help="supernet width C"),
    layers: int = typer.Option(8, help="supernet cells (reductions at 1/3 and 2/3)"),
    seed: int = typer.Option(2, help="random seed"),
    order: int = typer.Option(1, help="darts: 1 (first order) or 2 (unrolled, second order)"),
    frc: bool = typer.Option(False, "--frc", help="gdas: search the normal cell only, fixed reduction cell"),
    arch_warmup: Optional[int] = typer.Option(None, help="epochs before alpha is updated [default: the paper's; "
                                                         "pc-darts 15, others 0]"),
    workers: int = typer.Option(2, help="data-loading worker processes"),
    channels_last: bool = typer.Option(True, help="activations in NHWC (same math; faster on CPU)"),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... [default: cuda if available]"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint"),
    out: Path = typer.Option(Path("search-out"), help="writes OUT/genotype.json, OUT/search.json, OUT/checkpoint"),
) -> None:
    """Search a cell pair; writes the genotype (for `nas-zoo train`/`info`) and the search record."""
    from .app import console, fail

    if algorithm not in ALGORITHMS:
        raise fail(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    if algorithm != "darts" and order != 1:
        raise fail("--order applies to darts only")
    if algorithm != "gdas" and frc:
        raise fail("--frc applies to gdas only")
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size), ("--init-channels", init_channels),
                        ("--layers", layers)):
        if value is not None and value < (0 if name == "--epochs" else 1):
            raise fail(f"{name} must be positive, got {value}")
    if layers < 3:
        raise fail(f"--layers {layers}: the supernet needs at least 3 cells (two of them reduce)")
    if init_channels % 4:
        raise fail(f"--init-channels {init_channels}: use a multiple of 4 (partial channels and factorized "
                   "reductions split the channels)")
    options = {"darts": dict(order=order), "gdas": dict(frc=frc), "pc-darts": {}}[algorithm]
    try:
        method = ALGORITHMS[algorithm](**options)
    except ValueError as e:
        raise fail(str(e)) from None
    config = SearchConfig(dataset=dataset, data_dir=str(data_dir), epochs=epochs, batch_size=batch_size,
                          init_channels=init_channels, layers=layers, seed=seed, arch_warmup=arch_warmup,
                          num_workers=workers, channels_last=channels_last, **({"device": device} if device else {}))
    try:
        search = Search(method, config, out, progress=sys.stderr.isatty())
        if resume and not search.resume():
            raise fail(f"--resume: no checkpoint in {out / 'checkpoint'}; run without --resume to start")
        if not resume and (out / "checkpoint").exists():
            raise fail(f"{out} holds a search already; pass --resume to continue it or choose another --out")
        record = search.run()
    except (DatasetError, CheckpointError, ValueError) as e:
        raise fail(str(e)) from None
    last = record["epochs"][-1] if record["epochs"] else {}
    console.print(f"{record['algorithm']}: {record['epochs_done']} epochs, train {last.get('train_acc', 0):.1f}% "
                  f"valid {last.get('valid_acc', 0):.1f}%, {record['skip_connections_normal']} skip-connections "
                  f"in the normal cell; wrote {out / 'genotype.json'} and {out / 'search.json'}", highlight=False)
