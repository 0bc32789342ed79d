"""``nas-zoo report``: the page of real (tiny) searches and a training run parses, embeds every image it names and
shows the records' own numbers; the zoo page and the README's tables come from the registry."""
import base64
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nas_zoo.cli.app import app
from nas_zoo.files import is_ours
from nas_zoo.registry.genotype import get_genotype, list_genotypes
from nas_zoo.registry.zoo import LM_MODELS, MODELS
from nas_zoo.report.page import Page
from nas_zoo.report.plots import collapse_figure, collapse_signals
from nas_zoo.report.report import training_section
from nas_zoo.report.runs import SearchRun, TrainingRun, read_run
from nas_zoo.report.zoo import sync_readme
from tests.conftest import ROOT, write_tiny_cifar
from tests.test_rnn import SMALL, _write_corpus

runner = CliRunner()
TINY = ["--init-channels", "4", "--layers", "3", "--batch-size", "8", "--num-workers", "0", "--threads", "1"]
VOID = {"meta", "img", "br", "hr", "link", "input"}


class Parsed(HTMLParser):
    """Tags checked to close in order; images, tables (by id: rows of cell texts), headings and paragraphs."""

    def __init__(self, text: str):
        super().__init__()
        self.open, self.images, self.tables, self.texts, self.links = [], [], {}, [], []
        self.table = self.row = None
        self.feed(text)
        self.close()
        assert not self.open, f"unclosed tags: {self.open}"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [v for k, v in attrs.items() if k in ("src", "href")]
        if tag == "img":
            self.images.append(attrs)
        if tag not in VOID:
            self.open.append(tag)
        if tag == "table":
            self.table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr":
            self.row = []
            self.table.append(self.row)
        elif tag in ("td", "th"):
            self.row.append("")

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing open"

    def handle_data(self, data):
        if self.open and self.open[-1] in ("td", "th"):
            self.row[-1] += data
        elif self.open and self.open[-1] in ("p", "h1", "h2", "h3"):
            self.texts.append(data)


def png(data: bytes) -> bool:
    Image.open(io.BytesIO(data)).verify()  # raises on a broken image
    return data.startswith(b"\x89PNG")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Real searches on the tiny CIFAR folder: DARTS (2 epochs, the collapse monitor on as by default), P-DARTS
    (3 stages of 1 epoch, without the monitor: its eigenvalues took three quarters of its time here); two
    epochs of training the DARTS search's genotype, and of a small DARTS_V2 language model on a tiny corpus."""
    root = tmp_path_factory.mktemp("runs")
    data = write_tiny_cifar(root, images=8)
    for out, args in (("darts", ["darts", "--epochs", "2"]),
                      ("pdarts", ["pdarts", "--epochs", "1", "--add-layers", "0,1,2", "--num-to-keep", "5,3,1",
                                  "--hessian-every", "0"])):
        result = runner.invoke(app, ["search", *args, "--data-dir", str(data), "--out", str(root / out), *TINY])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", str(root / "darts" / "genotype.json"), "--dataset", "cifar10", "--data-dir",
                                 str(data), "--out", str(root / "train"), "--init-channels", "4", "--layers", "3",
                                 "--batch-size", "16", "--num-workers", "0", "--epochs", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    settings = [a for k, v in {**SMALL, "epochs": 2}.items() for a in ("--set", f"{k}={v}")]
    result = runner.invoke(app, ["train", "darts_v2_ptb", "--dataset", "ptb", "--data-dir",
                                 str(_write_corpus(root / "ptb")), "--out", str(root / "lm"), *settings])
    assert result.exit_code == 0, result.output
    return root


def report(*args):
    result = runner.invoke(app, ["report", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def test_search_record_keeps_each_epochs_operation_weights(runs):
    record = json.loads((runs / "darts" / "search.json").read_text())
    for epoch in record["epochs"]:
        assert set(epoch["operation_weights"]) == {"normal", "reduce"}
        for rows in epoch["operation_weights"].values():
            assert len(rows) == 14 and all(len(r) == 8 and math.isclose(sum(r), 1, abs_tol=1e-3) for r in rows)
    for cell in ("normal", "reduce"):  # the last epoch's are the final alpha's softmax
        final = torch.tensor(record["architecture"][f"alphas.{cell}"]).softmax(-1)
        assert torch.allclose(torch.tensor(record["epochs"][-1]["operation_weights"][cell]), final, atol=5e-5)


def test_report_of_a_search_parses_embeds_its_images_and_shows_the_records_numbers(runs, tmp_path):
    out = tmp_path / "report.html"
    report(runs / "darts", "--out", out)
    page = Parsed(out.read_text())
    record = json.loads((runs / "darts" / "search.json").read_text())
    # self-contained: every image inline and a PNG, nothing else linked
    assert len(page.images) == 5  # curves, skip-connections, two heat maps, the cells
    assert all(img["src"].startswith("data:image/png;base64,") and img["alt"] for img in page.images)
    assert all(png(base64.b64decode(img["src"].split(",", 1)[1])) for img in page.images)
    assert all(link.startswith("data:") for link in page.links)
    settings = dict(page.tables["settings-0"][1:])
    assert settings["algorithm"] == record["algorithm"] and int(settings["seed"]) == record["seed"]
    assert float(settings["wall time (s)"]) == pytest.approx(record["wall_time_s"], rel=1e-5)
    assert float(settings["cpu hours"]) == pytest.approx(record["cpu_hours"], rel=1e-5)
    assert float(settings["lr"]) == record["config"]["lr"] and int(settings["epochs run"]) == record["epochs_done"]
    header, *rows = page.tables["epochs-0"]
    assert len(rows) == len(record["epochs"]) and header[0] == "epoch"
    assert {"train_loss", "train_acc", "valid_loss", "valid_acc", "lr"} <= set(header)
    for i, (row, epoch) in enumerate(zip(rows, record["epochs"])):
        cells = dict(zip(header, row))
        assert int(cells["epoch"]) == i + 1
        for key in header[1:]:  # a measurement the epoch did not take (the eigenvalue every K epochs) is a dash
            assert cells[key] == "-" if key not in epoch else float(cells[key]) == pytest.approx(epoch[key], rel=1e-5)
        skips = sum(op == "skip_connect" for op, _ in epoch["genotype"]["normal"])
        assert int(cells["skip_connections"]) == epoch["skip_connections"] == skips  # the monitor's count
    changed = [i + 1 for i in range(1, len(record["epochs"]))
               if record["epochs"][i]["genotype"] != record["epochs"][i - 1]["genotype"]]
    sentence = next(t for t in page.texts if t.startswith("The derived genotype"))
    assert [int(n) for n in re.findall(r"(\d+) \(", sentence)] == changed


def test_markdown_report_is_a_folder_of_its_page_and_images(runs, tmp_path):
    out = tmp_path / "md"

    def page():
        """The page's text and the pictures it names: exactly the folder's PNGs, each a valid one."""
        text = (out / "report.md").read_text()
        named = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
        assert is_ours(out / "report.md") and sorted(named) == sorted(p.name for p in out.glob("*.png"))
        assert all(png((out / name).read_bytes()) for name in named)
        return text, named

    report(runs / "darts", runs / "pdarts", "--out", out, "--format", "md")
    text, named = page()
    # P-DARTS: a heat map per stage and cell type; the two searches side by side
    assert sum(name.startswith("pdarts-") and "-stage" in name for name in named) == 6
    assert "| algorithm | darts_1st | pdarts |" in text
    report(runs / "darts", "--out", out, "--format", "md")  # replaces the first's folder: P-DARTS's pictures go
    _, named = page()
    assert named and not any(name.startswith("pdarts-") for name in named)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["report", str(runs / "darts"), "--out", str(mine), "--format", "md"])
    assert result.exit_code == 2 and "holds files nas-zoo did not write" in result.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_several_runs_side_by_side(runs, tmp_path):
    out = tmp_path / "report.html"
    report(runs / "darts", runs / "pdarts", runs / "train", runs / "lm", "--out", out)
    page = Parsed(out.read_text())
    table = {row[0]: row[1:] for row in page.tables["comparison"]}
    records = [json.loads((runs / r / "search.json").read_text()) for r in ("darts", "pdarts")]
    assert table[""] == ["darts", "pdarts"] and table["algorithm"] == [r["algorithm"] for r in records]
    assert [float(v) for v in table["last valid accuracy / perplexity"]] == pytest.approx(
        [r["epochs"][-1]["valid_acc"] for r in records], rel=1e-5)
    # the training runs: their epochs as metrics.jsonl holds them (numbers; the LM's optimizer is text)
    for index, run in ((2, "train"), (3, "lm")):
        metrics = [json.loads(line) for line in (runs / run / "metrics.jsonl").read_text().splitlines()]
        header, *rows = page.tables[f"epochs-{index}"]
        assert len(rows) == len(metrics) == 2 and "optimizer" not in header
        assert ({"test_top1_error", "train_acc"} if run == "train" else {"valid_ppl", "train_ppl"}) <= set(header)
        for row, epoch in zip(rows, metrics):
            assert [float(v) for v in row] == pytest.approx([epoch[k] for k in header], rel=1e-5)
    assert any("The paper reports no figure for DARTS_1ST_CIFAR10_SEED2" in t for t in page.texts)
    assert any("(16 units) is not the paper's size (850 units)" in t for t in page.texts)
    assert len(page.images) == 1 + 5 + (3 + 6) + 2 + 2  # comparison, darts, pdarts (6 heat maps), two training runs


@pytest.mark.parametrize("name, about, size, shown, left_out", [
    ("GDAS_V1", dict(network="cifar", dataset="cifar10", model="gdas_v1"), ("init_channels", 36, 16),
     "The paper reports 2.93 test error (%)", "(C=16, 20 cells) is not the paper's size (C=36, 20 cells)"),
    ("DARTS_V2_RNN", dict(dataset="ptb", model="darts_v2_ptb"), ("nhid", 850, 200),
     "The paper reports 58.1 validation perplexity", "(200 units) is not the paper's size (850 units)")])
def test_training_run_shows_the_papers_figure_at_the_papers_size_only(tmp_path, name, about, size, shown, left_out):
    genotype = get_genotype(name)
    key, paper, other = size  # the paper's value of the setting, and another
    config = dict(init_channels=36, layers=20, nhid=850)
    metrics = [dict(epoch=1, train_loss=2.0, train_acc=30.0, test_loss=1.8, test_top1_error=60.0, train_ppl=7.4,
                    valid_loss=1.9, valid_ppl=6.7)]
    for value, sentence in ((paper, shown), (other, left_out)):
        state = {**about, "config": {**config, key: value}, "genotype": genotype.to_dict()}
        state = state if "network" in about else {"info": state}
        page = Page("test")
        training_section(page, TrainingRun(tmp_path, metrics, state, genotype), "run", 0)
        assert sentence in " ".join(c for k, c in page.blocks if k == "text")


def test_collapse_monitor_values_are_drawn_when_recorded(runs):
    run = read_run(runs / "darts")
    epochs = run.record["epochs"]  # the search's own monitor (nas_zoo.search.hessian), on by default
    signals = collapse_signals(run)
    assert signals["hessian_eigenvalue"] == [e.get("hessian_eigenvalue") for e in epochs]
    assert signals["hessian_eigenvalue"][0] is not None and signals["hessian_eigenvalue"][-1] is not None
    assert signals["edge_entropy"] == [pytest.approx(sum(sum(h) for h in e["edge_entropy"].values()) / 28)
                                       for e in epochs]
    assert len(collapse_figure(run).axes) == 3
    record = json.loads(json.dumps(run.record))
    for e in record["epochs"]:  # a record written without the monitor
        for key in ("hessian_eigenvalue", "edge_entropy", "skip_connections"):
            e.pop(key, None)
    bare = SearchRun(run.path, record, run.genotype)
    assert collapse_signals(bare) == {} and len(collapse_figure(bare).axes) == 1
    record["epochs"][-1]["hessian_eigenvalue"] = 0.25
    for i, e in enumerate(record["epochs"]):
        e.update(edge_entropy={"normal": [2.0, 2.0], "reduce": [1.0, 1.0]}, skip_connections=7 + i)
    run = SearchRun(run.path, record, run.genotype)
    assert collapse_signals(run) == {"hessian_eigenvalue": [None] * (len(record["epochs"]) - 1) + [0.25],
                                     "edge_entropy": [1.5] * len(record["epochs"])}
    assert run.skip_connections() == [7 + i for i in range(len(record["epochs"]))]
    assert len(collapse_figure(run).axes) == 3


def test_report_bad_input_is_one_line(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "search.json").write_text("{")
    mine = tmp_path / "mine.html"
    mine.write_text("<p>my page</p>")
    for args, message in [
            ([str(tmp_path / "empty")], "holds no search.json (nas-zoo search) or metrics.jsonl (nas-zoo train)"),
            ([str(tmp_path / "none")], "does not exist"),
            ([str(tmp_path / "broken")], "cannot be read as JSON"),
            ([], "no run given"), ([str(runs / "darts"), "--zoo"], "not both"),
            ([str(runs / "darts"), "--format", "pdf"], "--format 'pdf': use one of html, md"),
            ([str(runs / "darts"), "--out", str(mine)], "was not written by nas-zoo")]:
        result = runner.invoke(app, ["report", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1
    assert mine.read_text() == "<p>my page</p>"


def test_readme_tables_are_the_registrys():
    readme = (ROOT / "README.md").read_text()
    assert readme.count("<!-- zoo table: ") == 2
    assert sync_readme(readme) == readme, "run: python -m nas_zoo.report.zoo README.md"
    row = r"\| `gdas_v1\.cifar10` \| ([^|]+) \| ([^|]+) \| [0-9,]+ \|"  # its params
    doctored = re.sub(row, r"| `gdas_v1.cifar10` | \1 | \2 | 1 |", readme, count=1)
    assert doctored != readme and sync_readme(doctored) == readme
    emptied = re.sub(r"(<!-- zoo table: [a-z ]+ -->\n)(\|[^\n]*\n)+", r"\1", readme)  # blocks left empty
    assert emptied.count("\n|") < readme.count("\n|") and sync_readme(emptied) == readme


@pytest.mark.slow
def test_zoo_page_lists_every_model_with_its_cells(tmp_path):
    out = tmp_path / "zoo.html"
    report("--zoo", "--out", out)
    page = Parsed(out.read_text())
    assert len(page.tables["image-models"]) - 1 == sum(len(s.evaluations) for s in MODELS.values())
    assert len(page.tables["language-models"]) - 1 == len(LM_MODELS)
    assert len(page.images) == len(list_genotypes()) and all(
        png(base64.b64decode(img["src"].split(",", 1)[1])) for img in page.images)
    header, *rows = page.tables["image-models"]
    gdas = dict(zip(header, next(r for r in rows if r[0] == "gdas_v1_imagenet.in1k")))
    assert gdas["paper error %"] == "26" and gdas["mult-adds M, conv+linear (nas-zoo, GDAS)"] == "581"
    assert Path(str(out)).stat().st_size < 8e6
