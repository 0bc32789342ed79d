"""P-DARTS: the authors' dropping, derivation and skip restriction (fixtures made by running their functions,
``tests/fixtures/pdarts``), stage transitions, the dropout schedule, the clipped alpha gradient and exact
resume mid-stage."""
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from nas_zoo.cli.app import app
from nas_zoo.registry.genotype import load_genotype
from nas_zoo.models.ops import PRIMITIVES
from nas_zoo.search import Pdarts, Search, SearchConfig, with_defaults
from nas_zoo.harness import run as run_module
from nas_zoo.search.algorithm import SearchAlgorithm
from nas_zoo.search.supernet import MixedEdge

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "pdarts" / "rules.json").read_text())
CASES = {case["name"]: case for case in FIXTURE["cases"]}
TINY = with_defaults(Pdarts(), SearchConfig(init_channels=4, layers=3, device="cpu"))
runner = CliRunner()


def test_fixture_uses_our_operation_order():
    assert tuple(FIXTURE["primitives"]) == PRIMITIVES


def _names(switches):
    return [[PRIMITIVES[k] for k, on in enumerate(row) if on] for row in switches]


def _supernet(algorithm, stage, candidates, alphas):
    """A tiny stage-``stage`` supernet on ``candidates`` whose alpha is the fixture's."""
    model = algorithm.network(TINY, 10, stage, candidates)
    with torch.no_grad():
        for t in ("normal", "reduce"):
            model.arch.alphas[t].copy_(torch.tensor(alphas[t][stage]))
    return model


@pytest.mark.parametrize("name", CASES)
def test_dropping_follows_the_authors(name):
    """After stages 1 and 2 each edge keeps the authors' 5, then 3 operations (``get_min_k``)."""
    case, algorithm = CASES[name], Pdarts(add_layers=(0, 0, 0), dropout_rate=(0.0, 0.0, 0.0))
    candidates = None
    for stage in (0, 1):
        model = _supernet(algorithm, stage, candidates, case["alphas"])
        candidates = algorithm.next_candidates(model, stage)
        assert candidates == {t: _names(case["switches"][t][stage]) for t in ("normal", "reduce")}
    assert candidates == {t: _names(case["switches_before_last_drop"][t]) for t in ("normal", "reduce")}


@pytest.mark.parametrize("name", CASES)
def test_derivation_and_skip_restriction_follow_the_authors(name):
    """The final genotype (last drop with ``none`` first, two edges per node) and the restricted normal cell
    for every allowed skip count from 8 to 0, as the authors' loop leaves them."""
    case = CASES[name]
    algorithm = Pdarts(add_layers=(0, 0, 0), dropout_rate=(0.0, 0.0, 0.0))
    candidates = {t: _names(case["switches_before_last_drop"][t]) for t in ("normal", "reduce")}
    fields, notes = algorithm.derive(_supernet(algorithm, 2, candidates, case["alphas"]))
    assert notes["unrestricted_normal"] == case["genotype"]["normal"]
    assert fields["reduce"] == case["genotype"]["reduce"]
    expected = [{k: r[k] for k in ("max_skip", "restricted", "normal")} for r in case["restricted"]]
    assert notes["skip_restriction"] == expected
    assert fields["normal"] == next(r["normal"] for r in expected if r["max_skip"] == 2)
    # the one operation each kept edge ends with is the authors' last drop (switches after stage 3)
    last = _names(case["switches"]["normal"][2])
    assert [op for op, _ in case["genotype"]["normal"]] == [last[e][0] for e in case["kept_edges"]["normal"]]


def test_other_skip_counts_are_chosen_by_max_skip():
    case = CASES["skip_heavy"]
    candidates = {t: _names(case["switches_before_last_drop"][t]) for t in ("normal", "reduce")}
    for max_skip in (0, 5, 8):
        algorithm = Pdarts(add_layers=(0, 0, 0), dropout_rate=(0.0, 0.0, 0.0), max_skip=max_skip)
        fields, _ = algorithm.derive(_supernet(algorithm, 2, candidates, case["alphas"]))
        assert fields["normal"] == case["restricted"][8 - max_skip]["normal"]
        assert sum(op == "skip_connect" for op, _ in fields["normal"]) <= max_skip


def test_a_stage_is_a_new_supernet_on_the_surviving_operations(tiny_cifar, tmp_path):
    config = SearchConfig(data_dir=str(tiny_cifar), epochs=1, batch_size=8, init_channels=4, layers=3,
                          arch_warmup=0, num_workers=0, device="cpu")
    run = Search(Pdarts(add_layers=(0, 1, 2)), config, tmp_path / "out", progress=False)
    run.run_epoch()
    first = run.model
    kept = run.algorithm.next_candidates(first, 0)
    run.start_stage(1, kept)
    second = run.model
    assert second is not first and len(second.cells) == 4
    assert second.candidates["normal"] == kept["normal"] and second.candidates["reduce"] == kept["reduce"]
    assert all(len(names) == 5 for t in ("normal", "reduce") for names in kept[t])
    assert second.arch.alphas["normal"].shape == (14, 5)
    for cell in second.cells:  # every edge holds exactly its surviving candidates, dropout after stride-1 skips
        strides = [2 if cell.reduction and j < 2 else 1 for i in range(4) for j in range(2 + i)]
        for edge, names, stride in zip(cell.edges, kept[cell.cell_type], strides, strict=True):
            assert isinstance(edge, MixedEdge) and len(edge.ops) == len(names)
            dropout = [isinstance(op, nn.Sequential) and isinstance(op[-1], nn.Dropout) for op in edge.ops]
            assert dropout == [name == "skip_connect" and stride == 1 for name in names]
    # fresh alpha (the DARTS init scale), fresh optimizers and schedule
    assert second.arch.alphas["normal"].abs().max() < 0.01
    assert run.bilevel.w_optimizer.state == {} and run.epoch == 0


def test_dropout_on_skip_connections_decays_as_the_authors_code():
    algorithm = Pdarts(add_layers=(0, 0, 0))
    config = with_defaults(algorithm, SearchConfig(epochs=25, arch_warmup=10, init_channels=4, layers=3))
    model = algorithm.network(config, 10, stage=1)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(m.p == 0.4 for m in dropouts)
    expected = {0: 0.4 * 24 / 25, 9: 0.4 * 15 / 25, 10: 0.4, 11: 0.4 * math.exp(-0.2), 24: 0.4 * math.exp(-2.8)}
    for epoch, p in expected.items():
        assert algorithm.start_epoch(model, config, 1, epoch) == {"skip_dropout": pytest.approx(p)}
        assert all(m.p == pytest.approx(p) for m in dropouts)
    no_rate = Pdarts(dropout_rate=(0.0, 0.0, 0.0)).network(config, 10, stage=0)
    assert not any(isinstance(m, nn.Dropout) for m in no_rate.modules())


def test_the_architecture_gradient_is_clipped(tiny_cifar, tmp_path):
    config = SearchConfig(data_dir=str(tiny_cifar), batch_size=8, init_channels=4, layers=3, num_workers=0,
                          device="cpu", grad_clip=1e-3)
    search = Search(Pdarts(), config, tmp_path / "out", progress=False).bilevel
    batch = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    torch.manual_seed(0)
    plain = SearchAlgorithm.arch_gradient(search.algorithm, search, batch, batch)
    torch.manual_seed(0)
    clipped = search.algorithm.arch_gradient(search, batch, batch)
    norm = torch.cat([g.flatten() for g in clipped]).norm()
    assert norm == pytest.approx(1e-3, rel=1e-3)
    assert all(torch.allclose(c, g * (1e-3 / torch.cat([p.flatten() for p in plain]).norm()), rtol=1e-3)
               for c, g in zip(clipped, plain))


def _search(data, out, *extra):
    return runner.invoke(app, ["search", "pdarts", "--data-dir", str(data), "--out", str(out), "--epochs", "2",
                               "--init-channels", "4", "--layers", "3", "--add-layers", "0,1,2", "--batch-size", "8",
                               "--arch-warmup", "1", "--num-workers", "0", *extra])


def test_pdarts_searches_in_stages_and_resumes_mid_stage_exactly(tiny_cifar, tmp_path, monkeypatch):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = _search(tiny_cifar, straight)
    assert result.exit_code == 0, result.output
    record = json.loads((straight / "search.json").read_text())
    assert [(s["stage"], s["cells"], s["candidates_per_edge"], s["dropout_rate"], s["epochs"])
            for s in record["stages"]] == [(0, 3, 8, 0.1, 2), (1, 4, 5, 0.4, 2), (2, 5, 3, 0.7, 2)]
    assert all(s["wall_time_s"] > 0 for s in record["stages"])
    assert [(e["stage"], e["epoch"]) for e in record["epochs"]] == [(s, e) for s in range(3) for e in range(2)]
    assert record["options"] == {"add_layers": [0, 1, 2], "add_width": [0, 0, 0], "dropout_rate": [0.1, 0.4, 0.7],
                                 "num_to_keep": [5, 3, 1], "max_skip": 2}
    assert record["config"]["batch_size"] == 8 and record["config"]["lr_min"] == 0.0
    assert [r["max_skip"] for r in record["skip_restriction"]] == list(range(8, -1, -1))
    genotype = load_genotype(straight / "genotype.json")
    assert [list(e) for e in genotype.normal] == record["skip_restriction"][6]["normal"]
    assert sum(op == "skip_connect" for op, _ in genotype.normal) <= 2
    assert genotype.name == "PDARTS_CIFAR10_SEED2" and len(record["architecture"]["alphas.normal"][0]) == 3

    save, saves = run_module.save_checkpoint, []

    def die_mid_stage(*args, **kwargs):  # killed right after stage 2's first epoch is saved
        save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "save_checkpoint", die_mid_stage)
    assert _search(tiny_cifar, killed).exit_code == 130
    monkeypatch.setattr(run_module, "save_checkpoint", save)
    assert len(json.loads((killed / "search.json").read_text())["epochs"]) == 2  # written before the kill
    result = _search(tiny_cifar, killed, "--resume")
    assert result.exit_code == 0, result.output
    resumed = json.loads((killed / "search.json").read_text())
    strip = ["stage", "epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "skip_dropout", "genotype"]
    assert [[e[k] for k in strip] for e in record["epochs"]] == [[e[k] for k in strip] for e in resumed["epochs"]]
    assert record["architecture"] == resumed["architecture"]
    assert record["skip_restriction"] == resumed["skip_restriction"]
    other = _search(tiny_cifar, killed, "--resume", "--dropout-rate", "0.1,0.4,0.6")
    assert other.exit_code == 2 and "other settings (dropout_rate " in other.output.replace("\n", " ")
