"""The collapse monitor (``nas_zoo/search/hessian.py``): the power iteration against the exact Hessian's
eigenvalues, the record's per-epoch fields for every algorithm with alpha, a search that is the same with the
monitor as without, DARTS-ES against RobustDARTS's own ``EVLocalAvg`` (``tests/fixtures/robustdarts``) and on a
constructed series end to end, and exact resume with the monitor on."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from typer.testing import CliRunner

from nas_zoo.cli.app import app
from nas_zoo.registry.genotype import load_genotype
from nas_zoo.search import Darts, Ednas, Gdas, PcDarts, Search, SearchConfig, hessian, with_defaults
from nas_zoo.harness import run as run_module
from tests.test_rnn import _write_corpus

runner = CliRunner()
TINY = ["--init-channels", "4", "--layers", "3", "--batch-size", "8", "--num-workers", "0", "--threads", "1"]
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "robustdarts" / "early_stop.json").read_text())


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny supernets: a second thread only waits at every parallel region (conftest restores the count)."""
    torch.set_num_threads(1)


@pytest.fixture
def quick_monitor(monkeypatch):
    """Few Hessian-vector products: these tests check what the monitor writes and leaves, not its accuracy."""
    monkeypatch.setattr(hessian, "STEPS", 3)


def search(algorithm, data, out, *extra, epochs=2):
    return runner.invoke(app, ["search", algorithm, "--data-dir", str(data), "--out", str(out), "--epochs",
                               str(epochs), *TINY, *extra])


# -- the eigenvalue -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", [Darts(), Gdas(), PcDarts(k=2)], ids=["darts", "gdas", "pc-darts"])
def test_lanczos_finds_the_largest_eigenvalue_of_the_exact_hessian(algorithm):
    """A tiny supernet (1 node, float64, train mode): the Hessian of the loss in every architecture parameter
    by ``torch.autograd.functional.hessian``, its largest eigenvalue by ``eigvalsh``. GDAS's Gumbel sample is
    the same on both sides (the same seed before the forward pass). After as many products from the same start,
    power iteration's Rayleigh quotient is no closer."""
    torch.manual_seed(0)
    model = algorithm.network(with_defaults(algorithm, SearchConfig(init_channels=4, layers=3, nodes=1)), 10).double()
    model.train()
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_(0, 0.5)  # away from the uniform start, where the spectrum is nearly flat
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (6,))
    names = [n for n, _ in model.named_parameters() if n.startswith("arch.")]
    params = [p for n, p in model.named_parameters() if n.startswith("arch.")]
    sizes = [p.numel() for p in params]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(1)
        values = {n: v.view_as(p) for n, v, p in zip(names, flat.split(sizes), params)}
        return F.cross_entropy(functional_call(model, values, (x,)), y)

    start = torch.cat([p.detach().flatten() for p in params])
    exact = torch.autograd.functional.hessian(loss_of, start, vectorize=True)
    spectrum = torch.linalg.eigvalsh(exact)
    assert spectrum[-1] > 0 and spectrum[0] < 0, "indefinite, as the supernets' are: where power iteration stalls"
    torch.manual_seed(1)
    loss = F.cross_entropy(model(x), y)
    found = hessian.dominant_eigenvalue(loss, params, seed=0, steps=80, tol=1e-10)
    assert found.converged and found.value == pytest.approx(spectrum[-1].item(), rel=1e-6)
    v = torch.randn(len(exact), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for _ in range(found.products - 1):
        v = exact @ v / (exact @ v).norm()
    assert found.value >= (v @ exact @ v / (v @ v)).item() - 1e-12


@pytest.mark.parametrize("eigenvalues", [(-5.0, 2.0, 1.0, -1.0), (-5.0, -2.0, -3.0), (1.0, -1.0, 0.5, -0.25),
                                         (4.0, -3.0, 0.5), (0.0, 0.0)])
def test_the_largest_eigenvalue_whatever_the_signs(eigenvalues):
    """The largest eigenvalue (RobustDARTS's max of ``eigvals``), not the largest in magnitude, also where
    the most negative one is larger or as large (where power iteration would find it, or never settle)."""
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(0)))
    matrix = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    x = torch.randn(len(eigenvalues), dtype=torch.float64, requires_grad=True)
    found = hessian.dominant_eigenvalue(0.5 * x @ matrix @ x, [x], steps=10, tol=1e-12)
    assert found.value == pytest.approx(max(eigenvalues), rel=1e-9, abs=1e-12)
    assert found.converged and found.products <= len(eigenvalues)


def test_edge_entropy_is_that_of_the_softmaxed_operation_weights():
    algorithm = Darts()
    model = algorithm.network(with_defaults(algorithm, SearchConfig(init_channels=4, layers=3)), 10)
    with torch.no_grad():
        model.arch.alphas["normal"].zero_()
        model.arch.alphas["normal"][3, 2] = 100.0  # one edge picks one operation
    entropy = hessian.edge_entropy(model)
    assert set(entropy) == {"normal", "reduce"} and len(entropy["normal"]) == 14
    assert entropy["normal"][0] == pytest.approx(math.log(8), abs=1e-4) and entropy["normal"][3] == pytest.approx(0)


# -- the monitor in a search ------------------------------------------------------------------------------
def test_a_search_takes_the_same_steps_with_the_monitor(tiny_cifar, tmp_path, quick_monitor):
    """The monitor forks the RNG streams and restores the batch norms' statistics: the weights, alpha, losses
    and genotypes of every epoch are those of the same search without it. K=2 over 3 epochs measures the first
    and the last epoch."""
    records = {}
    for every in (0, 2):
        config = SearchConfig(data_dir=str(tiny_cifar), epochs=3, batch_size=8, init_channels=4, layers=3,
                              num_workers=0, device="cpu", hessian_every=every)
        run = Search(Gdas(), config, tmp_path / str(every), progress=False)  # Gumbel samples: RNG-sensitive
        records[every] = run.run()
        records[every]["buffers"] = [b.tolist() for b in run.model.buffers()]
    plain, watched = records[0], records[2]
    keys = ["train_loss", "train_acc", "valid_loss", "valid_acc", "genotype", "tau", "skip_connections", "edge_entropy"]
    assert [[e[k] for k in keys] for e in plain["epochs"]] == [[e[k] for k in keys] for e in watched["epochs"]]
    assert plain["architecture"] == watched["architecture"] and plain["buffers"] == watched["buffers"]
    assert [("hessian_eigenvalue" in e) for e in watched["epochs"]] == [True, False, True]
    assert not any("hessian_eigenvalue" in e for e in plain["epochs"])
    assert all(e["hessian_products"] >= 1 and e["hessian_time_s"] > 0 for e in watched["epochs"][::2])
    last = watched["epochs"][-1]
    for t in ("normal", "reduce"):  # the last epoch's entropies are those of the recorded architecture
        logp = torch.tensor(watched["architecture"][f"alphas.{t}"], dtype=torch.float64).log_softmax(-1)
        assert last["edge_entropy"][t] == pytest.approx((-(logp.exp() * logp).sum(-1)).tolist(), abs=1e-4)
    assert last["skip_connections"] == sum(op == "skip_connect" for op, _ in last["genotype"]["normal"])
    assert watched["early_stop"] is None


@pytest.mark.parametrize("algorithm, extra, cell_types", [
    ("darts", [], ["normal", "reduce"]), ("gdas", ["--frc"], ["normal"]),
    ("pc-darts", ["--init-channels", "8"], ["normal", "reduce"]),
    ("pdarts", ["--add-layers", "0,1,2"], ["normal", "reduce"]), ("b-darts", ["--layers", "2"], ["normal", "reduce"]),
    ("b-pc-darts", ["--layers", "2", "--init-channels", "8"], ["normal", "reduce"])])
def test_every_algorithm_with_alpha_records_the_monitor(tiny_cifar, tmp_path, quick_monitor, algorithm, extra,
                                                        cell_types):
    out = tmp_path / "out"
    result = search(algorithm, tiny_cifar, out, "--hessian-every", "1", *extra, epochs=1)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "search.json").read_text())
    for epoch in record["epochs"]:
        assert math.isfinite(epoch["hessian_eigenvalue"]) and epoch["hessian_products"] >= 1
        assert sorted(epoch["edge_entropy"]) == sorted(cell_types)
        edges = len(record["stages"][epoch["stage"]]["candidates"]["normal"])
        assert all(len(epoch["edge_entropy"][t]) == edges for t in cell_types)
        candidates = record["stages"][epoch["stage"]]["candidates_per_edge"]
        assert all(0 <= h <= math.log(candidates) + 1e-4 for t in cell_types for h in epoch["edge_entropy"][t])
        assert epoch["skip_connections"] == sum(op == "skip_connect" for op, _ in epoch["genotype"]["normal"])
    assert len(record["epochs"]) == (3 if algorithm == "pdarts" else 1)


@pytest.mark.parametrize("algorithm", ["darts", "gdas"])
def test_the_recurrent_search_records_the_monitor(tmp_path, quick_monitor, algorithm):
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", algorithm, "--dataset", "ptb", "--data-dir",
                                 str(_write_corpus(tmp_path / "ptb")), "--out", str(out), "--epochs", "1", "--nhid",
                                 "16", "--bptt", "8", "--batch-size", "4", "--max-batches", "3", "--device", "cpu",
                                 "--threads", "1", "--hessian-every", "1"])
    assert result.exit_code == 0, result.output
    epoch = json.loads((out / "search.json").read_text())["epochs"][0]
    assert math.isfinite(epoch["hessian_eigenvalue"]) and len(epoch["edge_entropy"]["recurrent"]) == 36
    assert "skip_connections" not in epoch  # no normal cell


def test_ednas_has_no_alpha_to_monitor(tiny_cifar, tmp_path):
    result = search("ednas", tiny_cifar, tmp_path / "out", "--hessian-every", "1")
    assert result.exit_code == 2 and "No such option: --hessian-every" in result.output
    config = SearchConfig(data_dir=str(tiny_cifar), init_channels=4, layers=3, device="cpu", hessian_every=1)
    with pytest.raises(ValueError, match="ednas samples children from policies and has no alpha"):
        Search(Ednas(), config, tmp_path / "out", progress=False)
    assert with_defaults(Ednas(), SearchConfig()).hessian_every == 0


def test_monitor_settings_are_checked(tiny_cifar, tmp_path):
    cases = [(["--hessian-every", "-1"], "--hessian-every must be positive, got -1"),
             (["--early-stop", "soon"], "--early-stop 'soon': choose off, paper or code"),
             (["--early-stop", "code", "--hessian-every", "0"], "set --hessian-every to a positive K")]
    for extra, message in cases:
        result = search("darts", tiny_cifar, tmp_path / "out", *extra)
        assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output
        assert not (tmp_path / "out").exists()


# -- DARTS-ES -----------------------------------------------------------------------------------------------
def history_of(eigenvalues, every, epochs):
    """What the record holds of a stage whose monitor measured ``eigenvalues`` (one per measured epoch)."""
    config, values = SearchConfig(epochs=epochs, hessian_every=every), iter(eigenvalues)
    return [{"stage": 0, "epoch": e, **({"hessian_eigenvalue": next(values)} if hessian.due(config, e) else {})}
            for e in range(epochs)]


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda case: case["name"])
def test_early_stop_decides_as_robustdarts(case):
    """Their ``EVLocalAvg`` (``update`` after each measurement, ``early_stop`` but at the last epoch), run on
    the same series by ``make_fixtures.py``: the same epoch stops the search and the same epoch is returned."""
    config = SearchConfig(epochs=case["epochs"], hessian_every=case["every"], early_stop="code", arch_warmup=0)
    full = history_of(case["eigenvalues"], case["every"], case["epochs"])
    decided = next(((e, stop) for e in range(case["epochs"]) if (stop := hessian.early_stop(full[:e + 1], config))),
                   (None, None))
    assert decided[0] == case["stopped_after_epoch"]
    assert (decided[1] and decided[1]["epoch"]) == case["stop_epoch"]


def test_early_stop_on_a_jump_returns_the_epoch_before_it():
    """Eigenvalues flat at 1 that jump to 2 from epoch J, one per epoch; the ``code`` rule compares means of 5
    measurements 4 apart, so the mean of the last 5 first passes 1.3 when two of them are 2 (1.4, after epoch
    J + 1), and the earlier mean is centred 2 + 4 measurements before that: epoch J - 5, whose genotype
    predates the jump."""
    jump, epochs = 20, 50
    config = SearchConfig(epochs=epochs, hessian_every=1, early_stop="code", arch_warmup=0)
    history = history_of([1.0] * jump + [2.0] * (epochs - jump), 1, epochs)
    stops = [e for e in range(epochs) if hessian.early_stop(history[:e + 1], config)]
    assert stops[0] == jump + 1
    stop = hessian.early_stop(history[:jump + 2], config)
    assert stop["epoch"] == jump - 5 and "grew 1.40x" in stop["reason"] and f"epoch {jump - 4}" in stop["reason"]
    assert hessian.early_stop(history[:jump + 2], SearchConfig(epochs=epochs, hessian_every=1)) is None  # off
    late = SearchConfig(epochs=epochs, hessian_every=1, early_stop="code", arch_warmup=jump)
    assert hessian.early_stop(history[:jump + 2], late) is None  # no genotype from before alpha moved


def test_an_early_stopped_search_returns_the_chosen_epoch_and_stays_stopped(tiny_cifar, tmp_path, monkeypatch):
    """End to end on a constructed series (the eigenvalue computation replaced): a rule that stops when one
    measurement is 1.3 times the one before ends a 6-epoch search after epoch 3 (0-based: 1, 1, 1, 2) with
    epoch 2's genotype; the record says why; --resume finds nothing to run and writes the same. (GDAS: the
    cheapest epoch; what is tested is the loop's.)"""
    series = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    monkeypatch.setitem(hessian.RULES, "paper", hessian.Rule(window=1, lookback=1, threshold=1.3, first_epoch=0))
    calls = []

    def constructed(run, batches=1):
        calls.append(run.epoch)
        return hessian.Eigenvalue(series[run.epoch], 1, True)

    monkeypatch.setattr(hessian, "validation_eigenvalue", constructed)
    out = tmp_path / "out"
    result = search("gdas", tiny_cifar, out, "--hessian-every", "1", "--early-stop", "paper", epochs=6)
    assert result.exit_code == 0, result.output
    assert "stopped early: DARTS-ES (paper)" in result.output and "the genotype of epoch 3" in result.output
    record = json.loads((out / "search.json").read_text())
    assert record["epochs_done"] == 4 and calls == [0, 1, 2, 3]
    assert {k: record["early_stop"][k] for k in ("epoch", "stage", "decided_after_epoch")} == {
        "epoch": 2, "stage": 0, "decided_after_epoch": 3}
    genotype = load_genotype(out / "genotype.json")
    assert [list(e) for e in genotype.normal] == record["epochs"][2]["genotype"]["normal"]
    assert record["skip_connections_normal"] == sum(op == "skip_connect" for op, _ in genotype.normal)
    again = search("gdas", tiny_cifar, out, "--hessian-every", "1", "--early-stop", "paper", "--resume", epochs=6)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "search.json").read_text())["epochs"] == record["epochs"]
    assert load_genotype(out / "genotype.json") == genotype and calls == [0, 1, 2, 3]


def test_resume_is_exact_with_the_monitor_on(tiny_cifar, tmp_path, monkeypatch, quick_monitor):
    """As ``test_search_cli.py``'s resume test, with an eigenvalue every epoch: killed after the first epoch's
    checkpoint and resumed, the run's figures (eigenvalues included) equal the uninterrupted run's."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert search("gdas", tiny_cifar, straight, "--hessian-every", "1").exit_code == 0
    save = run_module.save_checkpoint

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "save_checkpoint", save_then_die)
    assert search("gdas", tiny_cifar, killed, "--hessian-every", "1").exit_code == 130
    monkeypatch.setattr(run_module, "save_checkpoint", save)
    assert search("gdas", tiny_cifar, killed, "--hessian-every", "1", "--resume").exit_code == 0
    a, b = (json.loads((out / "search.json").read_text()) for out in (straight, killed))
    keys = ["train_loss", "valid_loss", "genotype", "skip_connections", "edge_entropy", "hessian_eigenvalue",
            "hessian_products"]
    assert [[e[k] for k in keys] for e in a["epochs"]] == [[e[k] for k in keys] for e in b["epochs"]]
    assert a["architecture"] == b["architecture"]
