"""The CLI is a thin layer over the Python API: the same calls give the same results, and a flag that does not
apply to the chosen dataset is refused, saying so."""
import json
import random
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import nas_zoo
from nas_zoo.cli.app import app
from nas_zoo.harness.evaluate import evaluate_named
from nas_zoo.weights.hub import convert, push
from nas_zoo.harness.train import train_named

runner = CliRunner()
# A language model small enough for a CPU test (rnn/train.py's names).
SMALL_LM = dict(nhid=16, batch_size=4, eval_batch_size=4, test_batch_size=2, bptt=8, max_seq_len_delta=4,
                max_batches=6, epochs=1)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _corpus(directory: Path) -> Path:
    rng = random.Random(0)
    directory.mkdir(parents=True)
    for name, lines in (("ptb.train.txt", 100), ("ptb.valid.txt", 20), ("ptb.test.txt", 20)):
        (directory / name).write_text("".join(" ".join(f"w{rng.randrange(20)}" for _ in range(8)) + "\n"
                                              for _ in range(lines)))
    return directory


def _weights(path: Path, genotype: str = "DARTS_V2") -> Path:
    model = nas_zoo.build_network(genotype, C=4, layers=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_evaluate_from_python_equals_the_cli():
    cli = invoke("evaluate", "gdas_v1", "--dataset", "imagenet", "--no-accuracy", "--no-speed", "--json", "-")
    assert cli.exit_code == 0, cli.output
    api = evaluate_named("gdas_v1", "imagenet", accuracy=False, speed=False)
    assert json.loads(cli.output) == api and api["model"] == "gdas_v1_imagenet"


def test_language_model_config_file_trains_and_evaluates_the_same_from_python(tmp_path):
    """--config works for a language model as for an image model; API and CLI runs are the same run."""
    data, config = _corpus(tmp_path / "ptb"), tmp_path / "small.json"
    config.write_text(json.dumps(SMALL_LM))
    cli = invoke("train", "gdas_ptb", "--dataset", "ptb", "--data-dir", data, "--out", tmp_path / "cli",
                 "--config", config)
    assert cli.exit_code == 0, cli.output
    train_named("gdas_ptb", "ptb", data, tmp_path / "api", config=config, log=lambda line: None)
    weights = [load_file(str(tmp_path / run / "best" / "model.safetensors")) for run in ("cli", "api")]
    assert weights[0]["encoder.weight"].shape == (21, 16)  # nhid from the config file, 20 words and <eos>
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])
    evaluated = invoke("evaluate", "gdas_ptb", "--dataset", "ptb", "--data-dir", data, "--checkpoint", tmp_path / "cli",
                       "--json", tmp_path / "figures.json")
    assert evaluated.exit_code == 0 and not evaluated.output, evaluated.output  # perplexities: JSON, no table
    api = evaluate_named("gdas_ptb", "ptb", data, tmp_path / "api")
    speeds = ("valid_tokens_per_s", "test_tokens_per_s")
    cli_result = json.loads((tmp_path / "figures.json").read_text())
    assert {**cli_result, "checkpoint": None} == {**api, **{k: cli_result[k] for k in speeds}, "checkpoint": None}


def test_convert_from_python_equals_the_cli(tmp_path):
    weights = _weights(tmp_path / "authors.safetensors")
    cli = invoke("convert", "--from", "darts", weights, "--model", "darts_v2.cifar10", "--C", "4", "--layers", "3",
                 "--out", tmp_path / "cli")
    assert cli.exit_code == 0, cli.output
    written = convert(weights, "darts", "darts_v2.cifar10", tmp_path / "api", C=4, layers=3)
    assert written.folder == tmp_path / "api" and f"wrote {tmp_path / 'cli'} ({written.holds})" in cli.output
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes()


def test_push_from_python_equals_the_cli(loopback_hub, tmp_path):
    weights = _weights(tmp_path / "run.safetensors")
    cli = invoke("push", "darts_v2.cifar10", "--checkpoint", weights, "--repo-id", "me/cli", "--C", "4",
                 "--layers", "3")
    assert cli.exit_code == 0, cli.output
    pushed = push("darts_v2.cifar10", weights, "me/api", C=4, layers=3)
    assert f"sha256 of model.safetensors: {pushed.sha256}" in cli.output
    assert (pushed.target.spec.name, pushed.target.dataset) == ("darts_v2", "cifar10")
    for name in ("model.safetensors", "config.json"):
        assert loopback_hub.repos["me/cli"][name] == loopback_hub.repos["me/api"][name]


LM_TRAIN = ["train", "gdas_ptb", "--dataset", "ptb", "--data-dir", "{data}", "--out", "{tmp}/run"]
LM_EVALUATE = ["evaluate", "gdas_ptb", "--dataset", "ptb", "--data-dir", "{data}"]
IMAGE_EVALUATE = ["evaluate", "darts_v2", "--dataset", "cifar10", "--data-dir", "{tmp}"]


@pytest.mark.parametrize("args, message", [
    *[([*LM_TRAIN, *flag], f"{field}: not for a language model (ptb)") for flag, field in [
        (["--learning-rate", "0.1"], "learning_rate"), (["--lr-scheduler", "step"], "lr_scheduler"),
        (["--momentum", "0.5"], "momentum"), (["--weight-decay", "0"], "weight_decay"),
        (["--grad-clip", "1"], "grad_clip"), (["--label-smooth", "0.1"], "label_smooth"),
        (["--auxiliary-weight", "0"], "auxiliary_weight"), (["--drop-path-prob", "0"], "drop_path_prob"),
        (["--cutout-length", "0"], "cutout_length"), (["--init-channels", "8"], "init_channels"),
        (["--layers", "3"], "layers"), (["--en-layers", "2"], "en_layers"), (["--num-workers", "0"], "num_workers"),
        (["--deterministic"], "deterministic"), (["--download"], "download"), (["--device", "cpu"], "device"),
        (["--set", "learning_rate=0.1"], "learning_rate")]],
    *[([*LM_EVALUATE, *flag], f"{field}: not for a language model (ptb)") for flag, field in [
        (["--pretrained"], "pretrained"), (["--fast"], "fast"), (["--no-speed"], "speed"), (["--speed"], "speed"),
        (["--no-accuracy"], "accuracy"), (["--batch-size", "8"], "batch_size"), (["--num-workers", "0"], "num_workers"),
        (["--device", "cpu"], "device")]],
    ([*IMAGE_EVALUATE, "--no-accuracy", "--batch-size", "8"], "batch_size: for the accuracy pass, which accuracy=False (--no-accuracy) skips"),
    ([*IMAGE_EVALUATE, "--no-speed", "--fast"], "fast: for the speed figures, which speed=False (--no-speed) skips"),
    ([*IMAGE_EVALUATE, "--pretrained", "--checkpoint", "{tmp}"], "checkpoint and pretrained: give one"),
    (["train", "darts_v2", "--dataset", "cifar10", "--set", "lr=1"], "unknown training field(s) lr"),
    ([*LM_TRAIN, "--epochs", "1", "--set", "epochs=2"], "epochs: given by its flag and by --set; give it once"),
    (["convert", "--from", "darts", "{tmp}/w.safetensors", "--model", "darts_v2", "--network", "imagenet", "--out",
      "{tmp}/out"], "network: for a genotype file; darts_v2 is the zoo's cifar network"),
    (["push", "darts_v2", "--checkpoint", "{tmp}/w.safetensors", "--repo-id", "me/x", "--network", "imagenet"],
     "network: for a genotype file; darts_v2 is the zoo's cifar network"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_a_flag_that_does_not_apply_is_refused(tmp_path, args, message):
    data = _corpus(tmp_path / "ptb")
    _weights(tmp_path / "w.safetensors")
    result = invoke(*[a.format(tmp=tmp_path, data=data) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ") and not (tmp_path / "run").exists()


def test_set_reaches_the_image_recipe_as_the_flags_do(tmp_path):
    """--set FIELD=VALUE sets an image model's training field (checked before any data is read)."""
    for args in (["--set", "drop_path_prob=1"], ["--drop-path-prob", "1"]):
        result = invoke("train", "darts_v2", "--dataset", "cifar10", "--data-dir", tmp_path, "--out", tmp_path / "r",
                        *args)
        assert result.exit_code == 2 and "drop_path_prob must be in [0, 1)" in result.output, result.output
    scheduler = invoke("train", "darts_v2", "--dataset", "cifar10", "--set", "lr_scheduler=sometimes")
    assert scheduler.exit_code == 2 and "lr_scheduler" in scheduler.output and "sometimes" in scheduler.output
