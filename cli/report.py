"""``nas-zoo plot`` and ``nas-zoo report``: cell diagrams, the report of searches and training runs, the zoo page
(``nas_zoo.report``)."""
from pathlib import Path
from typing import List, Optional

import typer

from nas_zoo.report.draw import plot
from nas_zoo.report.report import write_report
from nas_zoo.report.zoo import write_zoo
from nas_zoo.threads import set_threads

from .output import console, fail, library_errors, threads_option


def plot_command(
    name: str = typer.Argument(..., help="zoo model or genotype name, genotype file, or FILE:NAME"),
    out: Optional[Path] = typer.Option(None, help="the picture: .svg or .png", show_default="NAME.png"),
    threads: int = threads_option(),
) -> None:
    """Draw a genotype's cells as the papers do: inputs, nodes, an arrow per chosen input labelled with its
    operation, the output. An existing --out is replaced only if nas-zoo wrote it."""
    set_threads(threads)
    with library_errors(out):
        written = plot(name, out)
    console.print(f"wrote {written}", highlight=False)


def report_command(
    runs: Optional[List[Path]] = typer.Argument(None, help="the --out folders of searches and training runs",
                                                show_default=False),
    zoo: bool = typer.Option(False, "--zoo", help="the zoo page instead: every registered model and its cells"),
    out: Optional[Path] = typer.Option(None, help="the page (html) or folder (md)",
                                       show_default="report.html, zoo.html; report/, zoo/ for md"),
    format: str = typer.Option("html", "--format", help="html: one file, images inline; md: a folder of report.md "
                                                         "and PNG files"),
    threads: int = threads_option(),
) -> None:
    """One page for searches (settings, cost, curves, genotype changes, skip-connections, operation-weight heat
    maps, the cells found; several side by side) and training runs (curves beside the paper's error), or --zoo."""
    set_threads(threads)
    if zoo and runs:
        raise fail("runs and --zoo: give the runs to report on, or --zoo for the zoo page, not both")
    if not zoo and not runs:
        raise fail("no run given: name the --out folders of searches or training runs, or pass --zoo")
    out = out or Path(("zoo" if zoo else "report") + (".html" if format == "html" else ""))
    with library_errors(out):
        written = write_zoo(out, format) if zoo else write_report(runs, out, format)
    console.print(f"wrote {written}", highlight=False)
