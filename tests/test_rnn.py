"""Recurrent cells: genotypes, the DARTS language model against the authors' code, corpora, train/resume/evaluate."""
import json
import math
import random
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import nas_zoo
from nas_zoo.language import lm
from nas_zoo.harness.checkpoint import load_state
from nas_zoo.cli.app import app
from nas_zoo.weights.convert import convert_state_dict
from nas_zoo.language.corpus import CorpusError, batchify, get_batch, load_corpus
from nas_zoo.registry.genotype import GenotypeError, RecurrentGenotype, save_genotype
from nas_zoo.models.rnn import RNNModel
from nas_zoo.registry.zoo import LM_MODELS

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

HERE = Path(__file__).parent
RNN_GENOTYPES = ["DARTS_V1_RNN", "DARTS_V2_RNN", "GDAS_RNN", "EDNAS_PTB"]
TABLE = json.loads((HERE / "data" / "rnn_param_counts.json").read_text())
FIXTURES = HERE / "fixtures" / "authors_rnn"


def test_recurrent_genotypes_are_in_the_registry_with_provenance():
    for name in RNN_GENOTYPES:
        genotype = nas_zoo.get_genotype(name)
        assert isinstance(genotype, RecurrentGenotype) and len(genotype.recurrent) == 8
        assert genotype.concat == tuple(range(1, 9))
        assert genotype.provenance["commit"] and genotype.provenance["variable"] and genotype.paper["arxiv"]
        assert all(e["dataset"] in ("ptb", "wt2") for e in genotype.evaluations)
        assert all(e["reported"]["test_ppl"] for e in genotype.evaluations if "reported" in e)
    assert nas_zoo.get_genotype("EDNAS_PTB").provenance["variable"] == "EDNAS"


def test_recurrent_cells_match_the_published_ones():
    reference = json.loads((HERE / "data" / "reference.json").read_text())  # copied from ../shared/reference
    names = {"DARTS_V1": "DARTS_V1_RNN", "DARTS_V2": "DARTS_V2_RNN", "GDAS": "GDAS_RNN", "EDNAS_PTB": "EDNAS_PTB"}
    records = reference["records"]
    rnn = [e for e in reference["genotypes"] if e["kind"] == "rnn"]
    assert sorted(names[e["name"]] for e in rnn) == sorted(RNN_GENOTYPES)
    for entry in rnn:
        genotype = nas_zoo.get_genotype(names[entry["name"]])
        assert [list(e) for e in genotype.recurrent] == entry["recurrent"]
        assert list(genotype.concat) == entry["concat"]
        assert (genotype.provenance["commit"], genotype.provenance["path"]) == (entry["commit"], entry["path"])
        for evaluation in (e for e in genotype.evaluations if "reported" in e):
            assert any(r["source"] == evaluation["reported"]["source"] and r.get("test_ppl") == evaluation["reported"]["test_ppl"]
                       for r in records)


def test_recurrent_genotype_round_trip_and_immutability(tmp_path):
    genotype = nas_zoo.get_genotype("gdas_rnn")
    save_genotype(genotype, tmp_path / "cell.json")
    loaded = nas_zoo.load_genotype(tmp_path / "cell.json")
    assert loaded == genotype and loaded.evaluations == genotype.evaluations
    with pytest.raises(TypeError):
        genotype.evaluations[0]["epochs"] = 1
    assert genotype != nas_zoo.get_genotype("DARTS_V2_RNN")


GOOD = {"name": "MINE", "recurrent": [["tanh", 0], ["relu", 1], ["sigmoid", 1]], "concat": [1, 2, 3]}


@pytest.mark.parametrize("change, field, reason", [
    ({"recurrent": [["tanh", 0], ["softplus", 1]]}, "recurrent[1]", "unknown activation 'softplus'"),
    ({"recurrent": [["tanh", 0], ["relu", 2]]}, "recurrent[1]", "predecessor 2 does not exist yet for step 1"),
    ({"recurrent": [["tanh", "0"]]}, "recurrent[0]", "expected [activation, predecessor]"),
    ({"recurrent": []}, "recurrent", "non-empty list"),
    ({"concat": [1, 4]}, "concat", "state 4 does not exist"),
    ({"normal": [["sep_conv_3x3", 0], ["skip_connect", 1]]}, "normal", "unknown field for a recurrent cell"),
    ({"evaluations": [{"dataset": "cifar10"}]}, "evaluations[0].dataset", "not for this kind of cell; expected one of ptb"),
    ({"evaluations": [{"dataset": "ptb", "nhid": 0}]}, "evaluations[0].nhid", "positive integer"),
    ({"evaluations": [{"dataset": "ptb", "dropouth": 1.5}]}, "evaluations[0].dropouth", "probability"),
])
def test_malformed_recurrent_file_names_file_entry_field_and_reason(tmp_path, change, field, reason):
    path = tmp_path / "cell.json"
    path.write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(GenotypeError) as error:
        nas_zoo.load_genotype(path)
    assert str(error.value).startswith(f"{path}: genotype 'MINE', field '{field}': ")
    assert reason in str(error.value)


def test_a_cnn_record_is_not_evaluated_on_text(tmp_path):
    record = {**nas_zoo.get_genotype("DARTS_V2").to_dict(), "evaluations": [{"dataset": "ptb"}]}
    (tmp_path / "g.json").write_text(json.dumps(record))
    with pytest.raises(GenotypeError, match="'ptb' is not for this kind of cell; expected one of cifar10"):
        nas_zoo.load_genotype(tmp_path / "g.json")


@pytest.mark.parametrize("row", TABLE["rows"], ids=lambda r: f"{r['genotype']}-{r['code']}-{r['dataset']}")
def test_params_equal_the_authors_code(row):
    with torch.device("meta"):
        model = RNNModel(nas_zoo.get_genotype(row["genotype"]), row["ntoken"], row["nhid"])
    assert sum(p.numel() for p in model.parameters()) == row["params"]


def test_every_zoo_language_model_is_in_the_table_and_the_paper_sizes_hold():
    covered = {(r["genotype"], r["dataset"]) for r in TABLE["rows"]}
    for spec in LM_MODELS.values():
        assert (spec.genotype.name, spec.dataset) in covered
        with torch.device("meta"):
            params = sum(p.numel() for p in spec.build().parameters())
        assert params == {"ptb": 22_960_000, "wt2": 33_127_878}[spec.dataset]  # networks.md section 8
        if "reported" in spec.evaluations[0]:
            assert round(params / 1e6) == spec.evaluations[0]["reported"]["params_M"]


@pytest.mark.parametrize("dataset", ["ptb", "wt2"])
@pytest.mark.parametrize("name", RNN_GENOTYPES)
def test_every_recurrent_genotype_builds_for_both_corpora(name, dataset):
    """A zoo model where a paper trained the cell on the corpus, else the corpus's settings (as DARTS did for WT2)."""
    model_name, genotype, setting = lm.language_model(name, dataset)
    assert genotype is nas_zoo.get_genotype(name)
    assert (setting["ntoken"], setting["nhid"]) == {"ptb": (10000, 850), "wt2": (33278, 700)}[dataset]
    with torch.device("meta"):
        params = sum(p.numel() for p in lm.build_model(genotype, setting["ntoken"], lm.LMConfig.create(setting, {}))
                     .parameters())
    assert params == {"ptb": 22_960_000, "wt2": 33_127_878}[dataset]


def test_darts_v1_on_wt2_is_the_gdas_release_setting():
    """AutoDL-Projects scripts-rnn/train-WT2.sh DARTS_V1 with configs/NAS-WT2-BASE.config (@13e908f)."""
    spec = LM_MODELS["darts_v1_wt2"]
    assert spec.genotype is nas_zoo.get_genotype("DARTS_V1_RNN")
    assert {k: spec.setting[k] for k in ("ntoken", "nhid", "dropouth", "wdecay", "epochs")} == dict(
        ntoken=33278, nhid=700, dropouth=0.15, wdecay=5e-7, epochs=3000)
    assert lm.language_model("DARTS_V1_RNN", "wt2")[0] == "darts_v1_wt2"


@pytest.mark.parametrize("entry", json.loads((FIXTURES / "index.json").read_text())["entries"],
                         ids=lambda e: e["prefix"])
def test_log_probs_match_the_authors(entry):
    tensors = load_file(FIXTURES / "outputs.safetensors")
    prefix = entry["prefix"] + "."
    state = {k[len(prefix):]: v for k, v in tensors.items()
             if k.startswith(prefix) and k[len(prefix):].startswith(("encoder.", "decoder.", "rnns."))}
    model = RNNModel(nas_zoo.get_genotype(entry["genotype"]), entry["ntoken"], entry["nhid"]).eval()
    model.load_state_dict(convert_state_dict(state, "darts_rnn", model))
    with torch.no_grad():
        logits, outputs = model(tensors[prefix + "tokens"], tensors[prefix + "hidden"])
    torch.testing.assert_close(logits.log_softmax(-1), tensors[prefix + "log_prob"], atol=2e-6, rtol=0)
    torch.testing.assert_close(outputs[-1], tensors[prefix + "last_hidden"], atol=1e-6, rtol=0)


def test_training_mode_regularises_and_every_parameter_learns():
    model = RNNModel(nas_zoo.get_genotype("DARTS_V2_RNN"), 50, 16)
    tokens = torch.randint(0, 50, (6, 3))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(tokens)[0], model(tokens)[0])  # no dropout at evaluation
    model.train()
    logits, outputs = model(tokens)
    assert not torch.equal(logits, model(tokens)[0])  # fresh masks every call
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.encoder.weight.data_ptr() != model.decoder_bias.data_ptr() and outputs.shape == (6, 3, 16)


def test_create_model_builds_language_models_outside_timm(monkeypatch):
    model = nas_zoo.create_model("darts_v2_wt2", nhid=32, ntoken=100)
    assert (model.nhid, model.ntoken, model.cell.dropouth) == (32, 100, 0.15)
    cfg = model.pretrained_cfg
    assert cfg["hf_hub_id"] == "nas-zoo/darts_v2_wt2.wt2" and cfg["paper_ids"] == "arXiv:1806.09055"
    assert cfg["vocab_size"] == 33278 and cfg["nhid"] == 700
    assert "darts_v2_ptb" not in timm.list_models() and "darts_v2_ptb" not in nas_zoo.list_models()
    assert nas_zoo.list_models("*_ptb", task="rnn") == ["darts_v1_ptb", "darts_v2_ptb", "ednas_ptb", "gdas_ptb"]
    assert set(nas_zoo.list_models(task=None)) == set(nas_zoo.list_models()) | set(LM_MODELS)

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    with pytest.raises(RuntimeError, match="no pretrained weights for gdas_ptb: nas-zoo/gdas_ptb.ptb could not be fetched"):
        nas_zoo.create_model("gdas_ptb", pretrained=True, nhid=8)


# --- corpora -------------------------------------------------------------------------------------------------

def _write_corpus(directory: Path, names=("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"), seed: int = 0):
    """A small corpus with PTB's shape: 60 words, some structure to learn (a word predicts the next)."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(59)] + ["<unk>"]
    directory.mkdir(parents=True, exist_ok=True)
    for name, lines in zip(names, (300, 30, 30)):
        text = []
        for _ in range(lines):
            word = rng.randrange(59)
            sentence = []
            for _ in range(rng.randint(4, 12)):
                sentence.append(vocab[word])
                word = (word * 7 + rng.choice((1, 2))) % 60
            text.append(" " + " ".join(sentence) + " ")
        (directory / name).write_text("\n".join(text) + "\n")
    return directory


def test_corpus_reads_the_standard_layout_like_the_original(tmp_path):
    directory = _write_corpus(tmp_path / "ptb")
    corpus = load_corpus("ptb", directory)
    first_line = (directory / "ptb.train.txt").read_text().splitlines()[0].split() + ["<eos>"]
    assert corpus.words[:len(set(first_line))] == list(dict.fromkeys(first_line))  # ids in order of appearance
    assert corpus.train[:len(first_line)].tolist() == [corpus.words.index(w) for w in first_line]
    assert corpus.train.numel() == sum(len(line.split()) + 1 for line in (directory / "ptb.train.txt").open())
    data = batchify(torch.arange(23), 4)  # 5 rows of 4 streams, the tail of 3 dropped
    assert data.shape == (5, 4) and data[:, 1].tolist() == [5, 6, 7, 8, 9]
    inputs, targets = get_batch(data, 3, 35)
    assert inputs.tolist() == [data[3].tolist()] and targets.tolist() == [data[4].tolist()]
    wiki = _write_corpus(tmp_path / "wt2", ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"))
    assert load_corpus("wt2", wiki).words == corpus.words


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "ptb.valid.txt").unlink(), "ptb.valid.txt missing (the ptb corpus needs ptb.train.txt, ptb.valid.txt, ptb.test.txt)"),
    (lambda d: [p.unlink() for p in d.iterdir()], "no ptb corpus here; looked for ptb.train.txt, ptb.valid.txt, ptb.test.txt or train.txt"),
    (lambda d: (d / "ptb.test.txt").write_text("\n\n"), "ptb.test.txt: holds no words"),
    (lambda d: (d / "ptb.train.txt").write_bytes(b"\x80\x81 abc\n"), "ptb.train.txt: not UTF-8 text"),
    (lambda d: (d / "ptb.test.txt").write_text("w1 zebra\n"), "ptb.test.txt: word 'zebra' is not in the training vocabulary"),
])
def test_missing_or_malformed_corpus_names_what_was_expected(tmp_path, damage, message):
    directory = _write_corpus(tmp_path / "ptb")
    damage(directory)
    with pytest.raises(CorpusError) as error:
        load_corpus("ptb", directory)
    assert message in str(error.value)
    with pytest.raises(CorpusError, match="no such directory"):
        load_corpus("ptb", tmp_path / "absent")
    with pytest.raises(CorpusError, match="too few for a batch size of 10"):
        batchify(torch.arange(15), 10)


# --- training, resuming, evaluating -------------------------------------------------------------------------

SMALL = dict(nhid=16, batch_size=4, eval_batch_size=4, test_batch_size=2, bptt=8, max_seq_len_delta=4, max_batches=6)


def _train(corpus, out, epochs, resume=False, **overrides):
    name, genotype, setting = lm.language_model("DARTS_V2_RNN", "ptb")
    return lm.train_lm(name, genotype, corpus, out, setting, {**SMALL, "epochs": epochs, **overrides}, resume,
                    log=lambda line: None, progress=False)


@pytest.mark.parametrize("force_asgd", [False, True], ids=["sgd", "asgd"])
def test_resume_continues_the_exact_same_run(tmp_path, monkeypatch, force_asgd):
    if force_asgd:  # switch after the first epoch, so the resumed epochs run (and restore) ASGD
        monkeypatch.setattr(lm, "switch_to_asgd", lambda history, loss, nonmono: True)
    corpus = load_corpus("ptb", _write_corpus(tmp_path / "ptb"))
    straight = _train(corpus, tmp_path / "straight", 3)
    _train(corpus, tmp_path / "split", 2)
    resumed = _train(corpus, tmp_path / "split", 3, resume=True)
    speeds = ("valid_tokens_per_s", "test_tokens_per_s")
    assert {k: v for k, v in resumed.items() if k not in speeds} == {k: v for k, v in straight.items() if k not in speeds}
    a, b = (load_file(tmp_path / run / "checkpoint" / "model.safetensors") for run in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = load_state(tmp_path / "split" / "checkpoint")
    assert state["epoch"] == 3 and state["optimizer"] == ("asgd" if force_asgd else "sgd")
    if force_asgd:
        assert all("ax" in s for s in state["optimizer_state"]["state"].values())


def test_asgd_trigger_is_non_monotonic():
    assert not lm.switch_to_asgd([5.0, 4.0, 3.0], 3.5, nonmono=5)  # too few epochs
    assert not lm.switch_to_asgd([5, 4, 3, 2.9, 2.8, 2.7, 2.6], 2.95, nonmono=5)  # better than epochs 1-2
    assert lm.switch_to_asgd([5, 4, 3, 2.9, 2.8, 2.7, 2.6], 4.5, nonmono=5)  # worse than all but the last 5


def test_training_learns_the_toy_corpus(tmp_path):
    corpus = load_corpus("ptb", _write_corpus(tmp_path / "ptb"))
    result = _train(corpus, tmp_path / "run", 4, max_batches=0, dropout=0.1, dropoutx=0.1, dropouth=0.1,
                    dropouti=0.1, dropoute=0.0)
    assert result["test_ppl"] < 0.5 * len(corpus.words)  # a uniform guess scores 60
    assert result["params"] == 61 * 16 + 61 + 32 * 32 + 8 * 16 * 32


@pytest.mark.parametrize("overrides, message", [
    ({"bogus": 1}, "unknown training setting 'bogus'"),
    ({"epochs": 1.5}, "'epochs' must be an integer"),
    ({"lr": "fast"}, "'lr' must be a number"),
    ({"dropout": 1.0}, "'dropout' must be a probability"),
    ({"batch_size": 0}, "'batch_size' must be positive"),
    ({"emsize": 32}, "emsize 32 != nhid 16"),
])
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(lm.LMError, match=message):
        lm.LMConfig.create({"nhid": 16}, overrides)


@pytest.mark.parametrize("name, dataset, message", [
    ("darts_v1_ptb.ptb", "wt2", "darts_v1_ptb.ptb is tagged for ptb, not wt2"),
    ("gdas_v1", "ptb", "GDAS_V1 is a CNN genotype"),
    ("darts_v3_ptb", "ptb", "unknown model or genotype 'darts_v3_ptb'; closest: darts_v2_ptb"),
    ("darts_v2_ptb", "text8", "unknown dataset 'text8'"),
])
def test_resolve_refuses_what_is_not_a_language_model(name, dataset, message):
    with pytest.raises(nas_zoo.ResolveError, match=message):
        lm.language_model(name, dataset)


def test_resolve_finds_models_cells_and_files(tmp_path):
    assert lm.language_model("DARTS_V2_RNN", "wt2")[0] == "darts_v2_wt2"
    name, genotype, setting = lm.language_model("EDNAS_PTB", "wt2")  # no paper model: the corpus's settings
    assert (name, setting["nhid"], setting["dropouth"], setting["wdecay"]) == ("ednas_ptb_wt2", 700, 0.15, 5e-7)
    assert lm.language_model("ednas_ptb", "ptb")[2]["epochs"] == 1600
    path = tmp_path / "cell.json"
    path.write_text(json.dumps(GOOD))
    assert lm.language_model(str(path), "ptb")[:2] == ("mine_ptb", nas_zoo.load_genotype(path))


runner = CliRunner()


def test_cli_train_resume_evaluate_end_to_end(tmp_path):
    data = _write_corpus(tmp_path / "ptb")
    out = tmp_path / "run"
    settings = [arg for key, value in {**SMALL, "epochs": 1}.items() for arg in ("--set", f"{key}={value}")]
    first = runner.invoke(app, ["train", "gdas_ptb", "--dataset", "ptb", "--data-dir", str(data), "--out", str(out), *settings])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["train", "gdas_ptb", "--dataset", "ptb", "--data-dir", str(data), "--out", str(out), *settings])
    assert again.exit_code == 2 and "already holds a run (checkpoint, metrics.jsonl); pass --resume" in again.output.replace("\n", " ")
    more = runner.invoke(app, ["train", "gdas_ptb", "--dataset", "ptb", "--data-dir", str(data), "--out", str(out), "--resume",
                               "--set", "epochs=2"])
    assert more.exit_code == 0, more.output
    assert load_state(out / "checkpoint")["epoch"] == 2
    assert [m["epoch"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    result = runner.invoke(app, ["evaluate", "gdas_ptb", "--dataset", "ptb", "--data-dir", str(data), "--checkpoint", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["params"] == 61 * 16 + 61 + 32 * 32 + 8 * 16 * 32 and "test_tokens_per_s" in figures
    assert math.isclose(figures["valid_ppl"], math.exp(figures["valid_loss"]))
    assert figures["valid_ppl"] < 60  # better than a uniform guess after two short epochs


@pytest.mark.parametrize("args, message", [
    (["train", "gdas_ptb", "--dataset", "ptb", "--out", "{tmp}/x", "--set", "epochs"], "--set 'epochs': expected FIELD=VALUE"),
    (["train", "gdas_ptb", "--dataset", "ptb", "--out", "{tmp}/x", "--set", "lr=-"], "setting 'lr' must be a number, got '-'"),
    (["evaluate", "darts_v2_ptb", "--dataset", "ptb", "--checkpoint", "{tmp}/none"], "no checkpoint here"),
    (["evaluate", "gdas_v1", "--dataset", "ptb"], "GDAS_V1 is a CNN genotype"),
    (["evaluate", "darts_v2_ptb.ptb", "--dataset", "wt2"], "darts_v2_ptb.ptb is tagged for ptb, not wt2"),
])
def test_cli_bad_input_is_one_line_and_non_zero(tmp_path, args, message):
    data = _write_corpus(tmp_path / "ptb")
    args = [a.format(tmp=tmp_path) for a in args] + ["--data-dir", str(data)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output.replace("\n", " ")


def test_cli_list_and_info_show_recurrent_cells():
    rows = json.loads(runner.invoke(app, ["list", "--task", "rnn", "--json"]).output)
    assert [r["model"] for r in rows] == ["darts_v1_ptb.ptb", "darts_v1_wt2.wt2", "darts_v2_ptb.ptb", "darts_v2_wt2.wt2",
                                          "ednas_ptb.ptb", "gdas_ptb.ptb", "gdas_wt2.wt2"]
    gdas = rows[-1]
    assert (gdas["params"], gdas["reported_params_M"], gdas["reported_test_ppl"]) == (33_127_878, 33, 69.4)
    info = json.loads(runner.invoke(app, ["info", "darts_v2_ptb", "--json"]).output)
    assert [n["model"] for n in info["networks"]] == ["darts_v2_ptb.ptb"]
    assert info["genotype"]["provenance"]["variable"] == "DARTS_V2" and info["networks"][0]["reported"]["val_ppl"] == 58.1
    text = runner.invoke(app, ["info", "EDNAS_PTB"]).output
    assert "s8=tanh(s7)" in text and "ednas_ptb.ptb" in text and "59.45" in text


@pytest.mark.slow
def test_real_ptb_beats_the_unigram_baseline(tmp_path):
    """Full PTB, a small DARTS_V2 model, a short CPU budget: test perplexity clearly below a unigram model's."""
    data = SHARED / "data" / "ptb"
    if not data.is_dir():
        pytest.skip(f"{data} is absent (a fresh clone without ../shared)")
    corpus = load_corpus("ptb", data)
    assert (len(corpus.words), corpus.train.numel(), corpus.test.numel()) == (10000, 929589, 82430)
    counts = torch.bincount(corpus.train, minlength=len(corpus.words)).double()
    unigram = math.exp(-(counts / counts.sum()).log()[corpus.test].mean().item())
    result = _train(corpus, tmp_path / "run", 1, **REAL_DATA_RUN)
    assert result["test_ppl"] < 0.7 * unigram, (result["test_ppl"], unigram)  # README: 398.6 against 639.3


# The README's real-data check (section "Recurrent cells"): the same run from the CLI.
REAL_DATA_RUN = dict(nhid=128, batch_size=32, bptt=35, max_seq_len_delta=20, max_batches=300, dropout=0.1,
                     dropouth=0.05, dropoutx=0.1, dropouti=0.05, dropoute=0.0, eval_batch_size=64, test_batch_size=64)
