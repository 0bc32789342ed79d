"""The figures of a report: a search's curves, its collapse signals and the heat maps of its operation weights; a
training run's curves beside the paper's error; several searches' validation curves together."""
from typing import Dict, List, Optional, Sequence, Tuple

from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .draw import cell_name, network_of
from .figures import styled
from .runs import SearchRun, TrainingRun

#: per-epoch values of the collapse monitor (``nas_zoo.search.hessian``), drawn when the record has them
COLLAPSE_SIGNALS = {"hessian_eigenvalue": "dominant eigenvalue of the Hessian of L_valid w.r.t. alpha",
                    "edge_entropy": "mean entropy of the edges' operation weights (nats)"}


def _epochs(run: SearchRun) -> List[int]:
    return list(range(1, len(run.epochs) + 1))  # 1-based over all stages, as the command's progress lines count


def _marks(ax, run: SearchRun) -> None:
    """Whole epochs on the x axis; dotted lines where the derived genotype changed, solid ones where a stage
    began (P-DARTS)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    for i, _ in run.changes():
        ax.axvline(i + 1, color="#999999", linestyle=":", linewidth=0.9, zorder=0)
    for i, (before, now) in enumerate(zip(run.epochs, run.epochs[1:]), 1):
        if now["stage"] != before["stage"]:
            ax.axvline(i + 0.5, color="#555555", linewidth=1.0, zorder=0)


@styled
def search_curves(run: SearchRun) -> Figure:
    """Accuracy (perplexity for a recurrent cell, log scale) and loss of the supernet per epoch, on the weights'
    part (train) and the architecture's (valid)."""
    figure = Figure(figsize=(9, 3.2), layout="constrained")
    measure, score = (("ppl", "perplexity"), ("acc", "accuracy (%)"))[not run.language]
    for ax, (key, label) in zip(figure.subplots(1, 2), [(measure, score), ("loss", "loss")]):
        for part, colour in (("train", "#1f77b4"), ("valid", "#d62728")):
            values = [e.get(f"{part}_{key}") for e in run.epochs]
            if any(v is not None for v in values):
                ax.plot(_epochs(run), values, marker="o", markersize=3, color=colour, label=part)
        if key == "ppl":
            ax.set_yscale("log")
        _marks(ax, run)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend(frameon=False)
    figure.suptitle("supernet per epoch (dotted: the derived genotype changed)", fontsize=10)
    return figure


def collapse_signals(run: SearchRun) -> Dict[str, List[Optional[float]]]:
    """The collapse monitor's per-epoch values in the record (None where an epoch has none), by name."""
    found = {}
    for key in COLLAPSE_SIGNALS:
        values = [_number(e.get(key)) for e in run.epochs]
        if any(v is not None for v in values):
            found[key] = values
    return found


def _number(value) -> Optional[float]:
    """A signal's value: a number, or the mean of a list or of a per-cell-type dict of them."""
    if isinstance(value, dict):
        value = [_number(v) for v in value.values()]
    if isinstance(value, list):
        value = [v for v in (_number(v) for v in value) if v is not None]
        return sum(value) / len(value) if value else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@styled
def collapse_figure(run: SearchRun) -> Figure:
    """Skip-connections in the derived normal cell per epoch, and the collapse monitor's values when recorded."""
    signals = collapse_signals(run)
    panels = [("skip_connections", "skip-connections in the normal cell", run.skip_connections())] * (not run.language)
    panels += [(key, COLLAPSE_SIGNALS[key], values) for key, values in signals.items()]
    figure = Figure(figsize=(4.5 * len(panels), 3.0), layout="constrained")
    for ax, (key, label, values) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        points = [(x, v) for x, v in zip(_epochs(run), values) if v is not None]
        ax.plot(*zip(*points), marker="o", markersize=3, color="#2ca02c" if key == "skip_connections" else "#9467bd",
                drawstyle="steps-mid" if key == "skip_connections" else "default")
        _marks(ax, run)
        if key == "skip_connections":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=10)
    return figure


def edge_grid(cell_type: str, edges: int) -> List[Tuple[int, int, int, str]]:
    """(row, column, edge, title) of every edge: a row per node (per step of a recurrent cell), a column per
    input, in the record's edge order (node by node, inputs in order)."""
    first = 1 if cell_type == "recurrent" else 2  # a node's inputs: the states before it
    grid, e, node = [], 0, 0
    while e < edges:
        for j in range(first + node):
            if cell_type == "recurrent":
                title = f"{j} → {node + 1}"
            else:
                title = (r"$c_{k-2}$", r"$c_{k-1}$")[j] + f" → {node}" if j < 2 else f"{j - 2} → {node}"
            grid.append((node, j, e, title))
            e += 1
        node += 1
    return grid


@styled
def heat_map(run: SearchRun, stage: int, cell_type: str) -> Figure:
    """Each edge's operation weights over the epochs of ``stage`` (record ``operation_weights``), one panel per
    edge laid out as the cell (a row per node, a column per input); the edges of the stage's last derived
    genotype are framed in red, their operation marked."""
    epochs = [e for e in run.epochs if e["stage"] == stage]
    candidates = run.record["stages"][stage]["candidates"][cell_type]
    weights = [e["operation_weights"][cell_type] for e in epochs]
    grid = edge_grid(cell_type, len(candidates))
    rows, cols = max(r for r, *_ in grid) + 1, max(c for _, c, *_ in grid) + 1
    same = all(names == candidates[0] for names in candidates)
    chosen = _chosen(epochs[-1]["genotype"].get(cell_type) or [], cell_type)
    figure = Figure(figsize=(1.6 * cols + 1.6, 1.15 * rows + 0.8), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    norm, image = PowerNorm(0.5, vmin=0.0, vmax=1.0), None  # the square root spreads the weights near 1/8
    for ax in axes.flat:
        ax.axis("off")
    for row, col, e, title in grid:
        ax = axes[row][col]
        ax.axis("on")
        values = [[w[e][k] for w in weights] for k in range(len(candidates[e]))]
        image = ax.imshow(values, aspect="auto", cmap="viridis", norm=norm, interpolation="nearest",
                          extent=(0.5, len(epochs) + 0.5, len(candidates[e]) - 0.5, -0.5))
        ax.set_title(title, fontsize=8, pad=2)
        ax.set_yticks(range(len(candidates[e])), candidates[e] if (same and col == 0) or not same else [],
                      fontsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.tick_params(axis="x", labelsize=6, length=2)
        ax.tick_params(axis="y", length=0)
        op = chosen.get((row, col))
        if op in candidates[e]:
            ax.plot([len(epochs) + 0.5], [candidates[e].index(op)], marker="<", color="red", markersize=5,
                    clip_on=False)
            for spine in ax.spines.values():
                spine.set(visible=True, color="red", linewidth=1.5)
    figure.colorbar(image, ax=axes, shrink=0.6, label="weight")
    stage_text = f", stage {stage + 1}" if len(run.record["stages"]) > 1 else ""
    name = cell_name(cell_type, network_of(run.genotype))
    figure.suptitle(f"{name}{stage_text}: operation weights per epoch (red: the derived edges)", fontsize=10)
    return figure


def _chosen(cell: Sequence, cell_type: str) -> Dict[Tuple[int, int], str]:
    """(node, input) -> operation of a derived cell."""
    if cell_type == "recurrent":
        return {(i, j): op for i, (op, j) in enumerate(cell)}
    return {(k // 2, j): op for k, (op, j) in enumerate(cell)}


@styled
def training_figure(run: TrainingRun, paper: Optional[float]) -> Figure:
    """Loss and top-1 error (a language model's perplexity, log scale) per epoch, on the training split and the
    one the run measures on (test; a language model's validation), beside the paper's figure."""
    figure = Figure(figsize=(9, 3.2), layout="constrained")
    m = run.metrics
    if run.language:
        panels = [("loss", {"train": [e["train_loss"] for e in m], "valid": [e["valid_loss"] for e in m]}),
                  ("perplexity", {"train": [e["train_ppl"] for e in m], "valid": [e["valid_ppl"] for e in m]})]
    else:
        panels = [("loss", {"train": [e["train_loss"] for e in m], "test": [e["test_loss"] for e in m]}),
                  ("top-1 error (%)", {"train": [100 - e["train_acc"] for e in m],
                                       "test": [e["test_top1_error"] for e in m]})]
    for ax, (label, curves) in zip(figure.subplots(1, 2), panels):
        for (part, values), colour in zip(curves.items(), ("#1f77b4", "#d62728")):
            ax.plot([e["epoch"] for e in m], values, marker="o", markersize=3, color=colour, label=part)
        if label != "loss" and paper is not None:
            ax.axhline(paper, color="black", linestyle="--", linewidth=1, label=f"paper: {paper}")
        if label == "perplexity":
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend(frameon=False)
    return figure


@styled
def comparison_figure(runs: Sequence[SearchRun], names: Sequence[str]) -> Figure:
    """The supernets' validation accuracy (or perplexity) per epoch, one line per search."""
    figure = Figure(figsize=(6, 3.4), layout="constrained")
    ax = figure.subplots()
    for run, name in zip(runs, names):
        key = "valid_ppl" if run.language else "valid_acc"
        ax.plot(_epochs(run), [e[key] for e in run.epochs], marker="o", markersize=3, label=name)
    if all(run.language for run in runs):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation " + ("perplexity" if runs[0].language else "accuracy (%)"))
    ax.legend(frameon=False, fontsize=8)
    return figure
