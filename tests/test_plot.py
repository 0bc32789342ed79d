"""``nas-zoo plot``: the drawing holds exactly the genotype's edges and labels, is readable, and never replaces a
file it did not write."""
import json
import re
import xml.etree.ElementTree as ET

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from typer.testing import CliRunner

from nas_zoo import resolve
from nas_zoo.cli.app import app
from nas_zoo.files import is_ours
from nas_zoo.registry.genotype import RecurrentGenotype, get_genotype, list_genotypes
from nas_zoo.report.draw import FIXED_REDUCTION, draw_genotype, network_of
from nas_zoo.report.figures import figure_bytes

runner = CliRunner()
SVG = "{http://www.w3.org/2000/svg}"
EDGE = re.compile(r"^(normal|reduce|recurrent)-edge(\d+)-from(\d+)-to(\d+)-([a-z0-9_]+)$")
USER = {"name": "MINE", "normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 0], ["skip_connect", 1], ["dil_conv_5x5", 2],
                                   ["max_pool_3x3", 3], ["avg_pool_3x3", 0]],
        "normal_concat": [1, 3, 4], "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]], "reduce_concat": [2]}


def read_svg(path):
    """(cell, k, from, to, operation) of every edge drawn, the text of each edge's label, every text, the states."""
    root = ET.parse(path).getroot()
    groups = {g.get("id"): g for g in root.iter(f"{SVG}g") if g.get("id")}
    edges = sorted(tuple(int(x) if x.isdigit() else x for x in EDGE.match(i).groups())
                   for i in groups if EDGE.match(i))
    labels = {i[:-len("-label")]: " ".join("".join(groups[i].itertext()).split())
              for i in groups if i.endswith("-label")}
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    states = [i for i in groups if re.match(r"^\w+-state\d+$", i)]
    return edges, labels, texts, states


def expected_edges(genotype):
    if isinstance(genotype, RecurrentGenotype):
        return sorted(("recurrent", k, j, k + 1, op) for k, (op, j) in enumerate(genotype.recurrent))
    cells = {"normal": genotype.normal, "reduce": genotype.reduce}
    found = [(cell, k, j, k // 2, op) for cell, edges in cells.items() for k, (op, j) in enumerate(edges or [])]
    if genotype.reduce is None:
        found += [("reduce", k, j, k, name) for k, (name, _, j) in enumerate(FIXED_REDUCTION)]
    return sorted(found)


@pytest.mark.parametrize("name", ["darts_v2", "gdas_f1", "b_darts_v1", "darts_v2_ptb", "MINE"])
def test_svg_holds_exactly_the_genotypes_edges_and_labels(tmp_path, name):
    if name == "MINE":  # two edges from one input, a node left out of the output, an input concatenated
        (tmp_path / "mine.json").write_text(json.dumps(USER))
        name = str(tmp_path / "mine.json")
    out = tmp_path / "cells.svg"
    result = runner.invoke(app, ["plot", name, "--out", str(out)])
    assert result.exit_code == 0, result.output
    genotype = resolve(name).genotype
    edges, labels, texts, states = read_svg(out)
    assert edges == expected_edges(genotype)
    labelled = {f"{cell}-edge{k}-from{j}-to{i}-{op}": op for cell, k, j, i, op in edges}
    if genotype.name == "GDAS_F1":
        labelled.update({f"reduce-edge{k}-from{j}-to{k}-{name}": " ".join(label.split())
                         for k, (name, label, j) in enumerate(FIXED_REDUCTION)})
    assert labels == labelled  # each label is text in its edge's group (not glyph paths: svg.fonttype none)
    if isinstance(genotype, RecurrentGenotype):
        assert len(states) == 2 + len(genotype.recurrent) + 1 + 1  # x_t, h_t-1, states 0..8, h_t
    else:
        nodes = len(genotype.normal) // 2 + (4 if genotype.reduce is None else len(genotype.reduce) // 2)
        assert len(states) == 2 * 3 + nodes  # two inputs and an output per cell, and the nodes
    titles = " ".join(texts)
    if name == "b_darts_v1":
        assert "convolution cell" in titles and "enhancement cell" in titles and "normal cell" not in titles
    elif name == "gdas_f1":
        assert "fixed reduction cell" in titles
    elif name == "darts_v2_ptb":
        assert "recurrent cell" in titles
    else:
        assert "normal cell" in titles and "reduction cell" in titles


@pytest.mark.parametrize("name", list_genotypes())
def test_labels_cover_no_box_and_no_other_label(name):
    """The layout keeps every label clear of the boxes and of the other labels, in every zoo genotype."""
    genotype = get_genotype(name)
    figure = draw_genotype(genotype, network_of(genotype))
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    for ax in figure.axes:
        boxes = [p.get_window_extent(renderer) for p in ax.patches if "-state" in (p.get_gid() or "")]
        labels = [t.get_window_extent(renderer) for t in ax.texts if (t.get_gid() or "").endswith("-label")]
        assert boxes and labels
        for i, label in enumerate(labels):
            assert not any(label.overlaps(box) for box in boxes), f"{name}: a label covers a box"
            assert not any(label.overlaps(other) for other in labels[i + 1:]), f"{name}: two labels overlap"


def test_png_is_replaced_only_if_nas_zoo_wrote_it(tmp_path):
    out = tmp_path / "cells.png"
    for _ in range(2):  # the second run replaces the first's picture
        result = runner.invoke(app, ["plot", "gdas_v1", "--out", str(out)])
        assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG") and is_ours(out)
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"\x89PNG my own picture")
    result = runner.invoke(app, ["plot", "gdas_v1", "--out", str(mine)])
    assert result.exit_code == 2 and "was not written by nas-zoo" in result.output
    assert mine.read_bytes() == b"\x89PNG my own picture"


@pytest.mark.parametrize("args, message", [
    (["plot", "gdas_v1", "--out", "cells.jpg"], "the suffix picks the format; use .svg or .png"),
    (["plot", "gdas_vv1"], "unknown model or genotype 'gdas_vv1'; closest: gdas_v1"),
    (["plot", "missing.json"], "missing.json: no such genotype file")])
def test_plot_bad_input_is_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_figure_bytes_are_marked_and_repeatable():
    figure = draw_genotype(get_genotype("DARTS_V1"))
    svg, png = figure_bytes(figure, "svg"), figure_bytes(figure, "png")
    assert b"made by nas-zoo" in svg[:4096] and b"made by nas-zoo" in png[:4096]
    assert figure_bytes(figure, "svg") == svg  # no date, fixed ids: the same picture is the same file
