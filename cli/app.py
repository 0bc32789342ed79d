"""The ``nas-zoo`` command: list the zoo and inspect genotypes (typer)."""
import json
import sys
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from nas_zoo.harness import distributed
from nas_zoo.registry.genotype import DATASETS, RecurrentGenotype
from nas_zoo.resolver import resolve
from nas_zoo.registry.summary import FAMILIES, genotype_info, language_model_rows, search_cost, zoo_rows
from nas_zoo.threads import set_threads

from .output import console, fail, fitted_table, library_errors, threads_option
from .search import search_app

# click's plain help (no rich markup: it ate "[default: ...]" and cut option names at 80 columns), wrapped to
# the terminal up to 120 columns
app = typer.Typer(help="DARTS-family searched architectures: list, inspect, build.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None,
                  context_settings={"max_content_width": 120})


def _print_version(value: bool) -> None:
    if value:
        import timm
        import torch

        from nas_zoo import __version__

        console.print(f"nas-zoo {__version__} (torch {torch.__version__}, timm {timm.__version__})", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="print the versions of nas-zoo, torch and timm, and exit")) -> None:
    pass


def _choice(value: Optional[str], allowed: List[str], option: str) -> None:
    if value is not None and value not in allowed:
        raise fail(f"{option} {value!r} is not one of: {', '.join(allowed)}")


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


@app.command("list")
def list_command(
    family: Optional[str] = typer.Option(None, help=f"paper family: {', '.join(FAMILIES)}", show_default="all"),
    dataset: Optional[str] = typer.Option(None, help=f"evaluation dataset: {', '.join(DATASETS)}", show_default="all"),
    task: Optional[str] = typer.Option(None, help="cnn or rnn", show_default="both"),
    as_json: bool = typer.Option(False, "--json", help="print JSON rows instead of a table"),
    threads: int = threads_option(),
) -> None:
    """The zoo: one row per model and paper evaluation, measured params beside the reported figures."""
    set_threads(threads)
    _choice(family, FAMILIES, "--family")
    _choice(dataset, list(DATASETS), "--dataset")
    _choice(task, ["cnn", "rnn"], "--task")
    rows = ([] if task == "rnn" else zoo_rows(family, dataset)) + ([] if task == "cnn" else
                                                                    language_model_rows(family, dataset))
    if as_json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    lm_rows, rows = [r for r in rows if r["task"] == "rnn"], [r for r in rows if r["task"] == "cnn"]
    if rows or task == "cnn":
        console.print(fitted_table(f"nas-zoo: {len(rows)} image-model evaluations", IMAGE_COLUMNS, [
            (row["model"], row["genotype"], row["family"], f"{row['network']} {row['C']}/{row['layers']}",
             f"{row['params'] / 1e6:.2f}", _fmt(row["reported_params_M"], 1), _fmt(row["reported_error"]),
             _fmt(row["search_cost_gpu_days"])) for row in rows]))
    if lm_rows or task == "rnn":
        console.print(_language_model_table(lm_rows, f"nas-zoo: {len(lm_rows)} language models"))


# (header, kind, optional): see fitted_table; the optional columns are left out of a narrow terminal
IMAGE_COLUMNS = [("model", "id", False), ("genotype", "id", True), ("family", "id", True),
                 ("network C/cells", "text", False), ("params M", "number", False), ("paper M", "number", False),
                 ("paper error %", "number", False), ("search GPU days", "number", False)]
LANGUAGE_MODEL_COLUMNS = [("model", "id", False), ("genotype", "id", True), ("family", "id", True),
                          ("dataset", "id", True), ("units", "number", False), ("vocabulary", "number", True),
                          ("params M", "number", False), ("paper M", "number", False),
                          ("paper valid ppl", "number", False), ("paper test ppl", "number", False),
                          ("search GPU days", "number", False)]
INFO_COLUMNS = [("model", "id", False), ("dataset", "id", False), ("network C/cells", "text", False),
                ("params M", "number", False), ("paper M", "number", False),
                ("mult-adds M conv+linear", "number", False), ("+2xBN, ReLU", "number", True),
                ("paper mult-adds M", "number", False), ("paper error %", "number", False),
                ("search GPU days", "number", True)]


def _language_model_table(rows, title: Optional[str] = None) -> Table:
    return fitted_table(title, LANGUAGE_MODEL_COLUMNS, [
        (row["model"] or "-", row["genotype"], row["family"], row["dataset"], str(row["nhid"]), str(row["ntoken"]),
         f"{row['params'] / 1e6:.3f}", _fmt(row["reported_params_M"], 1), _fmt(row["reported_val_ppl"]),
         _fmt(row["reported_test_ppl"]), _fmt(row["search_cost_gpu_days"])) for row in rows])


def _cell_text(edges, concat) -> str:
    if edges is None:
        return "GDAS's fixed reduction cell (FIX-R)"
    nodes = [f"n{i // 2}={edges[i][0]}({edges[i][1]})+{edges[i + 1][0]}({edges[i + 1][1]})"
             for i in range(0, len(edges), 2)]
    return "  ".join(nodes) + f"  concat {list(concat)}"


@app.command("info")
def info_command(
    name: str = typer.Argument(..., help="zoo model or genotype name, genotype file, or FILE:NAME"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of text"),
    threads: int = threads_option(),
) -> None:
    """A genotype: its cells, provenance, paper settings, measured params and FLOPs, reported figures."""
    set_threads(threads)
    with library_errors():
        resolved = resolve(name)
    genotype = resolved.genotype
    info = genotype_info(genotype)
    if resolved.kind == "model":
        info["networks"] = [n for n in info["networks"] if (n["model"] or "").split(".")[0] == resolved.model.name]
    if as_json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    record = info["genotype"]
    paper = record.get("paper", {})
    console.print(f"[bold]{escape(genotype.name)}[/]  family {info['family']}  ({escape(genotype.source)})",
                  highlight=False)
    if paper:
        console.print(f"paper: {paper.get('title')} ({paper.get('venue')}, arXiv:{paper.get('arxiv')})  "
                      f"code: {paper.get('code')}", highlight=False, markup=False)
    provenance = record.get("provenance")
    if provenance:
        console.print("provenance: " + ", ".join(f"{k} {v}" for k, v in provenance.items()), highlight=False, markup=False)
    if genotype.note:
        console.print(f"note: {genotype.note}", highlight=False, markup=False)
    if isinstance(genotype, RecurrentGenotype):
        steps = "  ".join(f"s{i + 1}={act}(s{pred})" for i, (act, pred) in enumerate(genotype.recurrent))
        console.print(f"recurrent: s0=highway(x_t, h_t-1)  {steps}  h_t=mean of {list(genotype.concat)}",
                      highlight=False, markup=False)
        console.print(_language_model_table(info["networks"]))
        return
    console.print(f"normal: {_cell_text(genotype.normal, genotype.normal_concat)}", highlight=False, markup=False)
    console.print(f"reduce: {_cell_text(genotype.reduce, genotype.reduce_concat)}", highlight=False, markup=False)
    console.print(fitted_table(None, INFO_COLUMNS, [
        (network["model"] or "-", d["dataset"] or f"({d['num_classes']} classes)",
         f"{network['network']} {network['C']}/{network['layers']}", f"{d['params'] / 1e6:.3f}",
         _fmt(d["reported"].get("params_M"), 1), *(f"{flops / 1e6:.1f}" for flops in d["flops"].values()),
         _fmt(d["reported"].get("mult_adds_M")), _fmt(d["reported"].get("test_error", d["reported"].get("top1_error"))),
         _fmt(search_cost(d["reported"]))) for network in info["networks"] for d in network["datasets"]]))


app.add_typer(search_app, name="search")


def main() -> None:
    if distributed.launched():  # an unexpected error's traceback goes to torchrun's summary of the failure
        from torch.distributed.elastic.multiprocessing.errors import record

        record(app)()
    else:
        app()


def _register_commands() -> None:
    from . import harness, hub, report

    app.command("train")(harness.train_command)
    app.command("evaluate")(harness.evaluate_command)
    app.command("convert")(hub.convert_command)
    app.command("push")(hub.push_command)
    app.command("plot")(report.plot_command)
    app.command("report")(report.report_command)


_register_commands()
