"""What a GPU should measure for nas-zoo, in one JSON file (issue 16): run by ``benchmarks/gpu.sh``.

* ``train``: images/s and peak memory of one training step (``Execution.train_step``: the auxiliary loss,
  clipping, SGD, as ``nas-zoo train`` steps) of ``darts_v2`` and ``gdas_v1`` at their paper size and batch 96
  (the recipes' drop-path probability, reached at the last epoch), in three modes: eager fp32 NCHW (the
  authors' way), mixed precision (``auto``: bf16 from compute capability 8.0, fp16 with loss scaling before)
  with channels-last, and the same compiled (``first_step_s``: the first step, compilation included).
* ``data_path``: one epoch of a 50,000-image CIFAR-10-sized split with DARTS's augmentation at batch 96,
  batched on the GPU against torchvision's DataLoader (8 workers, at most one per core) delivering to it.
* ``search_vs_xautodl``: one GDAS and one DARTS (first order) search step against the GDAS authors' own
  (``benchmarks/test_search_speed.py``: same shapes, same samples); skipped without xautodl.
* ``evaluate``: ``nas-zoo evaluate``'s latency (batch 1) and throughput (batch 64), fp32 eager, ``--fast``,
  and eager under autocast (what the accuracy pass runs).

Each part's figures are written as soon as it ends (the file is rewritten atomically), so a run cut short
keeps what it measured; the compiled steps come last (compilation takes minutes). A part that fails is recorded
under ``errors`` and the others still run (exit status 1). ``--tiny`` (with ``--device cpu`` and
``--compile-backend eager``) runs every part at toy sizes: what ``tests/test_gpu_script.py`` checks here,
where there is no GPU.
"""
import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict

import torch
from torch import nn

import nas_zoo
from nas_zoo.files import write_text_atomic
from nas_zoo.harness.batched import BatchedCifar
from nas_zoo.harness.data import CifarPickles, cifar_transforms, epoch_loader
from nas_zoo.harness.evaluate import measure_speed
from nas_zoo.harness.execution import Execution, compile_parts
from nas_zoo.harness.train import Target
from nas_zoo.registry.zoo import DATASET_STATS
from nas_zoo.threads import AUTO, set_threads

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks' shared module, and the search benchmark
import measure  # noqa: E402

MODELS = ("darts_v2", "gdas_v1")
TINY = dict(init_channels=4, layers=3)  # the smallest networks with both reduction cells and the auxiliary head
MODES = {"eager_fp32": ("fp32", False, False), "amp_channels_last": ("auto", True, False),
         "amp_channels_last_compiled": ("auto", True, True)}


def timed(fn: Callable[[], Any]) -> float:
    """Seconds of one call, the device's queue drained before and after."""
    measure.sync()
    start = time.perf_counter()
    fn()
    measure.sync()
    return time.perf_counter() - start


def environment(device: torch.device) -> Dict[str, Any]:
    found = dict(nas_zoo=nas_zoo.__version__, torch=torch.__version__, python=platform.python_version(),
                 device=str(device), cpu_count=os.cpu_count(), threads=torch.get_num_threads())
    if device.type == "cuda":
        found.update(gpu=torch.cuda.get_device_name(device),
                     capability=".".join(map(str, torch.cuda.get_device_capability(device))), cuda=torch.version.cuda,
                     cudnn=torch.backends.cudnn.version(),
                     memory_bytes=torch.cuda.get_device_properties(device).total_memory)
    return found


def train_step_figures(name: str, mode: str, args) -> Dict[str, Any]:
    precision, channels_last, compiled = MODES[mode]
    device = torch.device(args.device)
    target = Target.of(name, "cifar10")
    config = target.recipe().override(TINY if args.tiny else {})
    torch.manual_seed(0)
    model = target.build(config).train()
    model.drop_path_prob = config.drop_path_prob
    execution = Execution(device, precision, channels_last)
    execution.prepare(model)
    if compiled:
        torch._dynamo.reset()  # each network compiles from nothing: compile_s is its own
        compile_parts(model, args.compile_backend)
    optimizer = torch.optim.SGD(model.parameters(), config.learning_rate, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)

    def step():
        execution.train_step(model, images, labels, optimizer, nn.CrossEntropyLoss(), config.auxiliary_weight,
                             config.grad_clip)

    first = timed(step)  # compilation, cuDNN's choices, the allocator's first blocks
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(lambda: [step() for _ in range(args.steps)]) / args.steps
    return dict(images_per_s=args.batch / seconds, step_ms=1000 * seconds, first_step_s=first,
                precision=execution.precision, channels_last=execution.channels_last, compiled=compiled,
                batch=args.batch, C=config.init_channels, layers=config.layers,
                peak_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None)


def data_path_figures(args, folder: Path) -> Dict[str, Any]:
    """One epoch of each data path, delivered on the device."""
    device = torch.device(args.device)
    images = 500 if args.tiny else 50_000
    mean, std = DATASET_STATS["cifar10"]
    split = CifarPickles(measure.cifar_files(folder, images), "cifar10", True,
                         cifar_transforms(mean, std, train=True, cutout=16))
    batched = BatchedCifar(split, args.batch, device, mean, std, torch.Generator().manual_seed(0), 16)
    workers = min(8, os.cpu_count() or 1) if not args.tiny else 0
    loader = epoch_loader(split, args.batch, 0, 0, True, workers)

    def epoch(source):
        for x, y in source:
            x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    epoch(batched)  # warm-up: the first kernels
    return dict(images=images, batch=args.batch, dataloader_workers=workers,
                batched_images_per_s=images / timed(lambda: epoch(batched)),
                dataloader_images_per_s=images / timed(lambda: epoch(loader)))


def search_figures(args) -> Dict[str, Any]:
    """Ours against xautodl: benchmarks/test_search_speed.py's steps, timed the same way (mean of seeded steps)."""
    missing = [m for m in ("xautodl", "pytest") if importlib.util.find_spec(m) is None]
    if missing:
        return dict(skipped=f"{' and '.join(missing)} not installed")
    import test_search_speed as speed

    speed.DEVICE = args.device
    if args.tiny:  # toy shapes: the module's constants are read when its steps are built
        speed.C, speed.N, speed.BATCH = 4, 1, 2
    found = {}
    for algorithm in ("gdas", "darts"):
        net, theirs = speed._xautodl(algorithm)
        ours = speed._ours(algorithm, True, start_from=net)  # channels-last where safe, as the search runs
        rounds = 1 if args.tiny else speed.ROUNDS[algorithm]
        our_time, their_time = (measure.mean_seeded_time(step, rounds) for step in (ours, theirs))
        found[algorithm] = dict(ours_s=our_time, xautodl_s=their_time, speedup=their_time / our_time,
                                C=speed.C, cells=3 * speed.N, batch=speed.BATCH)
    return found


def evaluate_figures(name: str, args) -> Dict[str, Any]:
    device = torch.device(args.device)
    target = Target.of(name, "cifar10")
    config = target.recipe().override(TINY if args.tiny else {})
    model = target.build(config).eval()
    found = {f"{'fast' if fast else 'eager'}_fp32": measure_speed(model, (3, 32, 32), device, fast)
             for fast in (False, True)}
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        found["eager_autocast"] = measure_speed(model, (3, 32, 32), device)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write (a new file)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: every part in seconds (for tests)")
    parser.add_argument("--compile-backend", default="inductor")
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"error: {args.out} exists; give a new --out (this script never writes over a file)", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU here; --device cpu --tiny runs every part at toy sizes", file=sys.stderr)
        return 2
    args.batch, args.steps = (2, 1) if args.tiny else (96, 20)
    set_threads(AUTO)  # as every command: one thread per idle core
    measure.DEVICE = args.device  # what measure.sync waits for
    started = time.perf_counter()
    result: Dict[str, Any] = dict(script="benchmarks/gpu.py", started=datetime.datetime.now().isoformat(),
                                  tiny=args.tiny, environment=environment(torch.device(args.device)), errors={})

    def part(key: str, measure: Callable[[], Any]) -> None:
        try:
            figures = measure()
        except Exception as e:  # noqa: BLE001 - recorded; the other parts still run
            figures = None
            result["errors"][key] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        keys = key.split("/")
        slot = result
        for k in keys[:-1]:
            slot = slot.setdefault(k, {})
        slot[keys[-1]] = figures
        result["wall_s"] = time.perf_counter() - started
        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
        print(f"{key}: {json.dumps(figures)}", flush=True)

    for name in MODELS:
        for mode in ("eager_fp32", "amp_channels_last"):
            part(f"train/{name}/{mode}", lambda: train_step_figures(name, mode, args))
    with tempfile.TemporaryDirectory() as folder:
        part("data_path", lambda: data_path_figures(args, Path(folder)))
    part("search_vs_xautodl", lambda: search_figures(args))
    for name in MODELS:
        part(f"evaluate/{name}", lambda: evaluate_figures(name, args))
    for name in MODELS:  # last: compilation takes minutes, and a run cut short keeps everything else
        part(f"train/{name}/amp_channels_last_compiled", lambda: train_step_figures(name, "amp_channels_last_compiled",
                                                                                   args))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
