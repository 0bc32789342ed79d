"""BNAS-v2's broad search network against the authors' own (``tests/fixtures/bnas_search``: their networks'
weights, inputs and logits, made by ``make_fixtures.py`` from their checkout; none of their code here)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nas_zoo.search.broad import BroadSearchNetwork
from nas_zoo.search.pc_darts import PartialChannels

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
