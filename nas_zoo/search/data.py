"""The data of a search: the part of the training set that trains the weights and the part that trains alpha.

CIFAR (DARTS ``train_search.py``): the first ``train_portion`` of the training set trains the weights, the
rest alpha, both with crop + flip and no cutout.

ImageNet (PC-DARTS Sec. 4.1 and ``imagenet_data_sample.py``, shared by BNAS-v2): from every class of the
training set, 10% of the images train the weights and 2.5% train alpha (``imagenet_sample``; EDNAS splits
all of it 80/20). The authors copy a sample drawn with replacement into new folders; we draw one seeded
permutation per class (without replacement, so the two parts are disjoint), copy nothing and record the
drawn indices in the search record. Both parts get
the authors' search transform: random resized crop to 224, flip, normalise.
"""
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from ..harness.data import CIFAR_LAYOUTS, CifarPickles, DatasetError, cifar_transforms
from ..registry.zoo import DATASET_STATS, NUM_CLASSES
from .algorithm import SearchConfig

SEARCH_DATASETS = (*CIFAR_LAYOUTS, "imagenet")


@dataclass
class SearchData:
    train: Dataset  # trains the weights
    valid: Dataset  # trains alpha (and measures the supernet)
    num_classes: int
    sample: Optional[Dict[str, Any]] = None  # ImageNet: what was drawn, for the search record


def search_data(config: SearchConfig) -> SearchData:
    if config.dataset == "imagenet":
        return imagenet_sample(config)
    if config.dataset not in CIFAR_LAYOUTS:
        raise DatasetError(f"search supports {', '.join(SEARCH_DATASETS)}; got --dataset {config.dataset!r}")
    mean, std = DATASET_STATS[config.dataset]
    data = CifarPickles(Path(config.data_dir).expanduser(), config.dataset, train=True,
                        transform=cifar_transforms(mean, std, train=True, cutout=0))
    split = int(math.floor(config.train_portion * len(data)))
    if split < 1 or split >= len(data):
        raise DatasetError(f"{config.dataset}: {len(data)} training images cannot be split at "
                           f"--train-portion {config.train_portion}")
    return SearchData(Subset(data, range(split)), Subset(data, range(split, len(data))), NUM_CLASSES[config.dataset])


def imagenet_sample(config: SearchConfig) -> SearchData:
    """``config.imagenet_sample`` (10% and 2.5%) of every class of ``DATA_DIR/train`` (class folders), drawn
    with ``config.seed``."""
    root = Path(config.data_dir).expanduser() / "train"
    if not root.is_dir():
        raise DatasetError(f"imagenet: {root} not found; expected class folders under {root} (--data-dir)")
    mean, std = DATASET_STATS["imagenet"]
    transform = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(mean, std)])
    try:
        data = datasets.ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:
        raise DatasetError(f"imagenet: {root} is not a class-folder dataset ({e})") from None
    images = defaultdict(list)
    for index, target in enumerate(data.targets):
        images[target].append(index)
    generator = torch.Generator().manual_seed(config.seed)
    weights_share, arch_share = config.imagenet_sample
    weights, arch = [], []
    for target, indices in sorted(images.items()):
        n_weights = max(1, round(weights_share * len(indices)))
        n_arch = max(1, round(arch_share * len(indices)))
        if n_weights + n_arch > len(indices):
            raise DatasetError(f"imagenet: class {data.classes[target]!r} has {len(indices)} image(s), too few "
                               "to give both the weights and alpha one")
        drawn = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        weights += drawn[:n_weights]
        arch += drawn[n_weights:n_weights + n_arch]
    weights, arch = sorted(weights), sorted(arch)
    sample = {"images": len(data), "classes": len(data.classes), "seed": config.seed,
              "weights_share": weights_share, "arch_share": arch_share,
              "weights": weights, "arch": arch}
    return SearchData(Subset(data, weights), Subset(data, arch), len(data.classes), sample)
