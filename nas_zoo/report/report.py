"""``nas-zoo report RUN [RUN ...]``: one page for searches and training runs.

A search shows its settings and cost, the supernet's curves, the epochs at which the derived genotype changed,
the skip-connections of the normal cell per epoch (and the collapse monitor's values where the record has them),
a heat map of every edge's operation weights over the epochs, the cells it found and every epoch's numbers as
``search.json`` holds them. A training run shows its loss and error (a language model's perplexity) curves
beside the paper's figure and its epochs' numbers. Several searches get a table side by side and their
validation curves together.
"""
from pathlib import Path
from typing import Any, Dict, List, Sequence

from .draw import cell_name, draw_genotype, network_of
from .page import Page, check_format
from .plots import collapse_figure, collapse_signals, comparison_figure, heat_map, search_curves, training_figure
from .runs import SearchRun, TrainingRun, read_run

#: the loop settings a report lists, in this order, where the record has them
SETTINGS = ("dataset", "epochs", "batch_size", "init_channels", "layers", "nodes", "nhid", "bptt", "lr", "lr_min",
            "momentum", "weight_decay", "grad_clip", "arch_lr", "arch_weight_decay", "arch_warmup", "train_portion")
#: what a per-epoch table leaves out: the columns before the numbers, and what the figures show instead
NOT_NUMBERS = {"stage", "epoch", "genotype", "operation_weights"}


def _names(paths: Sequence[Path]) -> List[str]:
    """Each run's folder name, or its whole path where two runs share a name."""
    names = [p.name or str(p) for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]


def _settings_rows(run: SearchRun) -> List[List[Any]]:
    record, config = run.record, run.record["config"]
    cost = "gpu_hours" if "gpu_hours" in record else "cpu_hours"
    rows = [["algorithm", record["algorithm"]], ["seed", record["seed"]]]
    rows += [[k, v] for k, v in record["options"].items()]
    rows += [[k, config[k]] for k in SETTINGS if config.get(k) is not None]
    memory = record["peak_memory"]
    rows += [["epochs run", record["epochs_done"]], ["stages", len(record["stages"])], ["device", record["device"]],
             ["wall time (s)", record["wall_time_s"]], [cost.replace("_", " "), record[cost]],
             [f"peak memory (MiB, {memory['kind']})", round(memory["bytes"] / 2 ** 20, 1)],
             ["versions", ", ".join(f"{k} {v}" for k, v in record["versions"].items())]]
    return rows


def _epoch_columns(epochs: Sequence[Dict[str, Any]]) -> List[str]:
    """The numbers the epochs hold, in the record's order."""
    columns: List[str] = []
    for e in epochs:
        columns += [k for k, v in e.items() if k not in NOT_NUMBERS and k not in columns
                    and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return columns


def search_section(page: Page, run: SearchRun, name: str, index: int) -> None:
    record = run.record
    page.heading(f"{name}: {record['algorithm']} on {record['config']['dataset']}, seed {record['seed']}")
    page.text(f"{run.path}: {record['epochs_done']} epochs; the genotype found is {run.genotype.name} "
              f"(genotype.json).")
    page.table(["setting", "value"], _settings_rows(run), id=f"settings-{index}")
    page.figure(f"{name}-curves", search_curves(run), "The supernet per epoch: train on the weights' part, valid on "
                                                      "the architecture's.")
    changes = run.changes()
    page.text("The derived genotype changed at epochs " + ", ".join(f"{i + 1} ({', '.join(cells)})"
                                                                  for i, cells in changes) + "."
              if changes else "The derived genotype did not change from epoch to epoch (within a stage).")
    signals = collapse_signals(run)
    if not run.language or signals:
        missing = "" if signals else " The record holds no collapse-monitor values (hessian_eigenvalue)."
        page.figure(f"{name}-collapse", collapse_figure(run), "Collapse signals per epoch." + missing)
    network = network_of(run.genotype)
    if all("operation_weights" in e for e in run.epochs):
        for stage, info in enumerate(record["stages"]):
            for cell_type in info["candidates"]:
                if any(e["stage"] == stage for e in run.epochs):
                    page.figure(f"{name}-{cell_type}-stage{stage + 1}", heat_map(run, stage, cell_type),
                                f"Operation weights of every edge of the {cell_name(cell_type, network)} per epoch.")
    else:
        page.text("The record holds no per-epoch operation weights (written by an older nas-zoo): no heat maps.")
    page.figure(f"{name}-cells", draw_genotype(run.genotype, network), "The cells found.")
    columns = _epoch_columns(run.epochs)
    stages, counted = len(record["stages"]) > 1, not run.language and "skip_connections" not in columns
    skips = run.skip_connections()
    page.table(["epoch"] + ["stage"] * stages + columns + ["skip-connections (normal)"] * counted,
               [[i + 1] + [e["stage"] + 1] * stages + [e.get(k) for k in columns] + [skips[i]] * counted
                for i, e in enumerate(run.epochs)], id=f"epochs-{index}")


def training_section(page: Page, run: TrainingRun, name: str, index: int) -> None:
    about = run.about
    page.heading(f"{name}: training {run.name} on {about['dataset']}")
    network = None if run.language else about["network"]
    settings = [[k, v] for k, v in about["config"].items() if not isinstance(v, (dict, list))]
    page.table(["setting", "value"], [["genotype", run.genotype.name], ["network", network or "language model"],
                                      *settings], id=f"settings-{index}")
    paper, sentence = run.paper()
    page.text(sentence)
    page.figure(f"{name}-training", training_figure(run, paper), "The run per epoch.")
    columns = _epoch_columns(run.metrics)
    page.table(columns, [[m.get(k) for k in columns] for m in run.metrics], id=f"epochs-{index}")
    page.figure(f"{name}-cells", draw_genotype(run.genotype, network), "The cells trained.")


def comparison_section(page: Page, runs: Sequence[SearchRun], names: Sequence[str]) -> None:
    """The searches side by side: their settings, cost and last epoch, and their validation curves."""
    page.heading("Searches side by side")

    def last(run, key):
        return run.epochs[-1].get(key)

    rows = [("algorithm", lambda r: r.record["algorithm"]), ("dataset", lambda r: r.record["config"]["dataset"]),
            ("seed", lambda r: r.record["seed"]), ("epochs run", lambda r: r.record["epochs_done"]),
            ("last train accuracy / perplexity", lambda r: last(r, "train_ppl" if r.language else "train_acc")),
            ("last valid accuracy / perplexity", lambda r: last(r, "valid_ppl" if r.language else "valid_acc")),
            ("skip-connections (normal)", lambda r: None if r.language else r.skip_connections()[-1]),
            ("wall time (s)", lambda r: r.record["wall_time_s"]),
            ("CPU / GPU hours", lambda r: r.record.get("gpu_hours", r.record.get("cpu_hours"))),
            ("device", lambda r: r.record["device"]), ("genotype", lambda r: r.genotype.name)]
    page.table(["", *names], [[label, *(value(r) for r in runs)] for label, value in rows], id="comparison")
    for language in (False, True):
        group = [(r, n) for r, n in zip(runs, names) if r.language == language]
        if len(group) > 1:
            page.figure("comparison" + "-ppl" * language, comparison_figure(*zip(*group)),
                        "Validation " + ("perplexity" if language else "accuracy") + " per epoch.")


def report_page(paths: Sequence) -> Page:
    """The page for the runs in ``paths`` (search or training folders), in the order given."""
    if not paths:
        raise ValueError("no run given: name the --out folders of searches or training runs (or pass --zoo)")
    paths = [Path(p) for p in paths]
    runs, names = [read_run(p) for p in paths], _names(paths)
    page = Page("nas-zoo report: " + ", ".join(names))
    searches = [(r, n) for r, n in zip(runs, names) if isinstance(r, SearchRun)]
    if len(searches) > 1:
        comparison_section(page, *zip(*searches))
    for index, (run, name) in enumerate(zip(runs, names)):
        (search_section if isinstance(run, SearchRun) else training_section)(page, run, name, index)
    return page


def write_report(paths: Sequence, out, format: str = "html") -> Path:
    """``report_page(paths)`` written to ``out`` (``Page.write``); returns the file written."""
    check_format(format)
    return report_page(paths).write(out, format)
