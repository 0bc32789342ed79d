"""The papers' evaluation (re-training) recipes, as their training scripts set them.

CIFAR: DARTS ``cnn/train.py`` (and the copies in GDAS, P-DARTS, PC-DARTS, EDNAS, BNASv2 ``train_b.py``);
ImageNet: DARTS ``cnn/train_imagenet.py``, P-DARTS / PC-DARTS ``train_imagenet.py`` (linear schedule,
PC-DARTS's 5-epoch warm-up for batches over 256), BNASv2 ``train_imagenet_b.py``. ``networks.md`` in the
project's reference notes lists the sources. Every field can be overridden from the CLI or a JSON file.
"""
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ..registry.genotype import Genotype
from .data import CIFAR_LAYOUTS
from .execution import PRECISIONS


# A field's type -> the values it takes (an integer is a number) and their name in messages.
TYPES = {int: int, Optional[int]: int, float: (int, float), str: str, bool: bool, Optional[bool]: bool}
NAMES = {int: "an integer", (int, float): "a number", str: "a string", bool: "true or false"}


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Names follow the original scripts' flags (``--batch_size`` -> ``batch_size``)."""

    epochs: int = 600
    batch_size: int = 96
    learning_rate: float = 0.025
    lr_scheduler: str = "cosine"  # cosine | step (x gamma every decay_period epochs) | linear
    gamma: float = 0.97
    decay_period: int = 1
    warmup_epochs: int = 0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    label_smooth: float = 0.0
    auxiliary_weight: float = 0.4  # 0 trains without the auxiliary head
    drop_path_prob: float = 0.2
    cutout_length: int = 16  # 0 disables cutout
    init_channels: int = 36
    layers: int = 20
    en_layers: Optional[int] = None  # the broad network's enhancement cells (BNASv2 train_b.py); None: its 2
    seed: int = 0
    num_workers: int = 2
    deterministic: bool = False
    data_path: str = "batched"  # CIFAR on the training device (harness/batched.py) | torchvision: a DataLoader
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (harness/execution.py); auto: bf16 or fp16 on GPUs
    channels_last: Optional[bool] = None  # None: on GPUs
    compile: bool = False  # torch.compile the network's parts between drop paths
    sync_bn: bool = False  # under torchrun, batch norm over the whole batch instead of each process's share

    def __post_init__(self):
        for f in fields(self):  # a JSON file or a checkpoint can hold anything: "3", NaN, 1e400
            value, kind = getattr(self, f.name), TYPES[f.type]
            if value is None and f.default is None:  # unset: the network's own (en_layers)
                continue
            if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
                raise ValueError(f"{f.name} must be {NAMES[kind]}, got {value!r}")
            if f.type is float and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        if self.lr_scheduler not in ("cosine", "step", "linear"):
            raise ValueError(f"lr_scheduler must be cosine, step or linear, got {self.lr_scheduler!r}")
        if self.data_path not in ("batched", "torchvision"):
            raise ValueError(f"data_path must be batched or torchvision, got {self.data_path!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "init_channels", "layers", "decay_period", "en_layers"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("learning_rate", "gamma", "momentum", "weight_decay", "grad_clip", "auxiliary_weight",
                     "cutout_length", "warmup_epochs", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        for name in ("label_smooth", "drop_path_prob"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (0-based), set at its start as the original scripts do."""
        lr0 = self.learning_rate
        if epoch < self.warmup_epochs:
            return lr0 * (epoch + 1) / self.warmup_epochs
        if self.lr_scheduler == "cosine":  # CosineAnnealingLR(optimizer, epochs), eta_min 0
            return 0.5 * lr0 * (1 + math.cos(math.pi * epoch / self.epochs))
        if self.lr_scheduler == "step":  # StepLR(decay_period, gamma)
            return lr0 * self.gamma ** (epoch // self.decay_period)
        # P-DARTS / PC-DARTS adjust_lr: linear to zero, with a smaller slope over the last 5 epochs
        if self.epochs - epoch > 5:
            return lr0 * (self.epochs - 5 - epoch) / max(1, self.epochs - 5)
        return lr0 * (self.epochs - epoch) / (max(1, self.epochs - 5) * 5)

    def override(self, values: Mapping[str, Any]) -> "TrainConfig":
        """A copy with ``values`` set (None values are ignored); unknown names are an error."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


CIFAR = dict(epochs=600, batch_size=96, learning_rate=0.025, lr_scheduler="cosine", weight_decay=3e-4,
             label_smooth=0.0, cutout_length=16, init_channels=36, layers=20, auxiliary_weight=0.4)
IMAGENET = dict(epochs=250, batch_size=128, learning_rate=0.1, lr_scheduler="step", gamma=0.97, weight_decay=3e-5,
                label_smooth=0.1, cutout_length=0, init_channels=48, layers=14, auxiliary_weight=0.4,
                drop_path_prob=0.0)
#: Per paper family: changes to the CIFAR and ImageNet recipes above.
RECIPES = {
    "darts": {"cifar": dict(drop_path_prob=0.2), "imagenet": {}},
    "gdas": {"cifar": dict(drop_path_prob=0.2), "imagenet": {}},
    "pdarts": {"cifar": dict(batch_size=128, drop_path_prob=0.3),
               "imagenet": dict(batch_size=256, lr_scheduler="linear")},
    "pc_darts": {"cifar": dict(batch_size=128, drop_path_prob=0.3),
                 "imagenet": dict(batch_size=1024, learning_rate=0.5, lr_scheduler="linear", warmup_epochs=5)},
    "ednas": {"cifar": dict(batch_size=128, drop_path_prob=0.2), "imagenet": dict(batch_size=200)},
    "bnasv2": {"cifar": dict(batch_size=128, drop_path_prob=0.3, auxiliary_weight=0.0, init_channels=48, layers=6),
               "imagenet": dict(batch_size=256, lr_scheduler="cosine", auxiliary_weight=0.0, init_channels=44,
                                layers=6)},
}


def paper_recipe(genotype: Genotype, family: str, dataset: str, network: str) -> TrainConfig:
    """The paper's recipe for ``genotype`` on ``dataset``; its evaluation setting fixes C, layers, drop path."""
    imagenet = dataset in ("imagenet", "folder") and network.endswith("imagenet")
    base = dict(IMAGENET if imagenet else CIFAR)
    base.update(RECIPES.get(family, RECIPES["darts"])["imagenet" if imagenet else "cifar"])
    base["data_path"] = "batched" if dataset in CIFAR_LAYOUTS else "torchvision"  # batched: CIFAR only
    setting = genotype.evaluation(dataset, network) or {}
    for key, field_name in (("C", "init_channels"), ("layers", "layers"), ("enhancement_layers", "en_layers"),
                            ("drop_path", "drop_path_prob"), ("auxiliary_weight", "auxiliary_weight")):
        if key in setting:
            base[field_name] = setting[key]
    return TrainConfig(**base)


def read_config_file(path: Optional[Path]) -> Dict[str, Any]:
    """Overrides from a JSON file of TrainConfig fields (``{"epochs": 50, "batch_size": 64}``)."""
    if path is None:
        return {}
    try:
        values = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object of training fields")
    return {k.replace("-", "_"): v for k, v in values.items()}
