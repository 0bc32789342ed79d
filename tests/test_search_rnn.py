"""Recurrent-cell search on PTB: the search model against the authors' (quark0/darts rnn/model_search.py), the
LM's unrolled step against autograd, the CLI runs, their outputs, exact resume and the derivation rule."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.func import functional_call
from typer.testing import CliRunner

from nas_zoo.cli.app import app
from nas_zoo.harness import run as run_module
from nas_zoo.language.corpus import load_corpus
from nas_zoo.registry.genotype import RecurrentGenotype, load_genotype
from nas_zoo.search import Darts, Gdas, LanguageSearch, RecurrentSupernet, SearchConfig
from nas_zoo.search.algorithm import PTB_DEFAULTS, strongest_predecessors
from nas_zoo.search.darts import unrolled_gradient
from nas_zoo.search.recurrent import RNN_PRIMITIVES, Window
from tests.test_rnn import _write_corpus

FIXTURES = Path(__file__).parent / "fixtures" / "darts_rnn_search"
INDEX = json.loads((FIXTURES / "index.json").read_text())
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
runner = CliRunner()
TINY = ["--nhid", "16", "--bptt", "8", "--batch-size", "4", "--max-batches", "5", "--device", "cpu"]


def _authors_model(entry, tensors):
    """Our search model with the authors' state (their keys mapped) and architecture weights."""
    prefix = entry["prefix"] + ".state."
    state = {k[len(prefix):].replace("rnns.0.", "cell.").replace("decoder.bias", "decoder_bias"): v
             for k, v in tensors.items() if k.startswith(prefix) and not k.endswith("decoder.weight")}
    state["arch.alphas.recurrent"] = tensors[entry["prefix"] + ".weights"]
    model = RecurrentSupernet(entry["ntoken"], entry["nhid"], *(0.0,) * 5)
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("entry", INDEX["entries"], ids=lambda e: e["prefix"])
def test_search_model_matches_the_authors(entry):
    tensors = load_file(FIXTURES / "outputs.safetensors")
    get = lambda name: tensors[f"{entry['prefix']}.{name}"]  # noqa: E731
    model = _authors_model(entry, tensors)
    assert sum(p.numel() for p in model.weights()) == entry["params"]
    with torch.no_grad():  # eval mode: the batch norms' running statistics
        logits, outputs = model.eval()(get("tokens"), get("hidden"))
    torch.testing.assert_close(logits.log_softmax(-1), get("log_prob_eval"), atol=5e-5, rtol=0)
    torch.testing.assert_close(outputs[-1], get("last_eval"), atol=5e-5, rtol=1e-5)
    logits, outputs = model.train()(get("tokens"), get("hidden"))  # batch statistics, dropouts 0
    torch.testing.assert_close(logits.log_softmax(-1), get("log_prob_train"), atol=2e-6, rtol=0)
    torch.testing.assert_close(outputs[-1], get("last_train"), atol=2e-6, rtol=0)
    F.cross_entropy(logits.flatten(0, 1), get("targets"), reduction="sum").backward()
    # float32 sums in another order with other thread counts: ~3e-6 of a gradient whose largest entry is ~0.1
    torch.testing.assert_close(model.arch.alphas["recurrent"].grad, get("weights_grad"), atol=1e-5, rtol=1e-5)
    fields, _ = Darts().derive_recurrent(model)
    assert fields == entry["genotype"]


def test_search_model_has_the_authors_size_and_space():
    paper = INDEX["paper_size"]
    with torch.device("meta"):
        model = RecurrentSupernet(paper["ntoken"], paper["nhid"])
    assert sum(p.numel() for p in model.weights()) == paper["params"] == 4_810_000
    assert list(model.arch.alphas["recurrent"].shape) == paper["arch_shape"] == [36, 5]
    assert list(RNN_PRIMITIVES) == INDEX["primitives"]
    assert (model.dropout, model.cell.dropouth, model.cell.dropoutx, model.dropouti, model.dropoute) == \
        PTB_DEFAULTS["dropouts"] == (0.75, 0.25, 0.75, 0.2, 0.0)


def test_recurrent_derivation_rule():
    weights = torch.full((36, 5), 0.1)
    weights[:, 0] = 0.9  # none: never chosen
    weights[1, 3], weights[2, 1] = 0.5, 0.5  # step 1: a tie between s0 (sigmoid) and s1 (tanh): the earlier
    weights[3:6, 2] = 0.3
    weights[5, 4] = 0.6  # step 2: s2, identity
    steps = strongest_predecessors(weights, [list(RNN_PRIMITIVES)] * 36, 8)
    assert steps[:3] == [("tanh", 0), ("sigmoid", 0), ("identity", 2)]
    assert steps[3:] == [("tanh", 0)] * 5  # all equal: first state, first operation other than none


def _lm_search(data, out, **config):
    settings = dict(dataset="ptb", data_dir=str(data), nhid=8, bptt=5, batch_size=4, dropouts=(0.0,) * 5,
                    device="cpu", **config)
    return LanguageSearch(Darts(order=2), SearchConfig(**settings), out, progress=False)


def _through_the_step(search, train, valid, xi, c, detach=False):
    """d L_val(w', alpha) / d alpha with w' = w - xi (c grad_w L_train + wd w), c constant, and the validation
    gradient at w'; ``detach``: w' taken as a constant (the direct term alone)."""
    model, weights, alphas = search.model, search.weights, search.alphas
    names = [n for n, _ in model.named_parameters() if not n.startswith("arch.")]
    grads = torch.autograd.grad(search.loss(train), weights, create_graph=not detach)
    decay = search.config.weight_decay
    unrolled = {n: w - xi * (c * g + decay * w) for n, w, g in zip(names, weights, grads)}
    if detach:
        unrolled = {n: w.detach().requires_grad_() for n, w in unrolled.items()}
    logits, _ = functional_call(model, unrolled, (valid.inputs, valid.hidden))
    loss = F.cross_entropy(logits.flatten(0, 1), valid.targets.flatten())
    d_alpha = torch.autograd.grad(loss, alphas, retain_graph=detach)
    v = torch.autograd.grad(loss, list(unrolled.values())) if detach else None
    return d_alpha, v


def test_lm_unrolled_step_matches_autograd(tmp_path):
    """DARTS second order on the language model (rnn/architect.py), float64, dropouts 0 (train-mode batch norm):
    without clipping it is autograd through one SGD step; with clipping, the step's coefficient c scales it and
    the Hessian-vector product's vector is the validation gradient clipped to ``grad_clip``."""
    torch.manual_seed(0)
    search = _lm_search(_write_corpus(tmp_path / "ptb"), tmp_path / "out").bilevel
    search.model.double().train()
    with torch.no_grad():
        search.alphas[0].normal_(0, 1.0)
    tokens = lambda: torch.randint(0, search.model.ntoken, (6, 3))  # noqa: E731
    train, valid = (Window(tokens(), tokens(), torch.randn(3, 8, dtype=torch.float64)) for _ in range(2))
    xi, flat = 2.0, lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    before = [w.detach().clone() for w in search.weights]

    search.config.grad_clip = 1e6  # no clipping: the exact hypergradient
    exact, _ = _through_the_step(search, train, valid, xi, 1.0)
    direct, _ = _through_the_step(search, train, valid, xi, 1.0, detach=True)
    approx = unrolled_gradient(search, train, valid, xi, r=1e-6, clip=search.config.grad_clip)
    exact, direct, approx = flat(exact), flat(direct), flat(approx)
    assert (exact - direct).norm() / exact.norm() > 1e-2, "the test cannot tell first from second order"
    assert (approx - exact).norm() / exact.norm() < 1e-6

    train_norm = flat(torch.autograd.grad(search.loss(train), search.weights)).norm().item()
    search.config.grad_clip = clip = train_norm / 4  # clips the training gradient: c = 1/4
    c = clip / (train_norm + 1e-6)
    exact, _ = _through_the_step(search, train, valid, xi, c)
    direct, v = _through_the_step(search, train, valid, xi, c, detach=True)
    shrink = min(1.0, clip / flat(v).norm().item())
    assert shrink < 1, "the validation gradient must be clipped too"
    approx = unrolled_gradient(search, train, valid, xi, r=1e-6, clip=clip)
    expected = flat(direct) + shrink * (flat(exact) - flat(direct))
    assert (flat(approx) - expected).norm() / expected.norm() < 1e-6
    assert all(torch.equal(w, b) for w, b in zip(search.weights, before))


def search(algorithm, data, out, *extra, epochs=2):
    return runner.invoke(app, ["search", algorithm, "--dataset", "ptb", "--data-dir", str(data), "--out", str(out),
                               "--epochs", str(epochs), *TINY, *extra])


@pytest.mark.parametrize("algorithm, extra, label", [
    ("darts", [], "darts_1st"), ("darts", ["--order", "2"], "darts_2nd"), ("gdas", [], "gdas"),
    ("gdas", ["--soft"], "gdas")])
def test_ptb_search_writes_a_recurrent_genotype_and_its_record(tmp_path, algorithm, extra, label):
    out = tmp_path / "out"
    result = search(algorithm, _write_corpus(tmp_path / "ptb"), out, *extra)
    assert result.exit_code == 0, result.output
    assert f"{label} epoch 2/2: train ppl" in result.output and "valid ppl" in result.output
    genotype = load_genotype(out / "genotype.json")
    assert isinstance(genotype, RecurrentGenotype) and genotype.name == f"{label}_ptb_seed2".upper()
    assert len(genotype.recurrent) == 8 and genotype.concat == tuple(range(1, 9))
    assert all(op != "none" and 0 <= pred <= i for i, (op, pred) in enumerate(genotype.recurrent))
    record = json.loads((out / "search.json").read_text())
    assert record["algorithm"] == label and record["epochs_done"] == 2 and record["cpu_hours"] > 0
    assert [e["epoch"] for e in record["epochs"]] == [0, 1]
    assert all(math.isclose(e["valid_ppl"], math.exp(e["valid_loss"]), rel_tol=1e-3) for e in record["epochs"])
    assert all(e["valid_ppl"] < 61 for e in record["epochs"])  # below a uniform guess over the 61 words
    assert record["epochs"][-1]["genotype"] == {"recurrent": [list(s) for s in genotype.recurrent]}
    assert list(record["architecture"]) == ["alphas.recurrent"] and len(record["architecture"]["alphas.recurrent"]) == 36
    config = record["config"]
    assert (config["lr"], config["lr_min"], config["momentum"], config["grad_clip"], config["arch_lr"],
            config["weight_decay"], config["arch_betas"]) == (20.0, 20.0, 0.0, 0.25, 3e-3, 5e-7, [0.9, 0.999])
    assert (config["nhid"], config["bptt"], config["batch_size"], config["max_batches"]) == (16, 8, 4, 5)
    assert record["stages"][0]["steps"] == 8 and record["stages"][0]["candidates_per_edge"] == 5
    assert record["data"]["words"] == 61
    if algorithm == "gdas":
        assert [e["tau"] for e in record["epochs"]] == pytest.approx([10.0, 1.0])
        assert record["options"]["soft"] == ("--soft" in extra)
    info = runner.invoke(app, ["info", str(out / "genotype.json"), "--json"])
    assert info.exit_code == 0 and json.loads(info.output)["genotype"]["recurrent"] == [list(s) for s in genotype.recurrent]


def test_searched_recurrent_genotype_trains(tmp_path):
    data, out = _write_corpus(tmp_path / "ptb"), tmp_path / "search"
    assert search("darts", data, out, epochs=1).exit_code == 0
    settings = dict(nhid=16, batch_size=4, eval_batch_size=4, test_batch_size=2, bptt=8, max_batches=5, epochs=1)
    result = runner.invoke(app, ["train", str(out / "genotype.json"), "--dataset", "ptb", "--data-dir", str(data),
                                 "--out", str(tmp_path / "train"),
                                 *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]])
    assert result.exit_code == 0, result.output
    assert "darts_1st_ptb_seed2_ptb on ptb: best valid ppl" in result.output


@pytest.mark.parametrize("algorithm", ["darts", "gdas", "ednas"])
def test_ptb_search_resume_continues_exactly(tmp_path, monkeypatch, algorithm):
    data, straight, killed = _write_corpus(tmp_path / "ptb"), tmp_path / "straight", tmp_path / "killed"
    assert search(algorithm, data, straight).exit_code == 0
    save = run_module.save_checkpoint

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "save_checkpoint", save_then_die)
    assert search(algorithm, data, killed).exit_code == 130
    monkeypatch.setattr(run_module, "save_checkpoint", save)
    result = search(algorithm, data, killed, "--resume")
    assert result.exit_code == 0, result.output
    a, b = (json.loads((out / "search.json").read_text()) for out in (straight, killed))
    keys = ["train_loss", "valid_loss", "genotype"]
    assert [[e[k] for k in keys] for e in a["epochs"]] == [[e[k] for k in keys] for e in b["epochs"]]
    assert a["architecture"] == b["architecture"]


def test_ptb_search_bad_input_is_one_clear_error(tmp_path):
    data = _write_corpus(tmp_path / "ptb")
    cases = [
        (["search", "pc-darts", "--dataset", "ptb"], "pc-darts's paper has no recurrent-cell search; use darts, gdas or ednas"),
        (["search", "darts", "--dataset", "wt2"], "search recurrent cells on ptb and transfer them to wt2"),
        (["search", "darts", "--dataset", "ptb", "--dropouts", "0.5,0.5"], "expected 5 probabilities in [0, 1)"),
        (["search", "darts", "--dataset", "ptb", "--nhid", "0"], "--nhid must be positive"),
        (["search", "darts", "--dataset", "ptb", "--data-dir", str(tmp_path / "none")], "no such directory"),
        (["search", "darts", "--dataset", "ptb", "--batch-size", "5000"], "too few for a batch size of 5000"),
    ]
    for args, message in cases:
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "out"),
                                     *(["--data-dir", str(data)] if "--data-dir" not in args else [])])
        assert result.exit_code == 2 and message in result.output.replace("\n", ""), (args, result.output)
        assert result.output.count("\n") == 1, result.output


def test_gdas_recurrent_mixing_is_the_hard_sample_or_the_released_soft_one():
    alpha = torch.randn(36, 5, requires_grad=True)
    hard = Gdas().recurrent_mixing()({"alphas": alpha}, 8).weights
    soft = Gdas(soft=True).recurrent_mixing()({"alphas": alpha}, 8).weights
    assert torch.equal(hard.detach().max(-1).values, torch.ones(36)) and hard.detach().sum().item() == 36
    assert (soft.detach() < 1).all() and soft.detach().sum(-1).allclose(torch.ones(36, dtype=soft.dtype))


def test_a_window_takes_one_step_of_each_and_carries_both_states(tmp_path):
    run = _lm_search(_write_corpus(tmp_path / "ptb"), tmp_path / "out", max_batches=3, epochs=1)
    alphas, weights = [p.detach().clone() for p in run.bilevel.alphas], [p.detach().clone() for p in run.bilevel.weights]
    calls = []
    step = run.bilevel.step
    run.bilevel.step = lambda train, valid: calls.append((train, valid)) or step(train, valid)
    stats = run.train_epoch(0)
    assert len(calls) == 3 and stats["train_ppl"] == pytest.approx(math.exp(stats["train_loss"]))
    assert calls[0][0].hidden is None and torch.equal(calls[1][0].hidden, calls[0][0].next_hidden)
    assert torch.equal(calls[2][1].hidden, calls[1][1].next_hidden) and calls[1][1].inputs.size(0) == 5
    assert not any(torch.equal(p, q) for p, q in zip(run.bilevel.alphas, alphas))
    assert not any(torch.equal(p, q) for p, q in zip(run.bilevel.weights, weights))
    assert run.bilevel.lr() == 20.0  # the window-length scaling is undone


#: a short search on the full PTB: a small supernet (32 units), light dropouts, windows of 16 x 20 tokens
REAL_PTB = ["--epochs", "1", "--nhid", "32", "--batch-size", "16", "--bptt", "20",
            "--dropouts", "0.1,0.05,0.1,0.05,0", "--device", "cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, windows, extra", [("darts", 75, []), ("gdas", 75, []),
                                                       ("ednas", 150, ["--derive-samples", "10"])])
def test_real_ptb_search_learns_and_its_genotype_trains(tmp_path, algorithm, windows, extra):
    """Full PTB from the command line, 75 short windows (EDNAS, whose policy samples one child per window: 150):
    the validation perplexity of what the search returns (DARTS, GDAS: the supernet's on the whole split; EDNAS:
    its chosen child's on its scoring windows) falls well below a uniform guess over the vocabulary (10,000), and
    the genotype trains as a language model.

    The unigram model's perplexity (687) is not reached so soon. Measured on the quiet 2-core machine: DARTS
    1,426 and GDAS 1,524 (20 s each; 1,101 and 1,168 after 150 windows), EDNAS's child 1,931 (16 s). (EDNAS's own
    epoch figure, the mean over its policy pass, one new child per window in eval mode, was 5e14: a child whose
    states outgrow the running statistics gathered over other children dominates the mean.)"""
    data = SHARED / "data" / "ptb"
    if not data.is_dir():
        pytest.skip(f"{data} is absent (a fresh clone without ../shared)")
    vocabulary = len(load_corpus("ptb", data).words)
    out = tmp_path / "search"
    result = runner.invoke(app, ["search", algorithm, "--dataset", "ptb", "--data-dir", str(data), "--out", str(out),
                                 *REAL_PTB, "--max-batches", str(windows), *extra])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "search.json").read_text())
    returned = record["derived_samples"][record["derived_best"]] if algorithm == "ednas" else record["epochs"][-1]
    assert returned["valid_ppl"] < vocabulary / 4, (returned["valid_ppl"], vocabulary)
    settings = dict(nhid=32, epochs=1, max_batches=10, batch_size=16, eval_batch_size=64, test_batch_size=64)
    result = runner.invoke(app, ["train", str(out / "genotype.json"), "--dataset", "ptb", "--data-dir", str(data),
                                 "--out", str(tmp_path / "train"),
                                 *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]])
    assert result.exit_code == 0, result.output
    trained = json.loads((tmp_path / "train" / "metrics.jsonl").read_text().splitlines()[-1])
    assert trained["valid_ppl"] < vocabulary, trained
