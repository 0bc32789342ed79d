import json
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

import nas_zoo
from nas_zoo.registry.genotype import GenotypeError, UnknownNameError, load_genotypes, save_genotype

CNN_GENOTYPES = ["DARTS_V1", "DARTS_V2", "GDAS_V1", "GDAS_F1", "GDAS_GF", "GDAS_FG", "PDARTS", "PC_DARTS_cifar",
                 "PC_DARTS_image", "EDNAS_CIFAR10", "EDNAS_ImageNet", "BNASv2_CLR_v1", "BNASv2_CLR_v2",
                 "BNASv2_PC_cifar_v1", "BNASv2_PC_cifar_v2", "BNASv2_PC_image"]
RNN_GENOTYPES = ["DARTS_V1_RNN", "DARTS_V2_RNN", "GDAS_RNN", "EDNAS_PTB"]  # tests/test_rnn.py
# The published cells and reported figures, copied from ../shared/reference (provenance inside).
REFERENCE = json.loads((Path(__file__).parent / "data" / "reference.json").read_text())


def test_registry_holds_every_published_cnn_genotype():
    assert sorted(nas_zoo.list_genotypes()) == sorted(CNN_GENOTYPES + RNN_GENOTYPES)
    for name in CNN_GENOTYPES:
        genotype = nas_zoo.get_genotype(name)
        assert genotype.provenance["commit"] and genotype.paper["arxiv"] and genotype.evaluations
        assert all(len(e["reported"]) for e in genotype.evaluations)


def test_the_copied_reference_equals_the_shared_one(shared_reference):
    assert REFERENCE["genotypes"] == json.loads((shared_reference / "genotypes.json").read_text())["genotypes"]
    assert REFERENCE["records"] == json.loads((shared_reference / "reported.json").read_text())["records"]


def test_cells_match_the_published_ones():
    cnn = [e for e in REFERENCE["genotypes"] if e["kind"] == "cnn"]
    assert sorted({e["name"] for e in cnn}) == sorted(CNN_GENOTYPES)
    for entry in cnn:
        genotype = nas_zoo.get_genotype(entry["name"])
        assert [list(e) for e in genotype.normal] == entry["normal"]
        assert (None if genotype.reduce is None else [list(e) for e in genotype.reduce]) == entry["reduce"]
        assert list(genotype.normal_concat) == entry["normal_concat"]
        assert genotype.provenance["commit"] == entry["commit"]
        assert genotype.provenance["path"] == entry["path"]


def test_reported_figures_match_the_published_ones():
    for name in CNN_GENOTYPES:
        for evaluation in nas_zoo.get_genotype(name).evaluations:
            reported = evaluation["reported"]
            assert any(r["source"] == reported["source"] and all(r[k] == reported[k] for k in ("test_error", "params_M")
                                                                 if k in r and k in reported)
                       for r in REFERENCE["records"]), (name, evaluation["dataset"])


def test_fixed_reduction_genotypes():
    assert {n for n in CNN_GENOTYPES if nas_zoo.get_genotype(n).fixed_reduction} == {"GDAS_F1", "GDAS_GF"}
    # GDAS_FG is the FRC-searched normal cell with GDAS_V1's searched reduction cell (paper Table 5).
    fg, f1, v1 = (nas_zoo.get_genotype(n) for n in ("GDAS_FG", "GDAS_F1", "GDAS_V1"))
    assert fg.normal == f1.normal and fg.reduce == v1.reduce


def test_genotypes_are_immutable_values():
    genotype = nas_zoo.get_genotype("DARTS_V2")
    with pytest.raises(FrozenInstanceError):
        genotype.normal = ()
    with pytest.raises(TypeError):
        genotype.provenance["commit"] = "x"
    with pytest.raises(TypeError):
        genotype.evaluations[0]["C"] = 1
    assert hash(genotype) == hash(nas_zoo.get_genotype("darts_v2"))  # lookup is case-insensitive


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="closest: GDAS_V1"):
        nas_zoo.get_genotype("GDAS_V2")
    with pytest.raises(UnknownNameError, match="closest: gdas_v1"):
        nas_zoo.get_model_spec("gdas_v2")


def test_save_and_load_round_trip(tmp_path):
    genotype = nas_zoo.get_genotype("GDAS_F1")
    path = tmp_path / "mine.json"
    save_genotype(genotype, path)
    loaded = nas_zoo.load_genotype(path)
    assert loaded == genotype and loaded.reduce is None
    assert loaded.evaluations == genotype.evaluations and loaded.provenance == genotype.provenance
    assert [p.name for p in tmp_path.iterdir()] == ["mine.json"]  # no temp file left behind


def _write(tmp_path, record):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(record))
    return path


GOOD = {"name": "MINE", "normal": [["sep_conv_3x3", 0], ["skip_connect", 1]], "normal_concat": [2],
        "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]], "reduce_concat": [2]}


@pytest.mark.parametrize("change, field, reason", [
    ({"normal": [["sep_conv_4x4", 0], ["skip_connect", 1]]}, "normal[0]", "unknown operation 'sep_conv_4x4'"),
    ({"normal": [["sep_conv_3x3", 0], ["skip_connect", 2]]}, "normal[1]", "input 2 does not exist yet for node 0"),
    ({"normal": [["sep_conv_3x3", 0]]}, "normal", "two [operation, input] pairs per node"),
    ({"normal": [["sep_conv_3x3", "0"], ["skip_connect", 1]]}, "normal[0]", "expected [operation, input]"),
    ({"normal": [["none", 0], ["skip_connect", 1]]}, "normal[0]", "unknown operation 'none'"),
    ({"reduce_concat": [2, 7]}, "reduce_concat", "state 7 does not exist"),
    ({"reduce": "max_pool"}, "reduce", "expected a non-empty list"),
    ({"evaluations": [{"dataset": "mnist", "network": "cifar", "C": 16, "layers": 8}]}, "evaluations[0].dataset",
     "expected one of cifar10"),
    ({"evaluations": [{"dataset": "cifar10", "network": "cifar", "C": 15, "layers": 8}]}, "evaluations[0].C",
     "positive even integer"),
    ({"evaluations": [{"dataset": "cifar10"}]}, "evaluations[0].network", "missing"),
    ({"colour": "red"}, "colour", "unknown field"),
    ({"network_options": {"pool_bn": "yes"}}, "network_options.pool_bn", "booleans"),
])
def test_malformed_file_names_file_entry_field_and_reason(tmp_path, change, field, reason):
    path = _write(tmp_path, {**GOOD, **change})
    with pytest.raises(GenotypeError) as error:
        nas_zoo.load_genotype(path)
    message = str(error.value)
    assert message.startswith(f"{path}: genotype 'MINE', field '{field}': ")
    assert reason in message


def test_file_level_errors(tmp_path):
    with pytest.raises(GenotypeError, match="no such genotype file"):
        nas_zoo.load_genotype(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "X", ')
    with pytest.raises(GenotypeError, match=r"bad.json: not valid JSON \(line 1"):
        nas_zoo.load_genotype(bad)
    with pytest.raises(GenotypeError, match="field 'name'"):
        nas_zoo.load_genotype(_write(tmp_path, {k: v for k, v in GOOD.items() if k != "name"}))


def test_paper_files_in_the_package_are_valid_and_pick_by_name(tmp_path):
    paper = {"paper": {"title": "t"}, "evaluation_defaults": {"cifar10": {"network": "cifar", "C": 16, "layers": 8}},
             "genotypes": {"A": {**GOOD, "evaluations": [{"dataset": "cifar10"}]}, "B": GOOD}}
    path = _write(tmp_path, paper)
    assert set(load_genotypes(path)) == {"A", "B"}
    assert nas_zoo.load_genotype(path, "A").evaluation("cifar10")["C"] == 16
    with pytest.raises(GenotypeError, match="holds 2 genotypes"):
        nas_zoo.load_genotype(path)


def test_user_genotype_builds_like_a_zoo_one(tmp_path):
    path = _write(tmp_path, {**nas_zoo.get_genotype("DARTS_V2").to_dict(), "name": "COPY"})
    model = nas_zoo.build_network(nas_zoo.load_genotype(path), "cifar")
    reference = nas_zoo.build_network("DARTS_V2", "cifar")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters()) == 3349342


def test_nas_genotype_builds_the_librarys_own_genotype(tmp_path):
    import timm
    import torch

    path = tmp_path / "mine.json"
    save_genotype(nas_zoo.Genotype("MINE", nas_zoo.get_genotype("DARTS_V2").normal, (2, 3, 4, 5), None, (2, 3, 4, 5)),
                  path)
    genotype = nas_zoo.load_genotype(path)
    models = []
    for given in (genotype, genotype.to_dict()):  # the object load_genotype returns, and its record
        torch.manual_seed(0)
        models.append(timm.create_model("nas_genotype", genotype=given, C=8, layers=5, num_classes=10).eval())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(models[0](x), models[1](x), rtol=0, atol=0)
    assert sum(p.numel() for p in models[0].parameters()) == sum(p.numel() for p in models[1].parameters())
