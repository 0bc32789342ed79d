"""The batched CIFAR data path against torchvision's DataLoader pipeline, both measured in one run.

Both serve epochs of a 10,000-image training split in the CIFAR-10 layout (random pixels: the cost does not
depend on them), read by our loader, with DARTS's augmentation (4-pixel-padded crop, flip, normalisation,
cutout 16) at batch 96, on the CPU, each batch a ready float tensor: ``nas-zoo train``'s two data paths as
they run (``--data-path batched``, the default; ``--data-path torchvision``). The baseline is the faster of
the DataLoader with no worker and with the recipes' 2 workers (started every epoch, as training starts them).
Threads: the CLI's default (``--threads 0``: one per idle core). Time: the fastest of 3 epochs after one
warm-up epoch. ``extra_info`` holds both rates and ``speedup`` (batched / DataLoader images per second); the
goal is at least 3x.

Run: ``python -m pytest benchmarks/test_data_path.py``.
"""
import torch

from measure import best_time, cifar_files
from nas_zoo.harness.batched import BatchedCifar
from nas_zoo.harness.data import CifarPickles, cifar_transforms, epoch_loader
from nas_zoo.registry.zoo import DATASET_STATS
from nas_zoo.threads import AUTO, set_threads

IMAGES, BATCH, CUTOUT = 10_000, 96, 16


def epoch(loader) -> int:
    return sum(len(labels) for _, labels in loader)


def test_batched_against_the_dataloader(benchmark, tmp_path):
    threads = set_threads(AUTO)
    mean, std = DATASET_STATS["cifar10"]
    split = CifarPickles(cifar_files(tmp_path, IMAGES), "cifar10", train=True,
                         transform=cifar_transforms(mean, std, train=True, cutout=CUTOUT))
    batched = BatchedCifar(split, BATCH, torch.device("cpu"), mean, std, torch.Generator().manual_seed(0), CUTOUT)
    assert epoch(batched) == IMAGES
    loader_rates = {}
    for workers in (0, 2):
        loader_rates[workers] = IMAGES / best_time(lambda: epoch(epoch_loader(split, BATCH, 0, 0, True, workers)))
    benchmark.pedantic(epoch, args=(batched,), rounds=3, iterations=1, warmup_rounds=1)
    batched_rate = IMAGES / benchmark.stats.stats.min
    workers, loader_rate = max(loader_rates.items(), key=lambda item: item[1])
    speedup = batched_rate / loader_rate
    benchmark.extra_info.update(threads=threads, batched_images_per_s=batched_rate,
                                **{f"dataloader_{w}_workers_images_per_s": r for w, r in loader_rates.items()},
                                speedup=speedup)
    print(f"\nbatched {batched_rate:.0f} img/s; DataLoader {loader_rates[0]:.0f} img/s (no worker), "
          f"{loader_rates[2]:.0f} img/s (2 workers); speedup {speedup:.1f}x over the faster ({threads} thread(s))")
    assert speedup >= 3
