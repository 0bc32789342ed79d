"""Bad inputs through the command line: each case exits with one line (or succeeds as it should) and changes
nothing outside the run's own folder; a refusal changes nothing at all."""
import hashlib
import json
import pickle
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import nas_zoo
from nas_zoo.files import locked_output
from nas_zoo.cli.app import app

runner = CliRunner()
TINY = ["--init-channels", "4", "--layers", "3", "--batch-size", "16", "--num-workers", "0", "--deterministic"]
DARTS = nas_zoo.get_genotype("DARTS_V2").to_dict()
RECORD = {k: DARTS[k] for k in ("name", "normal", "normal_concat", "reduce", "reduce_concat")}


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def _write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _genotype(root: Path, **fields) -> Path:
    return _write(root / "g.json", {**RECORD, **fields})


def _rewired(root: Path) -> Path:
    """DARTS_V2 with two edges of a node swapped: every weight keeps its shape, the network computes another
    function."""
    normal = [list(e) for e in DARTS["normal"]]
    normal[0], normal[1] = normal[1], normal[0]
    return _genotype(root, name="REWIRED", normal=normal)


def _cifar_batch(root: Path, name: str, labels, images: int = None):
    images = len(labels) if images is None else images
    data = np.zeros((images, 3072), dtype=np.uint8)
    _write(root / "cifar" / "cifar-10-batches-py" / name, pickle.dumps({"data": data, "labels": list(labels)},
                                                                      protocol=2))


def _array_bomb() -> bytes:
    """A 193-byte-ish pickle that calls numpy.ndarray((3 GiB,)): allocation, not code."""
    class Bomb:
        def __reduce__(self):
            return (np.ndarray, ((3 * 2 ** 30,), "u1"))
    return pickle.dumps({"data": Bomb(), "labels": []}, protocol=2)


def _copy_run(root: Path, trained: Path) -> None:
    shutil.copytree(trained, root / "run")


def _authors_file(root: Path) -> Path:
    model = nas_zoo.build_network("DARTS_V2", C=4, layers=3)
    path = root / "authors.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _malicious_state(root: Path, trained: Path) -> None:
    _copy_run(root, trained)
    torch.save({"config": Exploit()}, root / "run" / "checkpoint" / "state.pt")


def _corpus(root: Path) -> None:
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        _write(root / "ptb" / name, "a b c d e f\n" * 20)


TRAIN = ["train", "darts_v2", "--dataset", "cifar10", "--data-dir", "{cifar}", "--out", "{run}", *TINY]
EVALUATE = ["evaluate", "darts_v2", "--dataset", "cifar10", "--data-dir", "{cifar}", "--no-speed"]
CONVERT = ["convert", "--from", "darts", "{root}/authors.safetensors", "--model", "darts_v2.cifar10", "--C", "4",
           "--layers", "3"]
PUSH = ["push", "darts_v2.cifar10", "--checkpoint", "{trained}/checkpoint", "--repo-id", "me/x", "--eval",
        "{root}/eval.json"]
LM = ["train", "darts_v2_rnn", "--dataset", "ptb", "--data-dir", "{root}/ptb", "--out", "{run}", "--epochs", "1"]

# (id, setup(root, trained), arguments, exit code, what the message (or, for 0, the output) says)
CASES = [
    # genotype files
    ("genotype-random-bytes", lambda r, t: _write(r / "g.json", bytes(range(256))), ["info", "{root}/g.json"], 2,
     "not a text file"),
    ("genotype-deeply-nested", lambda r, t: _write(r / "g.json", "[" * 100000 + "]" * 100000),
     ["info", "{root}/g.json"], 2, "nested too deeply"),
    ("genotype-not-json", lambda r, t: _write(r / "g.json", "{name: x"), ["info", "{root}/g.json"], 2,
     "not valid JSON"),
    ("genotype-missing", None, ["info", "{root}/absent.json"], 2, "no such genotype file"),
    ("genotype-a-folder", lambda r, t: (r / "dir.json").mkdir(), ["info", "{root}/dir.json"], 2, "cannot be read"),
    ("genotype-evaluations-number", lambda r, t: _genotype(r, evaluations=3), ["info", "{root}/g.json"], 2,
     "field 'evaluations': expected a list of settings"),
    ("genotype-network-options-list", lambda r, t: _genotype(r, network_options=[1]), ["info", "{root}/g.json"], 2,
     "field 'network_options': expected an object"),
    ("genotype-provenance-string", lambda r, t: _genotype(r, provenance="github"), ["info", "{root}/g.json"], 2,
     "field 'provenance': expected an object of strings and numbers"),
    ("genotype-paper-nested", lambda r, t: _genotype(r, paper={"title": {"a": [1]}}), ["info", "{root}/g.json"], 2,
     "field 'paper'"),
    ("genotype-note-number", lambda r, t: _genotype(r, note=5), ["info", "{root}/g.json"], 2, "field 'note'"),
    ("genotype-evaluation-defaults-list",
     lambda r, t: _write(r / "g.json", {"evaluation_defaults": [], "genotypes": {"X": RECORD}}),
     ["info", "{root}/g.json"], 2, "field 'evaluation_defaults'"),
    ("genotype-reported-nested", lambda r, t: _genotype(r, evaluations=[
        {"dataset": "cifar10", "network": "cifar", "C": 36, "layers": 20, "reported": {"test_error": [1]}}]),
     ["info", "{root}/g.json"], 2, "reported': expected an object of figures"),
    ("genotype-reduce-concat-of-inputs", lambda r, t: _genotype(r, reduce_concat=[0, 1]), ["info", "{root}/g.json"], 2,
     "field 'reduce_concat': a reduction cell's output can only join its nodes"),
    ("genotype-huge-C", lambda r, t: _genotype(r, evaluations=[
        {"dataset": "cifar10", "network": "cifar", "C": 100000, "layers": 20}]), ["info", "{root}/g.json"], 2,
     "C': expected a positive even integer up to 256"),
    ("genotype-huge-layers", lambda r, t: _genotype(r, evaluations=[
        {"dataset": "cifar10", "network": "cifar", "C": 36, "layers": 5000}]), ["info", "{root}/g.json"], 2,
     "layers': expected a positive integer up to 64"),
    ("genotype-message-keeps-brackets", lambda r, t: _genotype(r, normal=[["sep_conv_3x3"]] * 8),
     ["info", "{root}/g.json"], 2, 'expected [operation, input], got ["sep_conv_3x3"]'),
    ("genotype-note-with-brackets", lambda r, t: _genotype(r, note="[bold]see table 3[/]"), ["info", "{root}/g.json"],
     0, "note: [bold]see table 3[/]"),
    ("unknown-model", None, ["info", "dartz_v2"], 2, "closest: darts_v2"),
    # training
    ("train-over-a-run", _copy_run, [*TRAIN, "--epochs", "1"], 2, "already holds a run"),
    ("train-over-a-users-metrics", lambda r, t: _write(r / "run" / "metrics.jsonl", "mine\n"), [*TRAIN, "--epochs", "1"],
     2, "already holds a run (metrics.jsonl)"),
    ("train-lr-nan", None, [*TRAIN, "--learning-rate", "nan"], 2, "learning_rate must be a finite number, got nan"),
    ("train-lr-inf", None, [*TRAIN, "--learning-rate", "inf"], 2, "learning_rate must be a finite number"),
    ("train-config-string-epochs", lambda r, t: _write(r / "c.json", {"epochs": "3"}),
     [*TRAIN, "--config", "{root}/c.json"], 2, "epochs must be an integer, got '3'"),
    ("train-config-not-json", lambda r, t: _write(r / "c.json", "{epochs"), [*TRAIN, "--config", "{root}/c.json"], 2,
     "not valid JSON"),
    ("train-config-a-list", lambda r, t: _write(r / "c.json", [1]), [*TRAIN, "--config", "{root}/c.json"], 2,
     "expected a JSON object"),
    ("train-config-unknown-field", lambda r, t: _write(r / "c.json", {"epochz": 3}),
     [*TRAIN, "--config", "{root}/c.json"], 2, "unknown training field(s) epochz"),
    ("train-zero-epochs", None, [*TRAIN, "--epochs", "0"], 2, "epochs must be at least 1"),
    ("train-drop-path-one", None, [*TRAIN, "--drop-path-prob", "1"], 2, "drop_path_prob must be in [0, 1)"),
    ("train-huge-width", None, [*TRAIN, "--init-channels", "100000"], 2, "out of range"),
    ("train-huge-depth", None, [*TRAIN, "--layers", "100000"], 2, "out of range"),
    ("train-absent-gpu", None, [*TRAIN, "--device", "cuda:99"], 2, "no such CUDA GPU"),
    ("train-unknown-device", None, [*TRAIN, "--device", "tpu"], 2, "is not cpu, cuda or cuda:N"),
    ("train-unknown-dataset", None, [*TRAIN[:3], "mnist", *TRAIN[4:]], 2, "dataset 'mnist' is not one of"),
    ("train-no-data", None, [*TRAIN[:5], "{root}/nowhere", *TRAIN[6:]], 2, "data_batch_1 not found"),
    ("train-labels-out-of-range", lambda r, t: _cifar_batch(r, "test_batch", [3, 12]), TRAIN, 2,
     "holds the label 12; expected 0..9"),
    ("train-empty-test-split", lambda r, t: _cifar_batch(r, "test_batch", []), TRAIN, 2,
     "the test files in"),
    ("train-array-bomb", lambda r, t: _write(r / "cifar" / "cifar-10-batches-py" / "test_batch", _array_bomb()),
     TRAIN, 2, "it calls numpy.ndarray, which allocates"),
    ("train-pickled-code", lambda r, t: _write(r / "cifar" / "cifar-10-batches-py" / "test_batch",
                                               pickle.dumps({"data": Exploit()})), TRAIN, 2,
     "refusing to load builtins.print"),
    ("train-out-under-a-file", lambda r, t: _write(r / "file", "x"), [*TRAIN[:7], "{root}/file/run", *TRAIN[8:]], 2,
     "file"),
    ("train-out-locked", None, TRAIN, 2, "is being written by pid"),
    ("resume-other-architecture", lambda r, t: (_copy_run(r, t), _rewired(r)), [*TRAIN[:1], "{root}/g.json", *TRAIN[2:], "--resume"], 2,
     "holds a run of another architecture (normal[0]"),
    ("resume-other-seed", _copy_run, [*TRAIN, "--resume", "--seed", "3"], 2, "other settings (seed 0 -> 3)"),
    ("resume-outputs-without-checkpoint", lambda r, t: _write(r / "run" / "metrics.jsonl", "{}\n"),
     [*TRAIN, "--resume"], 2, "holds metrics.jsonl but no readable checkpoint"),
    ("resume-other-num-workers", _copy_run, [*TRAIN, "--resume", "--num-workers", "1"], 0, "at epoch 1"),
    # evaluation
    ("evaluate-rewired-genotype", lambda r, t: (_copy_run(r, t), _rewired(r)),
     [EVALUATE[0], "{root}/g.json", *EVALUATE[2:], "--checkpoint", "{run}/checkpoint"], 2,
     "holds another architecture (normal[0]"),
    ("evaluate-malicious-state", _malicious_state, [*EVALUATE, "--checkpoint", "{run}/checkpoint"], 2,
     "it pickles print, which would run code"),
    ("evaluate-absent-checkpoint", None, [*EVALUATE, "--checkpoint", "{root}/absent"], 2,
     "not a readable safetensors file"),
    ("evaluate-absent-gpu", None, [*EVALUATE, "--device", "cuda:99"], 2, "no such CUDA GPU"),
    ("evaluate-json-under-a-file", lambda r, t: _write(r / "file", "x"),
     [*EVALUATE, "--no-accuracy", "--json", "{root}/file/x.json"], 2, "cannot write the result"),
    ("evaluate-killed-mid-swap", lambda r, t: shutil.copytree(t / "checkpoint", r / "run" / "checkpoint.old"),
     [*EVALUATE, "--checkpoint", "{run}/checkpoint", "--json", "-"], 0, '"images": 16'),
    # convert and push
    ("convert-over-a-users-folder", lambda r, t: (_authors_file(r), _write(r / "proj" / "important.txt", "x")),
     [*CONVERT, "--out", "{root}/proj"], 2, "is not a weights folder written by nas-zoo"),
    ("convert-over-the-folder-above", lambda r, t: (_authors_file(r), _write(r / "proj" / "important.txt", "x"),
                                                     (r / "proj" / "work").mkdir()),
     [*CONVERT, "--out", "{root}/proj/work/.."], 2, "is not a weights folder written by nas-zoo"),
    ("convert-over-a-file", lambda r, t: (_authors_file(r), _write(r / "weights", "x")),
     [*CONVERT, "--out", "{root}/weights"], 2, "is not a weights folder written by nas-zoo"),
    ("convert-malicious", lambda r, t: torch.save({"x": Exploit()}, r / "authors.pt"),
     ["convert", "--from", "darts", "{root}/authors.pt", "--model", "darts_v2", "--out", "{run}"], 2,
     "it pickles print, which would run code"),
    ("convert-new-folder", lambda r, t: _authors_file(r), [*CONVERT, "--out", "{run}"], 0, "wrote"),
    ("push-eval-not-json", lambda r, t: _write(r / "eval.json", "{top1"), PUSH, 2, "not a readable evaluation JSON"),
    ("push-eval-binary", lambda r, t: _write(r / "eval.json", b"\xff\xfe\x00"), PUSH, 2,
     "not a readable evaluation JSON"),
    ("push-eval-a-list", lambda r, t: _write(r / "eval.json", [1, 2]), PUSH, 2, "expected a JSON object"),
    ("push-eval-wrong-type", lambda r, t: _write(r / "eval.json", {"params": "many"}), PUSH, 2, "field 'params'"),
    # language models
    ("lm-lr-nan", lambda r, t: _corpus(r), [*LM, "--set", "lr=NaN"], 2, "setting 'lr' must be a number, got nan"),
    ("lm-setting-string", lambda r, t: _corpus(r), [*LM, "--set", 'nhid="3"'], 2, "setting 'nhid' must be an integer"),
    ("lm-out-locked", lambda r, t: _corpus(r), LM, 2, "is being written by pid"),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 1-epoch run of a tiny DARTS_V2 network on 16-image batches (copied where a case needs it)."""
    root = tmp_path_factory.mktemp("trained")
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _cifar_batch(root, name, list(range(10)) + list(range(6)))
    args = [a.format(cifar=root / "cifar", run=root / "run") for a in TRAIN] + ["--epochs", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return root / "run"


def _snapshot(root: Path, skip: Path = None) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest(),
                                       None if p.is_dir() else p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if skip is None or not p.is_relative_to(skip)}


@pytest.mark.parametrize("setup, args, code, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input(tmp_path, trained, setup, args, code, message, request):
    root = tmp_path / "root"
    shutil.copytree(trained.parent / "cifar", root / "cifar")
    if setup:
        setup(root, trained)
    run = root / "run"
    args = [a.format(root=root, run=run, cifar=root / "cifar", trained=trained) for a in args]
    before = _snapshot(root)
    locked = request.node.callspec.id.endswith("-out-locked")
    with locked_output(run) if locked else nullcontext():
        result = runner.invoke(app, args)
    output = result.output.strip()
    assert result.exit_code == code, output
    assert message in output.replace("\n", " "), output
    assert "Traceback" not in output and "weights_only=False" not in output
    if code:
        assert isinstance(result.exception, SystemExit)
        assert len(output.splitlines()) == 1 and output.startswith("error: "), output
        assert _snapshot(root) == before  # a refusal leaves everything as it was, the run's folder too
    else:
        assert _snapshot(root, skip=run) == {k: v for k, v in before.items() if not (root / k).is_relative_to(run)}
