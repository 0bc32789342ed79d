"""The ``nas-zoo`` command: list the zoo and inspect genotypes (typer)."""
import json
import sys
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from nas_zoo.genotype import DATASETS, RecurrentGenotype
from nas_zoo.resolver import resolve
from nas_zoo.summary import FAMILIES, genotype_info, language_model_rows, zoo_rows

from .output import console, fail, library_errors
from .search import search_app

app = typer.Typer(help="DARTS-family searched architectures: list, inspect, build.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)


def _choice(value: Optional[str], allowed: List[str], option: str) -> None:
    if value is not None and value not in allowed:
        raise fail(f"{option} {value!r} is not one of: {', '.join(allowed)}")


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


@app.command("list")
def list_command(
    family: Optional[str] = typer.Option(None, help=f"paper family: {', '.join(FAMILIES)}"),
    dataset: Optional[str] = typer.Option(None, help=f"evaluation dataset: {', '.join(DATASETS)}"),
    task: Optional[str] = typer.Option(None, help="cnn or rnn"),
    as_json: bool = typer.Option(False, "--json", help="print JSON rows instead of a table"),
) -> None:
    """The zoo: one row per model and paper evaluation, measured params beside the reported figures."""
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
    table = Table(title=f"nas-zoo: {len(rows)} model evaluations")
    for column in ("model", "genotype", "family", "task", "network (C/cells)", "params M", "reported M",
                   "reported error %", "search GPU-days"):
        table.add_column(column, justify="right" if "M" in column or "%" in column or "days" in column else "left")
    for row in rows:
        cost = row["search_cost_gpu_days"]
        table.add_row(row["model"], row["genotype"], row["family"], row["task"],
                      f"{row['network']} ({row['C']}/{row['layers']})", f"{row['params'] / 1e6:.2f}",
                      _fmt(row["reported_params_M"], 1), _fmt(row["reported_error"]), _fmt(cost))
    if rows or task == "cnn":
        console.print(table)
    if lm_rows or task == "rnn":
        console.print(_language_model_table(lm_rows, f"nas-zoo: {len(lm_rows)} language models"))


def _language_model_table(rows, title: Optional[str] = None) -> Table:
    table = Table(title=title)
    for column in ("model", "genotype", "family", "dataset", "units", "vocabulary", "params M", "reported M",
                   "reported valid ppl", "reported test ppl", "search GPU-days"):
        table.add_column(column, justify="left" if column in ("model", "genotype", "family", "dataset") else "right")
    for row in rows:
        table.add_row(row["model"] or "-", row["genotype"], row["family"], row["dataset"], str(row["nhid"]),
                      str(row["ntoken"]), f"{row['params'] / 1e6:.3f}", _fmt(row["reported_params_M"], 1),
                      _fmt(row["reported_val_ppl"]), _fmt(row["reported_test_ppl"]), _fmt(row["search_cost_gpu_days"]))
    return table


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
) -> None:
    """A genotype: its cells, provenance, paper settings, measured params and FLOPs, reported figures."""
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
    table = Table()
    for column in ("model", "dataset", "network (C/cells)", "params M", "reported M", "MACs M (conv+linear)",
                   "M (+2xBN,ReLU)", "reported M", "reported error %", "search GPU-days"):
        table.add_column(column)
    for network in info["networks"]:
        for d in network["datasets"]:
            reported = d["reported"] or {}
            macs, extended = d["flops"].values()
            table.add_row(network["model"] or "-", d["dataset"] or f"({d['num_classes']} classes)",
                          f"{network['network']} ({network['C']}/{network['layers']})", f"{d['params'] / 1e6:.3f}",
                          _fmt(reported.get("params_M"), 1), f"{macs / 1e6:.1f}", f"{extended / 1e6:.1f}",
                          _fmt(reported.get("mult_adds_M")),
                          _fmt(reported.get("test_error", reported.get("top1_error"))),
                          _fmt(reported.get("search_cost_gpu_days")))
    console.print(table)


app.add_typer(search_app, name="search")


def main() -> None:
    app()


def _register_commands() -> None:
    from . import harness, hub

    app.command("train")(harness.train_command)
    app.command("evaluate")(harness.evaluate_command)
    app.command("convert")(hub.convert_command)
    app.command("push")(hub.push_command)


_register_commands()
