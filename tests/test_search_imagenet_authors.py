"""The ImageNet search supernets against the authors' own: PC-DARTS ``model_search_imagenet.Network`` and BNAS-v2
``BNASv2PC/model_search_imagenet_b.Network`` (``tests/fixtures/imagenet_search``: their networks' weights, inputs
and logits, made by ``make_fixtures.py`` from their checkouts; none of their code here)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nas_zoo.search.broad import BroadSearchNetwork
from nas_zoo.search.pc_darts import PartialChannels
from nas_zoo.search.supernet import SearchNetwork

FIXTURES = Path(__file__).parent / "fixtures" / "imagenet_search"
ENTRIES = json.loads((FIXTURES / "index.json").read_text())["entries"]
#: their module names -> ours (the stem's two halves live in our ImageNetStem)
RENAMES = {"stem0.": "stem.stem0.", "stem1.": "stem.stem1.",
           "conv_cells.": "cells.", "en_cells.": "enhancement_cells.", "restricted_convs_gap.": "input_taps.",
           "reduction_convs_gap.": "input_reductions.", "restricted_convs_en.": "output_taps.",
           "reduction_convs_en.": "output_reductions.", "restricted_ens_gap.": "enhancement_taps."}


def _ours(key: str) -> str:
    for theirs, ours in RENAMES.items():
        if key.startswith(theirs):
            key = ours + key[len(theirs):]
    # cell._ops[edge] is a MixedOp; MixedOp._ops[op] the candidate, in our PartialEdge's MixedEdge
    return key.replace("._ops.", ".edges.", 1).replace("._ops.", ".mixed.ops.", 1)


def _model(entry):
    args = entry["constructor"]
    mixing = PartialChannels(entry["partial_channels_k"])
    if entry["code"] == "PCDARTS":
        return SearchNetwork(args["C"], args["num_classes"], args["layers"], mixing=mixing, stem="imagenet")
    return BroadSearchNetwork(args["C"], args["num_classes"], args["layers"], args["en_layers"], mixing=mixing,
                              stem="imagenet")


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"].split(".")[0] for e in ENTRIES])
def test_imagenet_supernet_reproduces_the_authors_network(entry):
    tensors, model = load_file(FIXTURES / entry["file"]), _model(entry)
    assert entry["partial_channels_k"] == 2
    assert sum(p.numel() for p in model.weights()) == entry["weight_param_count"]
    state = {_ours(k[len("state."):]): v.float() if v.is_floating_point() else v
             for k, v in tensors.items() if k.startswith("state.")}
    for kind in ("alphas", "betas"):
        for cell_type in ("normal", "reduce"):
            state[f"arch.{kind}.{cell_type}"] = tensors[f"{kind}_{cell_type}"]
    model.load_state_dict(state)  # strict: every tensor of theirs has its place in ours and back
    x = tensors["input"]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), tensors["logits_eval"], rtol=1e-5, atol=1e-6)  # small logits
        torch.testing.assert_close(model.train()(x), tensors["logits_train"], rtol=1e-4, atol=1e-5)
