"""Datasets and the papers' transforms.

CIFAR-10/100 are read from the standard python layout by our own loader, so that both the official files
and subsets of them load (torchvision's loader insists on the official md5 sums). The batch files are
pickles: they are read with an unpickler that only rebuilds numpy arrays and plain containers, so a
tampered file cannot run code. ImageNet and user datasets are class folders (torchvision's ImageFolder).
"""
import functools
import hashlib
import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import datasets, transforms

from ..registry.genotype import IMAGE_DATASETS
from . import distributed

CIFAR_LAYOUTS = {  # folder, training files, test files, label key, classes
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}
IMAGE_SOURCES = (*IMAGE_DATASETS, "folder")  # the papers' image datasets, and any class-folder dataset


class DatasetError(ValueError):
    """A dataset that is missing or not in its expected layout; the message says where we looked."""


class MissingDataError(DatasetError):
    """No dataset where we looked (each command adds how to get one)."""


class _ArrayType:
    """What ``numpy.ndarray`` unpickles to: an argument of ``_reconstruct`` only, not a call that allocates."""

    def __init__(self, *args):
        raise pickle.UnpicklingError("it calls numpy.ndarray, which allocates any shape it is given; no CIFAR "
                                     "batch does")


def _empty_bytes() -> bytes:
    """``bytes()``, as protocol 2 pickles an empty array's data; ``bytes(n)`` would allocate n bytes."""
    return b""


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and builtin containers only, none larger than the file itself.

    A CIFAR batch stores its pixels in the file, so no honest array is bigger than the file; the bound
    stops a tiny file from asking for gigabytes (``numpy.ndarray(shape)`` allocates any shape it is given).
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"), ("__builtin__", "bytes")}

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.limit = len(data)

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        if name == "ndarray":
            return _ArrayType
        if name == "bytes":
            return _empty_bytes
        found = super().find_class(module, name)
        if name == "_reconstruct":
            return functools.partial(self._reconstruct, found)
        if name == "scalar":
            return functools.partial(self._scalar, found)
        return found

    def _reconstruct(self, reconstruct, subtype, shape, dtype):
        if subtype is not _ArrayType:
            raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
        self._check(math.prod(shape) * np.dtype(dtype).itemsize)
        return reconstruct(np.ndarray, shape, dtype)

    def _scalar(self, scalar, dtype, *data):
        self._check(np.dtype(dtype).itemsize)
        return scalar(dtype, *data)

    def _check(self, size: int) -> None:
        if size > self.limit:
            raise pickle.UnpicklingError(f"it asks for an array of {size:,} bytes in a file of {self.limit:,}")


def _read_batch(path: Path) -> dict:
    return _ArrayUnpickler(path.read_bytes()).load()


class CifarPickles(Dataset):
    """CIFAR-10 or CIFAR-100 from ``root/cifar-10-batches-py`` (or ``root/cifar-100-python``)."""

    def __init__(self, root, dataset: str = "cifar10", train: bool = True, transform: Optional[Callable] = None):
        folder, train_files, test_files, label_key, classes = CIFAR_LAYOUTS[dataset]
        directory = Path(root) / folder
        images, labels = [], []
        for name in train_files if train else test_files:
            path = directory / name
            if not path.is_file():
                raise MissingDataError(f"{dataset}: {path} not found; expected the standard python layout "
                                       f"({folder}/{', '.join(train_files + test_files)}) under --data-dir {root}")
            try:
                batch = _read_batch(path)
                data, batch_labels = np.asarray(batch["data"], dtype=np.uint8), list(batch[label_key])
            except (pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError) as e:
                raise DatasetError(f"{dataset}: {path} is not a CIFAR batch file ({e})") from None
            if data.ndim != 2 or data.shape[1] != 3072 or len(batch_labels) != len(data):
                raise DatasetError(f"{dataset}: {path} holds data of shape {data.shape}; expected N x 3072 "
                                   "with one label per image")
            bad = next((label for label in batch_labels
                        if not (isinstance(label, (int, np.integer)) and 0 <= label < classes)), None)
            if bad is not None:
                raise DatasetError(f"{dataset}: {path} holds the label {bad!r}; expected 0..{classes - 1}")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels += batch_labels
        if not labels:  # found now, not as a division by zero after a whole epoch
            raise DatasetError(f"{dataset}: the {'training' if train else 'test'} files in {directory} hold no images")
        self.images = np.concatenate(images)
        self.targets: List[int] = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index])
        return (self.transform(image) if self.transform else image), self.targets[index]


class Cutout(torch.nn.Module):
    """Zero one ``length`` x ``length`` square at a uniformly random centre, clipped at the borders.

    DeVries & Taylor (2017) as DARTS's ``utils.Cutout`` applies it (always, after normalisation).
    timm's RandomErasing samples the area and aspect instead, so it is not the same augmentation.
    """

    def __init__(self, length: int):
        super().__init__()
        self.length = length

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        y, x = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half = self.length // 2
        image = image.clone()
        image[..., max(0, y - half):min(h, y + half), max(0, x - half):min(w, x + half)] = 0
        return image


def cifar_transforms(mean, std, train: bool, cutout: int = 16) -> Callable:
    """DARTS's CIFAR augmentation: 4-pixel-padded random crop, flip, normalise, cutout."""
    normalize = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if not train:
        return transforms.Compose(normalize)
    return transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), *normalize,
                               *([Cutout(cutout)] if cutout else [])])


def imagenet_train_transform(config: dict) -> Callable:
    """DARTS's ImageNet augmentation: random resized crop, flip, colour jitter (0.4, 0.4, 0.4, 0.2)."""
    return transforms.Compose([
        transforms.RandomResizedCrop(config["input_size"][-1]), transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2), transforms.ToTensor(),
        transforms.Normalize(config["mean"], config["std"])])


@dataclass
class DataSpec:
    """What a training or evaluation run reads."""

    dataset: str
    data_dir: Path
    download: bool = False
    cutout: int = 16


def build_dataset(spec: DataSpec, config: dict, train: bool) -> Dataset:
    """The split of ``spec.dataset`` with the paper's transforms.

    ``config`` is a timm data config (input_size, mean, std, crop_pct, interpolation): evaluation on
    ImageNet-style data resizes and centre-crops by it, as timm's ``create_transform`` does.
    """
    root = Path(spec.data_dir).expanduser()
    if spec.dataset in CIFAR_LAYOUTS:
        if spec.download:
            cls = datasets.CIFAR10 if spec.dataset == "cifar10" else datasets.CIFAR100
            try:
                cls(str(root), train=train, download=True)
            except OSError as e:  # offline (URLError: its reason), or a folder we cannot write
                cause = getattr(e, "reason", None) or e.strerror or e
                raise DatasetError(f"{spec.dataset}: downloading into --data-dir {root} failed ({cause}); check the "
                                   "connection, or put the files there and run without --download") from None
        return CifarPickles(root, spec.dataset, train, cifar_transforms(config["mean"], config["std"], train,
                                                                         spec.cutout))
    if spec.dataset not in ("imagenet", "folder"):
        raise DatasetError(f"unknown dataset {spec.dataset!r}; expected one of {', '.join(IMAGE_SOURCES)}")
    split = root / ("train" if train else "val")
    if not split.is_dir():
        raise MissingDataError(f"{spec.dataset}: {split} not found; expected class folders under {root}/train "
                               f"and {root}/val (--data-dir)")
    eval_keys = ("input_size", "mean", "std", "crop_pct", "interpolation")
    transform = imagenet_train_transform(config) if train else create_transform(**{k: config[k] for k in eval_keys})
    try:
        return datasets.ImageFolder(str(split), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise DatasetError(f"{spec.dataset}: {split} is not a class-folder dataset ({e})") from None


def image_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation in one epoch: a hash, so that nearby triples share nothing."""
    return int.from_bytes(hashlib.blake2b(f"{seed},{epoch},{index}".encode(), digest_size=8).digest(), "little")


class EpochSeeded(Dataset):
    """``dataset`` indexed by (epoch, index), its random transforms drawn from a generator seeded by (seed, epoch,
    index): an image's augmentation in an epoch is the same whichever rank, worker or run loads it, so a run on
    several processes sees the batches one process sees, and a resumed run those of an uninterrupted one.
    The process's own random stream (dropout, drop path) is left where it was."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            # the CPU generator the transforms draw from (torch.manual_seed would seed every device's too: 100x
            # slower, as slow as the transforms themselves)
            torch.default_generator.manual_seed(image_seed(self.seed, epoch, index))
            return self.dataset[index]


class EpochSampler(DistributedSampler):
    """This rank's (epoch, index) keys of one epoch. Training (``shuffle``): ``DistributedSampler``'s order, a
    permutation drawn from seed + epoch, padded with its first indices to a multiple of the ranks, rank r
    taking every W-th from r; so the ranks' batches at step k make up the global batch k of one process
    (the last batch of an epoch may repeat up to W-1 of its first images). Measuring (``shuffle=False``):
    every index exactly once, in order, rank r taking every W-th from r."""

    def __init__(self, dataset: Dataset, seed: int, epoch: int, shuffle: bool):
        super().__init__(dataset, num_replicas=distributed.world_size(), rank=distributed.rank(), shuffle=shuffle,
                         seed=seed)
        self.set_epoch(epoch)
        if not shuffle:
            self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))

    def __iter__(self):
        order = super().__iter__() if self.shuffle else range(self.rank, len(self.dataset), self.num_replicas)
        return ((self.epoch, index) for index in order)


def epoch_loader(dataset: Dataset, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                 num_workers: int = 0) -> DataLoader:
    """This rank's batches of ``dataset`` in ``epoch`` (``EpochSampler``, ``EpochSeeded``). ``batch_size`` is the
    global batch: each rank loads its share (``distributed.split_batch``; a measurement rounds the share up)."""
    share = distributed.split_batch(batch_size) if shuffle else math.ceil(batch_size / distributed.world_size())
    return DataLoader(EpochSeeded(dataset, seed), share, sampler=EpochSampler(dataset, seed, epoch, shuffle),
                      num_workers=num_workers, pin_memory=torch.cuda.is_available(), drop_last=False,
                      generator=torch.Generator())  # its workers' seeds, which nothing uses: not from our stream
