"""EDNAS: the policy gradient against the analytic one, single-path children (unsampled weights take no
step), seeded sampling, exact resume, the record, the released code's quirks and the ImageNet search."""
import itertools
import json

import pytest
import torch
from typer.testing import CliRunner

from nas_zoo.cli.app import app
from nas_zoo.registry.genotype import load_genotype
from nas_zoo.search import Ednas, SearchConfig, with_defaults
from nas_zoo.harness import run as run_module
from nas_zoo.search.bilevel import BiLevel
from nas_zoo.search.ednas import CellSample, input_pairs, log_prob, sample_cell

from .test_search_cli import RECORD_FIELDS, search

runner = CliRunner()
FEW = ["--derive-samples", "6"]


def tiny(algorithm=None, nodes=3):
    """A 3-cell, C=4 EDNAS supernet with its optimizers (the CIFAR paper settings)."""
    algorithm = algorithm or Ednas()
    config = with_defaults(algorithm, SearchConfig(init_channels=4, layers=3, nodes=nodes, device="cpu"))
    torch.manual_seed(0)
    return algorithm, BiLevel(algorithm, algorithm.network(config, 10), config)


def test_input_pairs_are_the_authors_edge_combinations():
    assert input_pairs(0) == [(0, 1)]
    assert input_pairs(1) == [(0, 1), (0, 2), (1, 2)]
    assert input_pairs(3) == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3), (0, 4), (1, 4), (2, 4), (3, 4)]
    sample = CellSample(pairs=(2, 3), ops=(0, 1, 2, 3, 4, 5))  # node 1: inputs 1, 2; node 2: inputs 0, 3
    assert sample.edges() == [0, 1, 3, 4, 5, 8]


@pytest.mark.parametrize("authors_code", [False, True])
def test_policy_gradient_is_the_analytic_reinforce_gradient(authors_code):
    """d/dtheta of -(R - b) log p(child), b the baseline after moving toward R: for each sampled categorical
    -(R - b) (onehot - p) (paper), or through the authors' second softmax -(R - b) J_softmax^T (onehot - q);
    rows the child did not sample get exactly zero."""
    algorithm, search = tiny(Ednas(authors_code=authors_code))
    model = search.model
    with torch.no_grad():
        for p in search.alphas:
            p.normal_()
    child = algorithm.sample(model)
    reward = 0.75
    gradient = search.grad(algorithm.policy_loss(model, child, reward), search.alphas)
    advantage = reward - 0.01 * reward  # the baseline moved from 0 toward the reward first
    assert model.baseline.item() == pytest.approx(0.01 * reward)

    def analytic(theta, k):
        p = theta.softmax(-1)
        if not authors_code:
            return -advantage * (torch.nn.functional.one_hot(torch.tensor(k), len(p)) - p)
        q = p.softmax(-1)
        jacobian = torch.diag(p) - p[:, None] * p[None, :]
        return -advantage * jacobian.T @ (torch.nn.functional.one_hot(torch.tensor(k), len(p)) - q)

    grads = dict(zip([name for name, _ in model.arch.named_parameters()], gradient))
    for t in model.cell_types:
        policy, sample = model.arch.of(t), child[t]
        expected = torch.zeros_like(policy["alphas"])
        for e, k in zip(sample.edges(), sample.ops):
            expected[e] = analytic(policy["alphas"][e].detach(), k)
        assert torch.allclose(grads[f"alphas.{t}"], expected, atol=1e-6)
        assert grads[f"alphas.{t}"][[e for e in range(len(expected)) if e not in sample.edges()]].abs().sum() == 0
        for i, pair in enumerate(sample.pairs, 1):
            assert torch.allclose(grads[f"inputs{i}.{t}"], analytic(policy[f"inputs{i}"].detach(), pair), atol=1e-6)


def test_reinforce_estimates_the_gradient_of_the_expected_reward():
    """Over many children the mean of (r(child) - b) grad log p(child) is grad E[r] for a constant b: E[r]
    summed exactly over all 48 children of a 2-node cell with 2 operations, for a fixed reward per child."""
    torch.manual_seed(0)
    policy = {"alphas": torch.randn(5, 2, requires_grad=True), "inputs1": torch.randn(3, requires_grad=True)}
    children = [CellSample((pair,), ops) for pair in range(3) for ops in itertools.product(range(2), repeat=4)]
    rewards = {child: r for child, r in zip(children, torch.rand(len(children)).tolist())}
    expected_reward = sum(log_prob(policy, c).exp() * rewards[c] for c in children)
    exact = torch.autograd.grad(expected_reward, list(policy.values()))
    n = 20_000
    draws = [sample_cell(policy, 2) for _ in range(n)]
    baseline = expected_reward.item()
    estimate = torch.autograd.grad(sum((rewards[c] - baseline) * log_prob(policy, c) for c in draws) / n,
                                   list(policy.values()))
    exact, estimate = torch.cat([g.flatten() for g in exact]), torch.cat([g.flatten() for g in estimate])
    assert (estimate - exact).norm() < 0.1 * exact.norm()
    assert sum(log_prob(policy, c).exp() for c in children).item() == pytest.approx(1.0)  # a distribution


def test_unsampled_operations_get_no_gradient_and_no_step():
    """A weights step on child B leaves the operations child A ran and B did not exactly as they were (no
    weight decay, no momentum though they have a momentum buffer), and never-chosen edges never move."""
    algorithm, search = tiny()
    model = search.model
    sep3, sep5 = (model.candidates["normal"][0].index(n) for n in ("sep_conv_3x3", "sep_conv_5x5"))
    pairs = (0, 0)  # every node takes the two cell inputs: edges 0, 1, 2, 3, 5, 6
    a = {t: CellSample(pairs, (sep3,) * 6) for t in model.cell_types}
    b = {t: CellSample(pairs, (sep5,) * 6) for t in model.cell_types}
    cell = model.cells[0]
    chosen, unchosen = a["normal"].edges(), [4, 7, 8]
    snapshot = lambda ops: [p.detach().clone() for op in ops for p in op.parameters()]  # noqa: E731
    never = snapshot(cell.edges[e].ops[k] for e in unchosen for k in range(7))
    batch = (torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    model.train()
    model.child = a
    search.weights_step(batch)
    ran_in_a = [cell.edges[e].ops[sep3] for e in chosen]
    after_a = snapshot(ran_in_a)
    assert all(search.w_optimizer.state[p] for op in ran_in_a for p in op.parameters())  # momentum buffers
    model.child = b
    search.weights_step(batch)
    assert all(p.grad is None for op in ran_in_a for p in op.parameters())
    assert all(torch.equal(p, q) for p, q in zip(snapshot(ran_in_a), after_a))
    ran_in_b = [cell.edges[e].ops[sep5] for e in chosen]
    assert all(p.grad is not None for op in ran_in_b for p in op.parameters())
    assert all(torch.equal(p, q) for p, q in zip(snapshot(cell.edges[e].ops[k] for e in unchosen for k in range(7)),
                                                 never))


def test_sampling_follows_the_seed_and_the_policy():
    algorithm, search = tiny()
    model = search.model

    def draw(seed):
        torch.manual_seed(seed)
        return [algorithm.sample(model) for _ in range(5)]

    assert draw(1) == draw(1) and draw(1) != draw(2)
    with torch.no_grad():  # a collapsed policy: node 1 always takes inputs (1, 2), every edge a max-pool
        model.arch.inputs1["normal"].copy_(torch.tensor([-50.0, -50.0, 50.0]))
        model.arch.alphas["normal"][:, 0] = 50.0
    children = [algorithm.sample(model)["normal"] for _ in range(20)]
    assert all(c.pairs[0] == 2 and set(c.ops) == {0} for c in children)
    assert all(c.edges()[2:4] == [3, 4] for c in children)
    assert algorithm.entropies(model)["normal"]["inputs"][0] == pytest.approx(0.0, abs=1e-4)


def test_authors_code_hands_the_normal_sample_to_the_reduction_cells():
    for authors_code, swapped in ((False, False), (True, True)):
        algorithm, search = tiny(Ednas(authors_code=authors_code))
        model = search.model
        model.child = algorithm.sample(model)
        mixes = model.mixes()
        ran_in_reduce = [e for e, i in enumerate(mixes["reduce"].index) if i is not None]
        assert ran_in_reduce == model.child["normal" if swapped else "reduce"].edges()
    authors = Ednas(authors_code=True)
    imagenet = authors.network(with_defaults(authors, SearchConfig(dataset="imagenet", init_channels=4, layers=3)), 10)
    assert not imagenet.swap  # the authors' ImageNet copy fixed it


def test_ednas_search_writes_its_record_and_the_genotype_trains(tiny_cifar, tmp_path):
    out = tmp_path / "out"
    result = search("ednas", tiny_cifar, out, *FEW, "--child-steps", "2")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "search.json").read_text())
    assert RECORD_FIELDS <= set(record) and record["algorithm"] == "ednas" and record["epochs_done"] == 2
    assert record["options"] == {"authors_code": False, "child_steps": 2, "policy_batch_size": 0,
                                 "derive_samples": 6, "derive_batches": 1}
    config = record["config"]
    assert (config["train_portion"], config["nesterov"], config["lr"], config["arch_lr"]) == (0.8, True, 0.05, 3.5e-4)
    for epoch in record["epochs"]:
        assert {"train_acc", "valid_acc", "reward_baseline", "policy_entropy", "genotype", "lr"} <= set(epoch)
        assert 0 <= epoch["reward_baseline"] < 1
        assert all(0 < e["operations"] <= 1.9460 and len(e["inputs"]) == 3 for e in epoch["policy_entropy"].values())
    first = record["epochs"][0]  # the baseline starts at 0 and moves only toward the rewards (valid_acc)
    assert (first["reward_baseline"] > 0) == (first["valid_acc"] > 0)
    samples, best = record["derived_samples"], record["derived_best"]
    assert len(samples) == 6 and samples[best]["valid_acc"] == max(s["valid_acc"] for s in samples)
    genotype = load_genotype(out / "genotype.json")
    assert [list(e) for e in genotype.normal] == samples[best]["normal"]
    assert [list(e) for e in genotype.reduce] == samples[best]["reduce"]
    assert all(op != "none" for op, _ in genotype.normal) and len(genotype.normal) == 8
    assert record["skip_connections_normal"] == sum(op == "skip_connect" for op, _ in genotype.normal)
    trained = runner.invoke(app, ["train", str(out / "genotype.json"), "--dataset", "cifar10", "--data-dir",
                                  str(tiny_cifar), "--out", str(tmp_path / "train"), "--init-channels", "4",
                                  "--layers", "3", "--batch-size", "16", "--num-workers", "0", "--epochs", "1"])
    assert trained.exit_code == 0, trained.output


def test_a_child_runs_for_child_steps_weights_steps(tiny_cifar, tmp_path, monkeypatch):
    """80 images: 64 train the weights in 8 batches of 8, a child at steps 0, 3 and 6; then a child per
    policy batch (16 images, 2 batches) and one per derived sample."""
    drawn = []
    sample = Ednas.sample
    monkeypatch.setattr(Ednas, "sample", lambda self, model: drawn.append(1) or sample(self, model))
    assert search("ednas", tiny_cifar, tmp_path / "out", "--child-steps", "3", "--derive-samples", "4",
                  epochs=1).exit_code == 0
    assert len(drawn) == 3 + 2 + 4


def test_ednas_resume_continues_exactly(tiny_cifar, tmp_path, monkeypatch):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert search("ednas", tiny_cifar, straight, *FEW).exit_code == 0
    save = run_module.save_checkpoint

    def save_then_die(*args, **kwargs):  # killed right after the first epoch's checkpoint
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "save_checkpoint", save_then_die)
    assert search("ednas", tiny_cifar, killed, *FEW).exit_code == 130
    monkeypatch.setattr(run_module, "save_checkpoint", save)
    assert search("ednas", tiny_cifar, killed, *FEW, "--resume").exit_code == 0
    a, b = (json.loads((out / "search.json").read_text()) for out in (straight, killed))
    for record in (a, b):  # all but the timings
        for key in ("wall_time_s", "cpu_hours", "peak_memory"):
            record.pop(key)
        for stage in record["stages"]:
            stage.pop("wall_time_s")
    assert a["epochs"] == b["epochs"] and a == b
    assert (straight / "genotype.json").read_text() == (killed / "genotype.json").read_text()


def test_ednas_imagenet_search_on_a_class_folder_dataset(tiny_imagenet, tmp_path):
    paper = with_defaults(Ednas(), SearchConfig(dataset="imagenet"))
    assert (paper.nodes, paper.init_channels, paper.batch_size, paper.epochs, paper.weight_decay, paper.nesterov,
            paper.grad_clip, paper.imagenet_sample) == (5, 48, 200, 50, 3e-5, False, 0.0, (0.8, 0.2))
    method = Ednas()
    method.for_dataset("imagenet")
    assert (method.child_steps, method.policy_batch_size, method.derive_batches) == (20, 50, 10)
    assert [method.weights_lr(paper, e) for e in (0, 9, 10, 19, 20, 30, 40, 49)] == pytest.approx(
        [0.05, 0.05, 0.025, 0.025, 0.005, 5e-4, 5e-5, 5e-5])
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", "ednas", "--dataset", "imagenet", "--data-dir", str(tiny_imagenet),
                                 "--out", str(out), "--epochs", "1", "--init-channels", "4", "--layers", "3",
                                 "--batch-size", "32", "--policy-batch-size", "16", "--derive-samples", "2",
                                 "--derive-batches", "1", "--num-workers", "0"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "search.json").read_text())
    assert record["config"]["nodes"] == 5 and record["options"]["child_steps"] == 20
    assert (record["data"]["weights_share"], record["data"]["arch_share"]) == (0.8, 0.2)
    assert (len(record["data"]["weights"]), len(record["data"]["arch"])) == (4 * 32, 4 * 8)
    assert len(record["epochs"][0]["policy_entropy"]["normal"]["inputs"]) == 4
    genotype = load_genotype(out / "genotype.json")
    assert len(genotype.normal) == 10 and genotype.normal_concat == (2, 3, 4, 5, 6)
