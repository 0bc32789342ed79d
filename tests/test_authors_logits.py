"""Our networks compute the authors' logits from the authors' weights (fixtures made with their code)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import nas_zoo
from nas_zoo.weights.convert import convert_state_dict

FIXTURES = Path(__file__).parent / "fixtures" / "authors"
INDEX = json.loads((FIXTURES / "index.json").read_text())["entries"]
FAMILY = {"bnasv2-clr": "bnas", "bnasv2-pc": "bnas"}
# Conventions of the repository that built the fixture (GDAS: BN after pools; P-DARTS: BN in the aux head).
CODE_OPTIONS = {"gdas": dict(pool_bn=True), "pdarts": dict(auxiliary_last_bn=True)}


@pytest.fixture(scope="module")
def outputs():
    return load_file(FIXTURES / "outputs.safetensors")


@pytest.mark.parametrize("entry", INDEX, ids=lambda e: f"{e['genotype']}-{e['code']}-{e['network']}")
def test_logits_match_the_authors(entry, outputs):
    extra = {"enhancement_layers": entry["enhancement_layers"]} if entry["enhancement_layers"] else {}
    model = nas_zoo.build_network(entry["genotype"], entry["network"], C=entry["C"], layers=entry["layers"],
                                  num_classes=entry["num_classes"], auxiliary=entry["auxiliary"],
                                  **CODE_OPTIONS.get(entry["code"], {}), **extra)
    authors = load_file(FIXTURES / entry["state_dict"])
    model.load_state_dict(convert_state_dict(authors, FAMILY.get(entry["code"], entry["code"]), model), strict=False)
    model.eval()
    stem = entry["state_dict"].removesuffix(".safetensors")
    with torch.no_grad():
        logits, auxiliary = model.forward_train(outputs[entry["input"]])
    torch.testing.assert_close(logits, outputs[f"{stem}.logits"], atol=2e-7, rtol=0)
    if entry["auxiliary"]:
        torch.testing.assert_close(auxiliary, outputs[f"{stem}.logits_aux"], atol=2e-7, rtol=0)


def test_a_checkpoint_of_another_architecture_is_refused_with_its_keys():
    entry = next(e for e in INDEX if e["genotype"] == "GDAS_F1" and e["network"] == "cifar")
    model = nas_zoo.build_network("DARTS_V2", "cifar", C=entry["C"], layers=entry["layers"])
    with pytest.raises(KeyError, match=r"missing keys \['cells\.0\.ops\.0\.op\.1\.weight'.*unexpected keys \['cells\.0\.ops\.5\."):
        convert_state_dict(load_file(FIXTURES / entry["state_dict"]), "gdas", model)
