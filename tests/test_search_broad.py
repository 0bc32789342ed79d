"""BNAS-v2's broad search network against the authors' own (``tests/fixtures/bnas_search``: their networks'
weights, inputs and logits, made by ``make_fixtures.py`` from their checkout; none of their code here)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from nas_zoo import build_network
from nas_zoo.cli.app import app
from nas_zoo.registry.genotype import load_genotype
from nas_zoo.harness.recipes import paper_recipe
from nas_zoo.search import BDarts, Search, SearchConfig, with_defaults
from nas_zoo.search.broad import BroadSearchNetwork
from nas_zoo.search.darts import unrolled_gradient
from nas_zoo.search.pc_darts import PartialChannels

runner = CliRunner()

FIXTURES = Path(__file__).parent / "fixtures" / "bnas_search"
ENTRIES = json.loads((FIXTURES / "index.json").read_text())["entries"]
#: their module names -> ours
RENAMES = {"conv_cells.": "cells.", "en_cells.": "enhancement_cells.", "restricted_convs_gap.": "input_taps.",
           "reduction_convs_gap.": "input_reductions.", "restricted_convs_en.": "output_taps.",
           "reduction_convs_en.": "output_reductions.", "restricted_ens_gap.": "enhancement_taps."}


def _ours(key: str, partial: bool) -> str:
    for theirs, ours in RENAMES.items():
        if key.startswith(theirs):
            key = ours + key[len(theirs):]
    return key.replace("._ops.", ".edges.", 1).replace("._ops.", ".mixed.ops." if partial else ".ops.", 1)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"].split(".")[0] for e in ENTRIES])
def test_broad_supernet_reproduces_the_authors_network(entry):
    tensors, args, partial = load_file(FIXTURES / entry["file"]), entry["constructor"], entry["code"] == "PC"
    model = BroadSearchNetwork(args["C"], args["num_classes"], args["layers"], args["en_layers"],
                               mixing=PartialChannels(4) if partial else None)
    assert sum(p.numel() for p in model.weights()) == entry["weight_param_count"]
    state = {_ours(k[len("state."):], partial): v.float() if v.is_floating_point() else v
             for k, v in tensors.items() if k.startswith("state.")}
    for kind in ("alphas", "betas"):
        for ours, theirs in (("normal", "normal"), ("reduce", "reduce")):
            if f"{kind}_{theirs}" in tensors:
                state[f"arch.{kind}.{ours}"] = tensors[f"{kind}_{theirs}"]
    model.load_state_dict(state)  # strict: every tensor of theirs has its place in ours and back
    x = tensors["input"]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), tensors["logits_eval"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.train()(x), tensors["logits_train"], rtol=1e-4, atol=1e-5)


def test_confident_learning_rate_schedule(tiny_cifar, tmp_path):
    """c = ((epoch + 1) / epochs) ** 2: first order scales Adam's learning rate by c at every step; second
    order scales the hypergradient by c and leaves the learning rate; --no-clr is c = 1."""
    config = SearchConfig(data_dir=str(tiny_cifar), epochs=4, batch_size=8, init_channels=4, num_workers=0,
                          device="cpu")
    first = BDarts()
    assert [first.confidence(with_defaults(first, config), e) for e in range(4)] == [1 / 16, 1 / 4, 9 / 16, 1.0]
    assert BDarts(clr=False).confidence(with_defaults(first, config), 0) == 1.0
    assert BDarts(power=1).confidence(with_defaults(first, config), 0) == 1 / 4
    run = Search(first, config, tmp_path / "first", progress=False)
    assert run.run_epoch()["confidence"] == 1 / 16
    assert run.bilevel.a_optimizer.param_groups[0]["lr"] == pytest.approx(3e-4 / 16)

    second = BDarts(order=2)
    search = Search(second, config, tmp_path / "second", progress=False).bilevel
    batch = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    second.start_epoch(search.model, with_defaults(second, config), 0, 1)  # c = 1/4
    torch.manual_seed(0)
    scaled = second.arch_gradient(search, batch, batch)
    torch.manual_seed(0)
    plain = unrolled_gradient(search, batch, batch, search.lr())
    assert all(torch.allclose(s, p / 4) for s, p in zip(scaled, plain))
    assert search.a_optimizer.param_groups[0]["lr"] == 3e-4


@pytest.mark.parametrize("algorithm, extra, label", [
    ("b-darts", [], "b_darts_1st"), ("b-darts", ["--order", "2", "--no-clr", "--epochs", "1"], "b_darts_2nd"),
    ("b-pc-darts", ["--init-channels", "8", "--arch-warmup", "1"], "b_pc_darts")])
def test_broad_searches_write_a_bcnn_genotype(tiny_cifar, tmp_path, algorithm, extra, label):
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", algorithm, "--data-dir", str(tiny_cifar), "--out", str(out), "--epochs",
                                 "2", "--init-channels", "4", "--batch-size", "8", "--num-workers", "0",
                                 "--hessian-every", "0", *extra])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "search.json").read_text())
    assert record["algorithm"] == label and record["config"]["layers"] == 2 and record["stages"][0]["cells"] == 2
    if algorithm == "b-darts":
        assert [e["confidence"] for e in record["epochs"]] == ([0.25, 1.0] if "--no-clr" not in extra else [1.0])
    assert ("betas.normal" in record["architecture"]) == (algorithm == "b-pc-darts")
    genotype = load_genotype(out / "genotype.json")
    setting = genotype.evaluation("cifar10")
    assert (setting["network"], setting["C"], setting["layers"], setting["enhancement_layers"]) == ("bcnn", 48, 6, 2)
    recipe = paper_recipe(genotype, "bnasv2", "cifar10", "bcnn")  # what `nas-zoo train OUT/genotype.json` runs
    assert (recipe.init_channels, recipe.layers, recipe.en_layers) == (48, 6, 2)
    # normal builds the convolution cells, reduce the enhancement cells: the derived cells build as a BCNN
    net = build_network(genotype, network="bcnn", C=8, layers=6)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
