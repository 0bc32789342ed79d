"""Pretrained weights: the folder format, push -> pull -> evaluate through a loopback Hub, the registry's
sha256 check, the cache, offline mode, and the refusals."""
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import nas_zoo
from nas_zoo.registry import zoo
from nas_zoo.cli.app import app
from nas_zoo.registry.genotype import GenotypeError, parse_genotypes
from nas_zoo.weights.download import WeightsError, download_weights
from nas_zoo.weights.hub import WeightsTarget, save_pretrained
from nas_zoo.registry.zoo import GENOTYPE_MODEL, MODELS, ModelSpec, Weights

SMALL = dict(C=4, layers=5)
runner = CliRunner()


def logits(model, seed=0, size=32):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def trained(name="darts_v2.cifar10", **kwargs):
    """A small zoo model with random weights and BN statistics, as a trained checkpoint would have."""
    torch.manual_seed(0)
    model = timm.create_model(name, **SMALL, **kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model


def push(hub, tmp_path, repo_id="me/darts-small", *extra):
    model = trained(auxiliary=True)
    checkpoint = tmp_path / "run.safetensors"
    save_file(model.state_dict(), str(checkpoint))
    result = runner.invoke(app, ["push", "darts_v2.cifar10", "--checkpoint", str(checkpoint), "--repo-id", repo_id,
                                 "--C", "4", "--layers", "5", *extra])
    assert result.exit_code == 0, result.output
    return model, result.output


def test_the_registry_knows_every_tag_and_nothing_is_published_yet():
    tags = {f"{name}.{tag}" for name, spec in MODELS.items() for tag in spec.tags}
    assert set(zoo.WEIGHTS) == tags and not any(w.published for w in zoo.WEIGHTS.values())
    cfg = timm.models.get_pretrained_cfg("gdas_v1.cifar100")
    assert cfg.hf_hub_id == zoo.WEIGHTS["gdas_v1.cifar100"].hf_hub_id == "nas-zoo/gdas_v1.cifar100"


@pytest.mark.parametrize("weights, reason", [
    ({"hf_hub_id": "me/x", "published": True}, "published weights need their sha256"),
    ({"hf_hub_id": "me/x", "sha256": "abc"}, "64 hex digits"),
    ({"url": "https://example.com/x.pt"}, "hf_hub_id"),
])
def test_a_bad_weights_field_is_refused(weights, reason):
    record = {"name": "MINE", **{k: v for k, v in nas_zoo.get_genotype("DARTS_V2").to_dict().items()
                                 if k in ("normal", "normal_concat", "reduce", "reduce_concat")},
              "evaluations": [{"dataset": "cifar10", "network": "cifar", "C": 36, "layers": 20, "weights": weights}]}
    with pytest.raises(GenotypeError, match=r"evaluations\[0\]\.weights.*" + reason):
        parse_genotypes(record, "mine.json")


def test_pretrained_on_an_unpublished_tag_fails_clearly_without_the_network(monkeypatch):
    def no_network(*args):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(WeightsError) as error:
        timm.create_model("gdas_v1.cifar100", pretrained=True)
    message = str(error.value)
    assert "no published weights for gdas_v1.cifar100; nas-zoo has published none yet" in message
    assert "nas-zoo convert --from gdas CHECKPOINT --model gdas_v1.cifar100 --out DIR" in message
    assert "local-dir:DIR" in message and "pretrained_cfg_overlay=dict(file=" in message
    result = runner.invoke(app, ["evaluate", "gdas_v1", "--dataset", "cifar10", "--pretrained", "--no-accuracy"])
    assert result.exit_code == 2 and "no published weights for gdas_v1.cifar10;" in result.output
    monkeypatch.setitem(zoo.WEIGHTS, "pdarts.cifar10", Weights("nas-zoo/pdarts.cifar10", "0" * 64, True))
    with pytest.raises(WeightsError, match="tags with weights: pdarts.cifar10"):
        timm.create_model("gdas_v1", pretrained=True)


def test_weights_load_from_a_local_folder_and_file(tmp_path):
    model = trained()
    folder = save_pretrained(tmp_path / "w", WeightsTarget.of(MODELS["darts_v2"], "cifar10", **SMALL), model.state_dict(),
                             "local-dir:w")
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert (config["architecture"], config["num_classes"], config["model_args"]) == ("darts_v2", 10, SMALL)
    assert config["genotype"]["name"] == "DARTS_V2" and config["pretrained_cfg"]["mean"][0] == pytest.approx(0.4914, abs=1e-4)
    expected = logits(model)
    torch.testing.assert_close(logits(timm.create_model(f"local-dir:{folder}", pretrained=True)), expected,
                               atol=0, rtol=0)
    from_file = timm.create_model("darts_v2.cifar10", pretrained=True, **SMALL,
                                  pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")))
    torch.testing.assert_close(logits(from_file), expected, atol=0, rtol=0)


def test_push_pull_evaluate_round_trip(loopback_hub, tmp_path):
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"model": "darts_v2", "dataset": "cifar10", "top1_error": 2.91, "params": 3349902,
                                      "device": "CPU", "reported": {"test_error": 2.76, "params_M": 3.3}}))
    model, output = push(loopback_hub, tmp_path, "me/darts-small", "--eval", str(evaluation))
    files = loopback_hub.repos["me/darts-small"]
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    card = files["README.md"].decode()
    assert "| top-1 error % | 2.91 | 2.76 |" in card and "arXiv:1806.09055" in card and "hf-hub:me/darts-small" in card
    digest = hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert f'"sha256": "{digest}"' in output.replace("\n", "")

    # pull by repository: weights match the pushed ones, without the auxiliary head
    pulled = timm.create_model("hf-hub:me/darts-small", pretrained=True)
    assert not any(k.startswith("auxiliary_head.") for k in pulled.state_dict())
    torch.testing.assert_close(logits(pulled), logits(model), atol=0, rtol=0)
    # pull by tag, once the registry publishes it, checked against its sha256
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(zoo.WEIGHTS, "darts_v2.cifar10", Weights("me/darts-small", digest, True))
        by_tag = timm.create_model("darts_v2.cifar10", pretrained=True, **SMALL)
    torch.testing.assert_close(logits(by_tag), logits(model), atol=0, rtol=0)


def test_train_push_pull_evaluate_through_the_loopback_hub(loopback_hub, tmp_path, tiny_cifar):
    """A run of `nas-zoo train`, evaluated, pushed with its evaluation, pulled by repository and evaluated
    again with the pulled data config: the same figures."""
    from nas_zoo.harness.data import DataSpec, build_dataset, epoch_loader
    from nas_zoo.harness.train import evaluate_loader
    from tests.test_harness import tiny

    data = tiny_cifar
    assert runner.invoke(app, ["train", "darts_v2", "--dataset", "cifar10", "--data-dir", str(data), "--out",
                               str(tmp_path / "run"), *tiny(1)]).exit_code == 0
    evaluation = tmp_path / "eval.json"
    result = runner.invoke(app, ["evaluate", "darts_v2", "--dataset", "cifar10", "--data-dir", str(data),
                                 "--checkpoint", str(tmp_path / "run" / "checkpoint"), "--no-speed",
                                 "--json", str(evaluation)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["push", "darts_v2.cifar10", "--checkpoint", str(tmp_path / "run" / "checkpoint"),
                                 "--repo-id", "me/run", "--C", "4", "--layers", "3", "--eval", str(evaluation)])
    assert result.exit_code == 0, result.output
    measured = json.loads(evaluation.read_text())
    # a C=4, 3-cell network: the card sets no paper figure (2.76%, for C=36, 20 cells) beside its own
    assert f"| top-1 error % | {measured['top1_error']:.2f} | - |" in loopback_hub.repos["me/run"]["README.md"].decode()

    pulled = timm.create_model("hf-hub:me/run", pretrained=True)
    test_set = build_dataset(DataSpec("cifar10", data), pulled.pretrained_cfg, train=False)
    again = evaluate_loader(pulled, epoch_loader(test_set, 16, 0, 0, shuffle=False), torch.device("cpu"))
    assert again["top1_error"] == measured["top1_error"] and again["loss"] == pytest.approx(measured["loss"], abs=1e-6)


def test_a_pushed_user_genotype_loads_by_repository(loopback_hub, tmp_path):
    record = {**nas_zoo.get_genotype("PC_DARTS_cifar").to_dict(), "name": "MINE"}
    del record["evaluations"], record["paper"]
    (tmp_path / "mine.json").write_text(json.dumps(record))
    (genotype,) = parse_genotypes(record, "mine.json").values()
    torch.manual_seed(0)
    model = WeightsTarget.of(ModelSpec(GENOTYPE_MODEL, genotype, "cifar", 8, 4, ()), "cifar100").create(num_classes=100)
    save_file(model.state_dict(), str(tmp_path / "mine.safetensors"))
    result = runner.invoke(app, ["push", str(tmp_path / "mine.json"), "--checkpoint", str(tmp_path / "mine.safetensors"),
                                 "--repo-id", "me/mine", "--C", "8", "--layers", "4"])
    assert result.exit_code == 0, result.output
    config = json.loads(loopback_hub.repos["me/mine"]["config.json"])
    assert config["architecture"] == "nas_genotype" and config["model_args"]["genotype"]["name"] == "MINE"
    pulled = timm.create_model("hf-hub:me/mine", pretrained=True)
    assert pulled.num_classes == 100 and pulled.pretrained_cfg["mean"][0] == pytest.approx(0.5071)
    torch.testing.assert_close(logits(pulled), logits(model), atol=0, rtol=0)


def cached_files(cache: Path):
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file() or p.is_symlink())


def test_downloads_are_cached_and_load_offline(loopback_hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    model, _ = push(loopback_hub, tmp_path)
    first = timm.create_model("hf-hub:me/darts-small", pretrained=True)
    requests = len(loopback_hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = timm.create_model("hf-hub:me/darts-small", pretrained=True)
    assert len(loopback_hub.requests) == requests  # nothing asked of the Hub
    torch.testing.assert_close(logits(offline), logits(first), atol=0, rtol=0)
    with pytest.raises(WeightsError, match="not in the cache and the Hub cannot be reached"):
        download_weights("me/never-downloaded")


@pytest.mark.parametrize("tamper", ["corrupt", "truncated"])
@pytest.mark.parametrize("by", ["repository", "tag"])
def test_a_bad_download_fails_its_check_and_leaves_nothing_in_the_cache(loopback_hub, tmp_path, tamper, by):
    model, _ = push(loopback_hub, tmp_path)
    digest = hashlib.sha256(loopback_hub.repos["me/darts-small"]["model.safetensors"]).hexdigest()
    loopback_hub.tamper["model.safetensors"] = tamper
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(zoo.WEIGHTS, "darts_v2.cifar10", Weights("me/darts-small", digest, True))
        with pytest.raises(WeightsError) as error:
            if by == "tag":
                timm.create_model("darts_v2.cifar10", pretrained=True, **SMALL)
            else:
                timm.create_model("hf-hub:me/darts-small", pretrained=True)
    expected = "fails its sha256 check" if tamper == "corrupt" else "Consistency check failed"
    assert expected in str(error.value) and "me/darts-small" in str(error.value)
    leftovers = [f for f in cached_files(loopback_hub.cache) if "model.safetensors" in f or "/blobs/" in f]
    blobs = [loopback_hub.cache / f for f in leftovers if "/blobs/" in f]
    assert all(hashlib.sha256(b.read_bytes()).hexdigest() == b.name for b in blobs if not b.name.endswith(".lock"))
    assert not any("model.safetensors" in f for f in leftovers), leftovers
    # the Hub is fixed: the next try downloads good weights
    del loopback_hub.tamper["model.safetensors"]
    torch.testing.assert_close(logits(timm.create_model("hf-hub:me/darts-small", pretrained=True)), logits(model),
                               atol=0, rtol=0)


@pytest.mark.parametrize("args, message", [
    (("--repo-id", "darts"), "repo id 'darts' is not ORG/REPO"),
    (("--repo-id", "me/x", "--C", "8"), "shape mismatches"),
    (("--repo-id", "me/x", "--dataset", "mnist"), "unknown dataset 'mnist'"),
    (("--repo-id", "me/x", "--eval", "missing.json"), "missing.json: not a readable evaluation JSON"),
])
def test_push_refuses_bad_input(tmp_path, args, message):
    checkpoint = tmp_path / "run.safetensors"
    save_file(trained().state_dict(), str(checkpoint))
    result = runner.invoke(app, ["push", "darts_v2", "--checkpoint", str(checkpoint), "--layers", "5", *args])
    assert result.exit_code == 2 and message in result.output.replace("\n", " "), result.output


@pytest.mark.slow
def test_the_environment_variables_reach_the_loopback_hub(loopback_hub, tmp_path):
    """HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE as a user sets them, in fresh interpreters."""
    model, _ = push(loopback_hub, tmp_path)
    torch.save(logits(model), tmp_path / "expected.pt")
    script = ("import timm, torch, nas_zoo; from tests.test_hub import logits; "
              "got = logits(timm.create_model('hf-hub:me/darts-small', pretrained=True)); "
              f"torch.testing.assert_close(got, torch.load(r'{tmp_path / 'expected.pt'}'), atol=0, rtol=0)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for offline in ("0", "1"):
        before = len(loopback_hub.requests)
        done = subprocess.run([sys.executable, "-c", script], env={**env, "HF_HUB_OFFLINE": offline},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (len(loopback_hub.requests) > before) == (offline == "0")
