"""Datasets and the papers' transforms.

CIFAR-10/100 are read from the standard python layout by our own loader, so that both the official files
and subsets of them load (torchvision's loader insists on the official md5 sums). The batch files are
pickles: they are read with an unpickler that only rebuilds numpy arrays and plain containers, so a
tampered file cannot run code. ImageNet and user datasets are class folders (torchvision's ImageFolder).
"""
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import Dataset
from torchvision import datasets, transforms

CIFAR_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}
DATASETS = ("cifar10", "cifar100", "imagenet", "folder")


class DatasetError(ValueError):
    """A dataset that is missing or not in its expected layout; the message says where we looked."""


class MissingDataError(DatasetError):
    """No dataset where we looked (each command adds how to get one)."""


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and builtin containers only."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict:
    with open(path, "rb") as f:
        return _ArrayUnpickler(f, encoding="latin1").load()


class CifarPickles(Dataset):
    """CIFAR-10 or CIFAR-100 from ``root/cifar-10-batches-py`` (or ``root/cifar-100-python``)."""

    def __init__(self, root, dataset: str = "cifar10", train: bool = True, transform: Optional[Callable] = None):
        folder, train_files, test_files, label_key = CIFAR_LAYOUTS[dataset]
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
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels += batch_labels
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
        raise DatasetError(f"unknown dataset {spec.dataset!r}; expected one of {', '.join(DATASETS)}")
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
