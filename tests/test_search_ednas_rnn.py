"""EDNAS on PTB: the child and its log-probability against the authors' code (EDNAS_on_Penn_Treebank), the
child's single path against its one-hot mix, the REINFORCE gradient, seeded sampling, the run's record and
genotype, and the released code's behaviour (``--authors-code``)."""
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from nas_zoo.cli.app import app
from nas_zoo.registry.genotype import RecurrentGenotype, load_genotype
from nas_zoo.search import Ednas
from nas_zoo.search.ednas import log_prob, sample_cell
from nas_zoo.search.ednas_rnn import REWARD_SCALE, STEP_OPERATIONS, EdnasRecurrentNetwork, StepSample, edge
from nas_zoo.search.recurrent import LanguageBiLevel
from nas_zoo.search.supernet import Mix
from tests.test_rnn import _write_corpus
from tests.test_search_rnn import search

FIXTURES = Path(__file__).parent / "fixtures" / "ednas_rnn_search"
INDEX = json.loads((FIXTURES / "index.json").read_text())
runner = CliRunner()


def _fixture(entry):
    tensors = load_file(FIXTURES / "outputs.safetensors")
    return lambda name: tensors[f"{entry['prefix']}.{name}"]


def _authors_model(entry, authors_code):
    """Our recurrent EDNAS model with the authors' weights and batch-norm statistics (their keys mapped)."""
    prefix = entry["prefix"] + ".state."
    tensors = load_file(FIXTURES / "outputs.safetensors")
    state = {k[len(prefix):].replace("rnns.0.", "cell.").replace("decoder.bias", "decoder_bias"): v
             for k, v in tensors.items() if k.startswith(prefix) and not k.endswith("decoder.weight")}
    model = EdnasRecurrentNetwork(entry["ntoken"], entry["nhid"], (0.0,) * 5, authors_code=authors_code)
    assert set(state) < set(model.state_dict())
    model.load_state_dict({**model.state_dict(), **state})
    return model


def _their_child(entry) -> StepSample:
    """Their sampled edges (one per step) as our sample: step i's edge i (i + 1) / 2 + j reads state j."""
    predecessors = [e - edge(i, 0) for i, e in enumerate(entry["edges"])]
    assert predecessors[0] == 0 and all(0 <= j <= i for i, j in enumerate(predecessors))
    return StepSample(tuple(predecessors[1:]), tuple(entry["ops"]))


@pytest.mark.parametrize("entry", INDEX["entries"], ids=lambda e: e["prefix"])
@pytest.mark.parametrize("authors_code, outputs", [(False, "child"), (True, "released")])
def test_child_computes_the_authors_log_probs(entry, authors_code, outputs):
    """Paper: the child alone (their cell given the one-hot sample itself); --authors-code: their cell as
    released, on the softmax of the one-hot sample. Eval mode (running statistics), then train mode."""
    get = _fixture(entry)
    model = _authors_model(entry, authors_code)
    child = _their_child(entry)
    assert list(STEP_OPERATIONS) == INDEX["primitives"]
    assert child.steps(model.candidates["recurrent"]) == entry["genotype"]["recurrent"]
    assert sum(p.numel() for p in model.weights()) == entry["params"]
    model.child = {"recurrent": child}
    assert (model.mixes()["recurrent"].index is None) == authors_code
    for mode in ("eval", "train"):
        model.train(mode == "train")
        with torch.no_grad():
            logits, _ = model(get("tokens"), get("hidden"))
        torch.testing.assert_close(logits.log_softmax(-1), get(f"{outputs}_{mode}"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("entry", INDEX["entries"], ids=lambda e: e["prefix"])
def test_log_probability_of_their_sample_and_their_policy_step(entry):
    """Their ``sample_log_probs`` is -log p(child) through a second softmax (``--authors-code``'s form); their
    policy step cannot run: the policies are constants, so the loss has no graph."""
    get = _fixture(entry)
    policy = {"alphas": get("weights"), **{f"inputs{i + 1}": get(f"edge_weights.{i}") for i in range(7)}}
    child = _their_child(entry)
    assert log_prob(policy, child, double_softmax=True).item() == pytest.approx(-entry["sample_log_probs"], rel=1e-6)
    assert log_prob(policy, child).item() != pytest.approx(-entry["sample_log_probs"], rel=1e-3)
    assert "does not require grad" in entry["policy_step_error"]


def test_a_child_runs_its_edges_only_and_equals_its_one_hot_mix():
    """The single path (``child_step``) gives the outputs and weight gradients of the mixed cell given the
    child's one-hot weights, with the dropouts on (the same masks), in train and eval mode."""
    torch.manual_seed(0)
    model = EdnasRecurrentNetwork(40, 12, (0.3, 0.2, 0.3, 0.1, 0.1)).double()
    model.child = {"recurrent": sample_cell(model.arch.of("recurrent"), model.nodes, StepSample)}
    child = model.mixes()["recurrent"]
    assert [e for e, k in enumerate(child.index) if k is not None] == model.child["recurrent"].edges()
    tokens, hidden = torch.randint(0, 40, (6, 3)), torch.randn(3, 12, dtype=torch.float64)

    def run(mix):
        model.zero_grad()
        model.mixes = lambda: {"recurrent": mix}
        torch.manual_seed(1)
        logits, outputs = model(tokens, hidden)
        (logits.log_softmax(-1)[..., 0].sum() + outputs.sum()).backward()
        return logits.detach(), [p.grad.clone() for p in model.weights()]

    for training in (True, False):
        model.train(training)
        (single, single_grads), (mixed, mixed_grads) = run(child), run(Mix(child.weights.double()))
        torch.testing.assert_close(single, mixed, atol=1e-12, rtol=1e-10)
        for a, b in zip(single_grads, mixed_grads):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_policy_gradient_is_the_analytic_reinforce_gradient():
    """d/dtheta of -(R - b) log p(child), b the baseline after moving toward R: -(R - b) (onehot - p) for each
    step's predecessor and each chosen edge's operation; the edges not chosen get exactly zero."""
    torch.manual_seed(0)
    method, model = Ednas(), EdnasRecurrentNetwork(30, 8, (0.0,) * 5)
    with torch.no_grad():
        for p in model.arch.parameters():
            p.normal_()
    child = {"recurrent": sample_cell(model.arch.of("recurrent"), model.nodes, StepSample)}
    reward = 0.4
    names = [name for name, _ in model.arch.named_parameters()]
    grads = dict(zip(names, torch.autograd.grad(method.policy_loss(model, child, reward), model.arch.parameters())))
    advantage = reward - 0.01 * reward  # the baseline moved from 0 toward the reward first
    assert model.baseline.item() == pytest.approx(0.01 * reward)

    def analytic(theta, k):
        return -advantage * (torch.nn.functional.one_hot(torch.tensor(k), len(theta)) - theta.detach().softmax(-1))

    sample, alphas = child["recurrent"], model.arch.alphas["recurrent"]
    expected = torch.zeros_like(alphas)
    for e, k in zip(sample.edges(), sample.ops):
        expected[e] = analytic(alphas[e], k)
    torch.testing.assert_close(grads["alphas.recurrent"], expected, atol=1e-6, rtol=0)
    for i, j in enumerate(sample.inputs, 1):
        torch.testing.assert_close(grads[f"inputs{i}.recurrent"],
                                   analytic(getattr(model.arch, f"inputs{i}")["recurrent"], j), atol=1e-6, rtol=0)


def test_reinforce_estimates_the_gradient_of_the_expected_reward():
    """Over many children, the mean of (r(child) - b) grad log p(child) is grad E[r]: E[r] summed exactly over
    all 32 children of a 2-step cell (2 predecessors for step 1, 4 operations per step), fixed rewards."""
    torch.manual_seed(0)
    policy = {"alphas": torch.randn(3, 4, requires_grad=True), "inputs1": torch.randn(2, requires_grad=True)}
    children = [StepSample((j,), ops) for j in range(2) for ops in itertools.product(range(4), repeat=2)]
    rewards = dict(zip(children, torch.rand(len(children)).tolist()))
    expected = sum(log_prob(policy, c).exp() * rewards[c] for c in children)
    assert sum(log_prob(policy, c).exp() for c in children).item() == pytest.approx(1.0)  # a distribution
    exact = torch.autograd.grad(expected, list(policy.values()))
    n, counts = 5_000, {}
    for _ in range(n):
        c = sample_cell(policy, 2, StepSample)
        counts[c] = counts.get(c, 0) + 1
    baseline = expected.item()
    surrogate = sum(k * (rewards[c] - baseline) * log_prob(policy, c) for c, k in counts.items()) / n
    estimate = torch.autograd.grad(surrogate, list(policy.values()))
    exact, estimate = torch.cat([g.flatten() for g in exact]), torch.cat([g.flatten() for g in estimate])
    assert (estimate - exact).norm() < 0.15 * exact.norm()  # 0.02-0.07 with 10,000 children, 4 seeds


def test_sampling_follows_the_seed_and_the_policy():
    model = EdnasRecurrentNetwork(30, 8, (0.0,) * 5)

    def draw(seed):
        torch.manual_seed(seed)
        return [sample_cell(model.arch.of("recurrent"), model.nodes, StepSample) for _ in range(5)]

    assert draw(1) == draw(1) and draw(1) != draw(2)
    with torch.no_grad():  # a collapsed policy: step 3 always reads s_2, every edge is relu
        model.arch.inputs3["recurrent"].copy_(torch.tensor([-50.0, -50.0, 50.0, -50.0]))
        model.arch.alphas["recurrent"][:, STEP_OPERATIONS.index("relu")] = 50.0
    children = draw(3)
    assert all(c.inputs[2] == 2 and set(c.ops) == {STEP_OPERATIONS.index("relu")} for c in children)
    assert all(c.edges()[3] == edge(3, 2) for c in children)


def test_ednas_ptb_search_writes_its_record_and_the_genotype_trains(tmp_path):
    data, out = _write_corpus(tmp_path / "ptb"), tmp_path / "out"
    result = search("ednas", data, out, "--derive-samples", "6")
    assert result.exit_code == 0, result.output
    assert "ednas epoch 2/2: train ppl" in result.output
    record = json.loads((out / "search.json").read_text())
    assert record["algorithm"] == "ednas" and record["epochs_done"] == 2
    assert record["options"] == {"authors_code": False, "child_steps": 1, "policy_batch_size": 0,
                                 "derive_samples": 6, "derive_batches": 1}
    config = record["config"]
    assert (config["lr"], config["grad_clip"], config["arch_lr"], config["arch_weight_decay"], config["tar"]) == \
        (20.0, 0.25, 3.5e-4, 1e-3, 1e-3)
    assert sorted(record["architecture"]) == ["alphas.recurrent"] + [f"inputs{i}.recurrent" for i in range(1, 8)]
    assert [len(record["architecture"][f"inputs{i}.recurrent"]) for i in range(1, 8)] == list(range(2, 9))
    assert record["stages"][0]["candidates_per_edge"] == 4
    for epoch in record["epochs"]:
        assert math.isclose(epoch["valid_ppl"], math.exp(epoch["valid_loss"]), rel_tol=1e-3)
        assert 0 < epoch["reward_baseline"] < REWARD_SCALE
        entropies = epoch["policy_entropy"]["recurrent"]
        assert 0 < entropies["operations"] <= math.log(4) + 1e-4 and len(entropies["inputs"]) == 7
    # the epoch's genotype is the most likely child under the policies the record holds
    arch = record["architecture"]
    inputs = tuple(int(torch.tensor(arch[f"inputs{i}.recurrent"]).argmax()) for i in range(1, 8))
    ops = torch.tensor(arch["alphas.recurrent"]).argmax(-1)[StepSample(inputs, ()).edges()].tolist()
    assert record["epochs"][-1]["genotype"]["recurrent"] == StepSample(inputs, tuple(ops)).steps([STEP_OPERATIONS] * 36)
    samples, best = record["derived_samples"], record["derived_best"]
    assert len(samples) == 6 and samples[best]["reward"] == max(s["reward"] for s in samples)
    assert all(s["reward"] == (0 if s["valid_ppl"] is None else pytest.approx(REWARD_SCALE / s["valid_ppl"], rel=1e-4))
               for s in samples)  # a child whose state diverged scores 0
    genotype = load_genotype(out / "genotype.json")
    assert isinstance(genotype, RecurrentGenotype) and genotype.name == "EDNAS_PTB_SEED2"
    assert [list(s) for s in genotype.recurrent] == samples[best]["recurrent"]
    info = runner.invoke(app, ["info", str(out / "genotype.json"), "--json"])
    assert info.exit_code == 0 and json.loads(info.output)["genotype"]["recurrent"] == samples[best]["recurrent"]
    settings = dict(nhid=16, batch_size=4, eval_batch_size=4, test_batch_size=2, bptt=8, max_batches=5, epochs=1)
    trained = runner.invoke(app, ["train", str(out / "genotype.json"), "--dataset", "ptb", "--data-dir", str(data),
                                  "--out", str(tmp_path / "train"),
                                  *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]])
    assert trained.exit_code == 0, trained.output


@pytest.mark.parametrize("authors_code", [False, True])
def test_policy_pass_as_the_paper_or_as_released(tmp_path, monkeypatch, authors_code):
    """The paper: one run per validation window, each followed by a policy step; released: each window run
    twice and no policy step, the policies constant zeros (uniform sampling), so every epoch's most likely
    child is the first predecessor and operation everywhere."""
    runs, steps = [], []
    loss, arch_step = LanguageBiLevel.loss, LanguageBiLevel.arch_step
    monkeypatch.setattr(LanguageBiLevel, "loss", lambda self, window: runs.append(window) or loss(self, window))
    monkeypatch.setattr(LanguageBiLevel, "arch_step", lambda self, grad: steps.append(1) or arch_step(self, grad))
    out = tmp_path / "out"
    result = search("ednas", _write_corpus(tmp_path / "ptb"), out, "--derive-samples", "3",
                    *(["--authors-code"] if authors_code else []), epochs=1)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "search.json").read_text())
    policy_runs = runs[:len(runs) - 3]  # then one per derived sample
    repeated = [a.inputs.equal(b.inputs) and b.hidden is a.next_hidden for a, b in zip(policy_runs, policy_runs[1:])]
    if authors_code:
        assert len(policy_runs) % 2 == 0 and all(repeated[::2]) and not steps
        assert all(v == 0 for values in record["architecture"].values() for v in torch.tensor(values).flatten())
    else:
        assert not any(repeated) and len(steps) == len(policy_runs) > 1
    if authors_code:
        assert record["epochs"][0]["genotype"]["recurrent"] == [["tanh", 0]] * 8
        assert record["epochs"][0]["policy_entropy"]["recurrent"]["operations"] == pytest.approx(math.log(4), abs=1e-4)
