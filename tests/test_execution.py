"""Training options beyond the papers' scripts: the data path, mixed precision, channels-last and compilation
(harness/execution.py), on the CPU here and, marked ``gpu``, on a CUDA GPU when there is one."""
import json
import logging

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import nas_zoo
from nas_zoo.cli.app import app
from nas_zoo.harness.checkpoint import load_state
from nas_zoo.harness.execution import Execution, autocast_dtype, compile_parts

runner = CliRunner()
CPU = torch.device("cpu")
TINY = ["--init-channels", "4", "--layers", "3", "--batch-size", "16", "--epochs", "1", "--num-workers", "0",
        "--threads", "1"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def train(cifar, out, *options):
    result = runner.invoke(app, ["train", "darts_v2", "--dataset", "cifar10", "--data-dir", str(cifar), "--out",
                                 str(out), *TINY, *map(str, options)])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] \
        if result.exit_code == 0 else None
    return result, records


def test_precision_by_device():
    assert autocast_dtype("auto", CPU) is None  # the CPU trains in fp32 unless asked
    assert [autocast_dtype(p, CPU) for p in ("fp32", "bf16", "fp16")] == [None, torch.bfloat16, torch.float16]
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16, got 'fp8'"):
        autocast_dtype("fp8", CPU)
    assert [Execution(CPU, p).scaler.is_enabled() for p in ("fp32", "bf16", "fp16")] == [False, False, True]


def test_channels_last_only_where_torch_computes_it():
    """On the CPU, channels-last is taken only when asked, and refused for networks whose factorized reductions
    are narrower than torch's CPU kernel computes correctly."""
    wide, narrow = (nas_zoo.build_network("DARTS_V2", network=network, C=C, layers=3)
                    for network, C in (("cifar", 8), ("imagenet", 2)))  # the stem's reduction: 1-channel convs
    assert not Execution(CPU).channels_last
    for model, taken in ((wide, True), (narrow, False)):
        execution = Execution(CPU, channels_last=True)
        execution.prepare(model)
        assert execution.channels_last is taken
        weight = next(p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1)
        assert weight.is_contiguous(memory_format=torch.channels_last) is taken


def test_compiled_parts_compute_the_same_steps_without_recompiling(caplog):
    """Compiled by parts (eager backend: the graphs dynamo captures, run as captured), GDAS_V1 (DARTS cells and
    GDAS's fixed reduction cell) gives the eager network's logits and gradients; a new drop-path probability
    compiles nothing new; training, a partial batch and evaluation stay within the raised recompile limit
    (this small network already exceeds torch's default 8 graphs for one code)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    logging.getLogger("torch._dynamo").addHandler(caplog.handler)  # torch's loggers do not propagate
    torch.manual_seed(0)
    eager = nas_zoo.build_network("GDAS_V1", C=4, layers=3, auxiliary=True).train()
    compiled = nas_zoo.build_network("GDAS_V1", C=4, layers=3, auxiliary=True).train()
    compiled.load_state_dict(eager.state_dict())
    try:
        assert compile_parts(compiled, backend="eager") > 8
        assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints as eager runs write them
        graphs = []
        for p, batch in ((0.1, 4), (0.2, 4), (0.2, 3)):
            x, outputs = torch.randn(batch, 3, 32, 32), []
            for model in (eager, compiled):
                model.drop_path_prob = p
                model.zero_grad()
                torch.manual_seed(1)  # the same drop-path masks
                logits, auxiliary = model.forward_train(x)
                (logits.square().sum() + auxiliary.sum()).backward()
                outputs.append(logits)
            torch.testing.assert_close(outputs[1], outputs[0])
            for a, b in zip(compiled.parameters(), eager.parameters()):
                torch.testing.assert_close(a.grad, b.grad)
            graphs.append(counters["stats"]["unique_graphs"])
        with torch.no_grad():
            torch.testing.assert_close(compiled.eval()(x), eager.eval()(x))
    finally:
        logging.getLogger("torch._dynamo").removeHandler(caplog.handler)
    assert graphs[0] > 0 and graphs[1] == graphs[0]  # p 0.1 -> 0.2: nothing recompiled
    assert not [r for r in caplog.records if "recompile_limit" in r.getMessage() or "cache_size_limit" in
                r.getMessage()]


def test_mixed_precision_on_the_cpu(tiny_cifar, tmp_path):
    """--precision bf16 and fp16 train on the CPU too: the record names it, the losses differ from fp32's, and
    fp16's loss scale is checkpointed (the GradScaler's state)."""
    _, fp32 = train(tiny_cifar, tmp_path / "fp32", "--deterministic")
    for precision in ("bf16", "fp16"):
        result, records = train(tiny_cifar, tmp_path / precision, "--precision", precision)
        assert result.exit_code == 0, result.output
        assert records[0]["precision"] == precision and records[0]["train_loss"] != fp32[0]["train_loss"]
    assert fp32[0]["precision"] == "fp32" and not fp32[0]["channels_last"]
    assert load_state(tmp_path / "fp16" / "checkpoint")["scaler"]["scale"] > 0
    assert load_state(tmp_path / "fp32" / "checkpoint")["scaler"] == {}


def test_data_paths(tiny_cifar, tmp_path):
    """CIFAR trains on the batched path by default and on torchvision's DataLoader on request; the two see
    different random draws, so their losses differ; the batched path refuses other datasets in one line."""
    result, batched = train(tiny_cifar, tmp_path / "batched")
    assert result.exit_code == 0, result.output
    result, loader = train(tiny_cifar, tmp_path / "loader", "--data-path", "torchvision")
    assert result.exit_code == 0, result.output
    saved = [load_state(tmp_path / name / "checkpoint")["config"]["data_path"] for name in ("batched", "loader")]
    assert saved == ["batched", "torchvision"] and batched[0]["train_loss"] != loader[0]["train_loss"]
    result, _ = train(tiny_cifar, tmp_path / "bad", "--data-path", "gpu")
    assert result.exit_code == 2 and "data_path must be batched or torchvision, got 'gpu'" in result.output
    for split in ("train", "val"):
        (tmp_path / "folder" / split / "a").mkdir(parents=True)
        Image.new("RGB", (40, 40)).save(tmp_path / "folder" / split / "a" / "0.png")
    result = runner.invoke(app, ["train", "darts_v2", "--dataset", "folder", "--data-dir", str(tmp_path / "folder"),
                                 "--data-path", "batched", "--out", str(tmp_path / "f"), *TINY])
    assert result.exit_code == 2, result.output
    assert "batched holds CIFAR only; use --data-path torchvision" in result.output


def test_a_resumed_run_may_switch_compilation_only(tiny_cifar, tmp_path):
    out = tmp_path / "run"
    assert train(tiny_cifar, out)[0].exit_code == 0
    result = runner.invoke(app, ["train", "darts_v2", "--dataset", "cifar10", "--out", str(out), "--resume",
                                 "--precision", "bf16"])
    assert result.exit_code == 2 and 'precision "auto" -> "bf16"' in result.output, result.output
    result = runner.invoke(app, ["train", "darts_v2", "--dataset", "cifar10", "--data-dir", str(tiny_cifar),
                                 "--out", str(out), "--resume", "--compile"])
    assert result.exit_code == 0 and "at epoch 1" in result.output, result.output


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["auto", "fp16", "bf16"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_training_on_the_gpu(tiny_cifar, tmp_path, precision, compiled):
    """On CUDA: the batched path, channels-last and each precision train (compiled too); auto is bf16 from
    compute capability 8.0 and fp16 before; fp16 checkpoints its loss scale; the weights load into an eager
    network."""
    if precision == "bf16" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("no native bf16 on this GPU")
    out = tmp_path / "run"
    result, records = train(tiny_cifar, out, "--device", "cuda", "--precision", precision, "--init-channels", "8",
                            *(["--compile"] if compiled else []))
    assert result.exit_code == 0, result.output
    expected = {"auto": "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"}.get(precision, precision)
    assert records[0]["precision"] == expected and records[0]["channels_last"]
    assert (load_state(out / "checkpoint")["scaler"] != {}) == (expected == "fp16")
    evaluated = runner.invoke(app, ["evaluate", "darts_v2", "--dataset", "cifar10", "--data-dir", str(tiny_cifar),
                                    "--checkpoint", str(out / "checkpoint"), "--no-speed", "--json", "-"])
    assert evaluated.exit_code == 0, evaluated.output

