"""Cell diagrams as the papers draw them (DARTS Fig. 4-6, made by quark0/darts ``cnn/visualize.py`` and
``rnn/visualize.py``, whose colours and font these are).

Left to right: the cell's inputs (green: c_{k-2} and c_{k-1}; a recurrent cell's x_t and h_{t-1}), its
intermediate nodes (blue), its output (yellow: c_k, the concatenation of the nodes it lists, or h_t, their
average). Each chosen input is an arrow labelled with its operation; the arrows into the output, and those into
a recurrent cell's first state, carry none. The authors lay out with Graphviz's dot, a system package; the
layout here is dot's recipe (Gansner et al., "A technique for drawing directed graphs", IEEE TSE 1993) at the
size of a cell: layers by longest path, an edge that skips layers routed through a virtual point in each, the
order in a layer by barycentres (the fewest crossings seen), positions pulled toward their neighbours, and each
edge a chain of cubic curves that are horizontal where they meet a node or a virtual point.

Every arrow and its label carry an SVG id, ``{cell}-edge{k}-from{j}-to{i}-{operation}`` (the k-th edge of the
genotype's ``cell`` list, from input j into node i) and the same with ``-label``, so a program can read a drawing
back; a state's box is ``{cell}-state{s}`` (s counts the inputs, the nodes, then the output) and an arrow into
the output ``{cell}-output-from{s}``.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path as Curve

from ..files import write_ours
from ..registry.genotype import AnyGenotype, RecurrentGenotype
from ..resolver import resolve
from .figures import FORMATS, figure_bytes, styled

INPUT, NODE, OUTPUT = "#b4eeb4", "#add8e6", "#eee8aa"  # Graphviz's darkseagreen2, lightblue, palegoldenrod
WIDTH, HEIGHT = 0.8, 0.5  # a state's box
LAYER = 3.0  # between the layers of states: a label's layer between them takes sep_conv_3x3
LINE, MARGIN = 0.26, 0.4  # the height of a label's line; the least room between neighbours in a layer
INCH = 0.62  # inches per unit of the layout

#: GDAS's fixed reduction cell (Dong & Yang, CVPR 2019, Sec. 3.3 and Fig. 3; ``models.cells.FixedReductionCell``):
#: per input a grouped-convolution branch and a max-pooling branch, the four concatenated. (id, label, input)
GROUP_CONV = "1x3, 3x1 group conv\n+ 1x1 conv"
FIXED_REDUCTION = (("group_conv", GROUP_CONV, 0), ("group_conv", GROUP_CONV, 1),
                   ("max_pool_3x3", "max_pool_3x3", 0), ("max_pool_3x3", "max_pool_3x3", 1))


@dataclass(frozen=True)
class Edge:
    source: int  # states: the inputs, then the nodes
    target: int
    label: str  # "" for an arrow without one
    id: str


@dataclass(frozen=True)
class CellGraph:
    """One cell to draw: its states' labels (mathtext), its labelled edges and the states its output joins."""

    key: str  # the genotype field it draws, the prefix of its SVG ids
    title: str
    inputs: Tuple[str, ...]
    nodes: Tuple[str, ...]
    output: str
    edges: Tuple[Edge, ...]
    concat: Tuple[int, ...]

    @property
    def labels(self) -> Tuple[str, ...]:
        return (*self.inputs, *self.nodes, self.output)

    @property
    def arcs(self) -> List[Tuple[int, int]]:
        """Every arrow as (state, state), the labelled ones first, then those into the output."""
        out = len(self.labels) - 1
        return [(e.source, e.target) for e in self.edges] + [(s, out) for s in self.concat]


def cnn_cell(key: str, title: str, edges: Sequence[Tuple[str, int]], concat: Sequence[int]) -> CellGraph:
    """A DARTS cell: node i reads edges 2i and 2i+1, input 0 and 1 are c_{k-2} and c_{k-1}, j >= 2 is node j-2."""
    return CellGraph(key, title, (r"$c_{k-2}$", r"$c_{k-1}$"), tuple(str(i) for i in range(len(edges) // 2)),
                     r"$c_{k}$", tuple(Edge(j, 2 + k // 2, op, f"{key}-edge{k}-from{j}-to{k // 2}-{op}")
                                       for k, (op, j) in enumerate(edges)), tuple(concat))


def fixed_reduction_cell(title: str) -> CellGraph:
    return CellGraph("reduce", title, (r"$c_{k-2}$", r"$c_{k-1}$"), ("0", "1", "2", "3"), r"$c_{k}$",
                     tuple(Edge(j, 2 + k, label, f"reduce-edge{k}-from{j}-to{k}-{name}")
                           for k, (name, label, j) in enumerate(FIXED_REDUCTION)), (2, 3, 4, 5))


def recurrent_cell(genotype: RecurrentGenotype) -> CellGraph:
    """DARTS Sec. 2.1: state 0 from x_t and h_{t-1}, step k makes state k+1 from one earlier state, h_t is the
    average of the states in ``concat``."""
    first = (Edge(0, 2, "", "recurrent-input-x"), Edge(1, 2, "", "recurrent-input-h"))
    steps = tuple(Edge(2 + j, 3 + k, act, f"recurrent-edge{k}-from{j}-to{k + 1}-{act}")
                  for k, (act, j) in enumerate(genotype.recurrent))
    states = ", ".join(map(str, genotype.concat))
    return CellGraph("recurrent", f"{cell_name('recurrent')}; its output is the average of states {states}",
                     (r"$x_{t}$", r"$h_{t-1}$"), tuple(str(i) for i in range(len(genotype.recurrent) + 1)), r"$h_{t}$",
                     first + steps, tuple(2 + s for s in genotype.concat))


def cell_name(key: str, network: Optional[str] = None) -> str:
    """What a genotype's cell (``normal``, ``reduce``, ``recurrent``) is called in ``network``: a broad network's
    (bcnn, bcnn_imagenet) as BNAS-v2 names them, convolution cells (``normal``) and enhancement cells
    (``reduce``)."""
    if (network or "").startswith("bcnn"):
        return {"normal": "convolution cell", "reduce": "enhancement cell"}[key]
    return {"normal": "normal cell", "reduce": "reduction cell", "recurrent": "recurrent cell"}[key]


def cell_graphs(genotype: AnyGenotype, network: Optional[str] = None) -> List[CellGraph]:
    """The cells of ``genotype`` as built in ``network`` (``cell_name``)."""
    if isinstance(genotype, RecurrentGenotype):
        return [recurrent_cell(genotype)]
    normal = cnn_cell("normal", cell_name("normal", network), genotype.normal, genotype.normal_concat)
    if genotype.reduce is None:
        return [normal, fixed_reduction_cell("reduction cell: GDAS's fixed reduction cell (FRC)")]
    return [normal, cnn_cell("reduce", cell_name("reduce", network), genotype.reduce, genotype.reduce_concat)]


def network_of(genotype: AnyGenotype, model=None) -> Optional[str]:
    """The network that builds the cells: the zoo model's, else the genotype's first evaluation's."""
    if model is not None:
        return getattr(model, "network", None)
    return genotype.evaluations[0].get("network") if genotype.evaluations else None


# -- layout -------------------------------------------------------------------------------------------------
@dataclass
class Layout:
    position: Dict[int, Tuple[float, float]]  # states, then virtual points
    chains: List[List[int]]  # per arc (``CellGraph.arcs``), the states and virtual points it passes, in order
    label_at: Dict[int, int]  # per labelled arc, the virtual point its label sits on


def layout(graph: CellGraph) -> Layout:
    """States on the even layers (2 x their longest path from an input), every arc through a virtual point on
    each layer between its ends; as dot does with edge labels, a label is such a point, sized, on the layer
    just before the arc's end, so labels take room in the ordering and placement and never cover each other."""
    states, arcs = len(graph.labels), graph.arcs
    rank = [0] * states
    for target in range(len(graph.inputs), states):  # every arc comes from an earlier state
        rank[target] = 1 + max((rank[s] for s, t in arcs if t == target), default=0)
    layers: List[List[int]] = [[] for _ in range(2 * max(rank) + 1)]
    for state in range(states):
        layers[2 * rank[state]].append(state)
    chains, label_at, size, point = [], {}, {s: HEIGHT for s in range(states)}, states
    for a, (s, t) in enumerate(arcs):
        chain = [s]
        for layer in range(2 * rank[s] + 1, 2 * rank[t]):
            label = graph.edges[a].label if a < len(graph.edges) and layer == 2 * rank[t] - 1 else ""
            if label:
                label_at[a] = point
            size[point] = LINE * (label.count("\n") + 1) if label else 0.0
            layers[layer].append(point)
            chain.append(point)
            point += 1
        chains.append(chain + [t])
    before: Dict[int, List[int]] = {v: [] for v in size}
    after: Dict[int, List[int]] = {v: [] for v in size}
    for chain in chains:
        for u, v in zip(chain, chain[1:]):
            after[u].append(v)
            before[v].append(u)
    layers = _order(layers, before, after)
    return Layout(_place(layers, before, after, size), chains, label_at)


def _crossings(layers: List[List[int]], after: Dict[int, List[int]]) -> int:
    count = 0
    for upper, lower in zip(layers, layers[1:]):
        at = {v: i for i, v in enumerate(lower)}
        pairs = [(i, at[w]) for i, v in enumerate(upper) for w in after[v]]
        count += sum(a[0] < b[0] and a[1] > b[1] for a in pairs for b in pairs)
    return count


def _order(layers, before, after) -> List[List[int]]:
    """Barycentre sweeps, down and up, the inputs kept in their order; the ordering with the fewest crossings."""
    best, fewest = [list(layer) for layer in layers], _crossings(layers, after)
    for sweep in range(8):
        down = sweep % 2 == 0
        for r in (range(1, len(layers)) if down else range(len(layers) - 2, 0, -1)):
            near = {v: i for i, v in enumerate(layers[r - 1 if down else r + 1])}
            here = {v: i for i, v in enumerate(layers[r])}
            neighbours = before if down else after

            def barycentre(v):
                seen = [near[u] for u in neighbours[v]]
                return (sum(seen) / len(seen), here[v]) if seen else (here[v], here[v])
            layers[r] = sorted(layers[r], key=barycentre)
        crossings = _crossings(layers, after)
        if crossings < fewest:
            best, fewest = [list(layer) for layer in layers], crossings
    return best


def _place(layers, before, after, size: Dict[int, float]) -> Dict[int, Tuple[float, float]]:
    """y by layer, top down at the least separation, then pulled toward the mean of the neighbours' (the inputs
    stay), each layer keeping its order and separations."""
    def gap(u: int, v: int) -> float:  # between the centres of neighbours in a layer
        return (size[u] + size[v]) / 2 + MARGIN

    y: Dict[int, float] = {}
    for layer in layers:
        at = 0.0
        for i, v in enumerate(layer):
            at -= gap(layer[i - 1], v) if i else 0.0
            y[v] = at
        for v in layer:
            y[v] -= at / 2  # centred
    for _ in range(40):
        for layer in layers[1:]:
            wish = [sum(y[u] for u in before[v] + after[v]) / len(before[v] + after[v]) for v in layer]
            placed = [wish[0]]
            for i in range(1, len(layer)):
                placed.append(min(wish[i], placed[-1] - gap(layer[i - 1], layer[i])))
            shift = sum(w - p for w, p in zip(wish, placed)) / len(layer)
            for v, p in zip(layer, placed):
                y[v] = 0.5 * y[v] + 0.5 * (p + shift)
    return {v: (r * LAYER / 2, y[v]) for r, layer in enumerate(layers) for v in layer}


# -- drawing ------------------------------------------------------------------------------------------------
def _ports(chains: List[List[int]], position) -> Dict[Tuple[int, int], float]:
    """Where each arc leaves and enters a box: spread over its side, ordered by where the arc comes from or goes."""
    ports: Dict[Tuple[int, int], float] = {}
    for end, step in ((0, 1), (-1, -2)):  # leaving: toward the next point; entering: from the one before
        by_state: Dict[int, List[int]] = {}
        for a, chain in enumerate(chains):
            by_state.setdefault(chain[end], []).append(a)
        for arcs in by_state.values():
            spread = min(0.4, 0.1 * (len(arcs) - 1)) * HEIGHT
            arcs.sort(key=lambda a: -position[chains[a][step]][1])
            for i, a in enumerate(arcs):
                ports[a, end] = 0.0 if len(arcs) == 1 else spread * (1 - 2 * i / (len(arcs) - 1))
    return ports


def _curve(points: List[Tuple[float, float]]) -> Curve:
    """Cubic segments through ``points``, horizontal at each."""
    vertices, codes = [points[0]], [Curve.MOVETO]
    for (xa, ya), (xb, yb) in zip(points, points[1:]):
        c = (xb - xa) / 2
        vertices += [(xa + c, ya), (xb - c, yb), (xb, yb)]
        codes += [Curve.CURVE4] * 3
    return Curve(vertices, codes)


def _draw_cell(ax, graph: CellGraph, placed: Layout, title: str) -> None:
    position, states = placed.position, len(graph.labels)
    ports = _ports(placed.chains, position)
    for a, chain in enumerate(placed.chains):
        (xs, ys), (xt, yt) = position[chain[0]], position[chain[-1]]
        points = [(xs + WIDTH / 2, ys + ports[a, 0]), *(position[v] for v in chain[1:-1]),
                  (xt - WIDTH / 2, yt + ports[a, -1])]
        curve = _curve(points)
        edge = graph.edges[a] if a < len(graph.edges) else None  # the labelled arcs come first
        arrow = FancyArrowPatch(path=curve, arrowstyle="-|>", mutation_scale=11, linewidth=1.1, color="#555555",
                                shrinkA=0, shrinkB=0, zorder=1)
        arrow.set_gid(edge.id if edge else f"{graph.key}-output-from{chain[0]}")
        ax.add_patch(arrow)
        if a in placed.label_at:
            text = ax.text(*position[placed.label_at[a]], edge.label, ha="center", va="center", fontsize=9, zorder=3,
                           linespacing=1.0, bbox=dict(boxstyle="round,pad=0.12", facecolor="white", edgecolor="none",
                                                      alpha=0.85))
            text.set_gid(f"{edge.id}-label")
    for s, name in enumerate(graph.labels):
        x, y = position[s]
        colour = INPUT if s < len(graph.inputs) else OUTPUT if s == states - 1 else NODE
        box = FancyBboxPatch((x - WIDTH / 2, y - HEIGHT / 2), WIDTH, HEIGHT, boxstyle="round,pad=0,rounding_size=0.08",
                             facecolor=colour, edgecolor="black", linewidth=1.4, zorder=2)
        box.set_gid(f"{graph.key}-state{s}")
        ax.add_patch(box)
        ax.text(x, y, name, ha="center", va="center", fontsize=13, zorder=4)
    xs, ys = [p[0] for p in position.values()], [p[1] for p in position.values()]
    ax.set_xlim(min(xs) - WIDTH, max(xs) + WIDTH)
    ax.set_ylim(min(ys) - HEIGHT, max(ys) + HEIGHT)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, loc="left", fontsize=12)


def _extent(placed: Layout) -> Tuple[float, float]:
    xs, ys = [p[0] for p in placed.position.values()], [p[1] for p in placed.position.values()]
    return max(xs) - min(xs) + 2 * WIDTH, max(ys) - min(ys) + 2 * HEIGHT


@styled
def draw_cells(graphs: Sequence[CellGraph], name: str = "") -> Figure:
    """One figure, the cells one above the other, each titled ``NAME: its title``."""
    layouts = [layout(g) for g in graphs]
    extents = [_extent(placed) for placed in layouts]
    title_height = 0.45  # inches
    width = max(w for w, _ in extents) * INCH
    height = sum(h * INCH + title_height for _, h in extents)
    figure = Figure(figsize=(width, height))
    top = 1.0
    for graph, placed, (w, h) in zip(graphs, layouts, extents):
        share = (h * INCH + title_height) / height
        ax = figure.add_axes((0, top - share, w * INCH / width, h * INCH / height))
        _draw_cell(ax, graph, placed, f"{name}: {graph.title}" if name else graph.title)
        top -= share
    return figure


def draw_genotype(genotype: AnyGenotype, network: Optional[str] = None) -> Figure:
    """The cells of ``genotype`` (``cell_graphs``) in one figure."""
    return draw_cells(cell_graphs(genotype, network), genotype.name)


def plot(name: str, out=None) -> Path:
    """Draw the cells of ``name`` (``nas_zoo.resolve``: a zoo model, genotype or genotype file) into ``out``, an SVG
    or PNG file by its suffix (default ``NAME.png``); returns the file written (``files.write_ours``)."""
    resolved = resolve(name)
    genotype = resolved.genotype
    out = Path(out or f"{genotype.name if resolved.kind == 'file' else name}.png")
    format = out.suffix.lstrip(".").lower()
    if format not in FORMATS:
        raise ValueError(f"--out {out}: the suffix picks the format; use .svg or .png")
    write_ours(out, figure_bytes(draw_genotype(genotype, network_of(genotype, resolved.model)), format))
    return out
