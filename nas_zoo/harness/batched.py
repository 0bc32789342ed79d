"""The batched CIFAR data path: a whole split on the training device, augmented one batch at a time.

The per-image pipeline (``data.cifar_transforms``, DARTS ``cnn/utils.py`` ``_data_transforms_cifar10``) runs,
for every image, a 4-pixel zero-padded random 32x32 crop, a horizontal flip with probability 1/2, ToTensor,
Normalize and cutout (DeVries & Taylor 2017: a square of side L centred uniformly anywhere in the image,
clipped at the borders, zeroed after normalisation). Here the split is one uint8 tensor on the device, padded
once, and a batch is one gather (crop and flip together), one normalisation (ToTensor's ``/ 255`` and
Normalize's ``(x - mean) / std`` as torchvision computes them, so bit for bit equal) and one masked fill.

Every random choice of an epoch (the order, then each image's crop offsets, flip and cutout centre) is drawn
at its start on the CPU from one ``torch.Generator``: the same seed gives the same batches on every device,
and the generator's state after an epoch is all a checkpoint needs to continue exactly. The last batch of an
epoch is partial when the batch size does not divide the split, as a DataLoader with ``drop_last=False``.

Under torchrun every rank draws the same choices (the generator is seeded, and restored, alike) and takes its
share of each global batch: every W-th image from its rank, as ``DistributedSampler`` deals them, the epoch
padded with its first images to a multiple of W, as it pads. So the shares of step k make up the batch k of
one process, augmentation included. A test split is dealt the same way, unpadded: each image on one rank.
"""
import math
from typing import Iterator, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import distributed
from .data import CifarPickles

PAD = 4  # RandomCrop(32, padding=4)
SIZE = 32


class Draws(NamedTuple):
    """An epoch's random choices, one row per image in the order it is served."""

    order: torch.Tensor  # (N,) image indices
    offsets: torch.Tensor  # (N, 2) top, left of the crop in the padded image: 0 .. 2 * PAD
    flips: torch.Tensor  # (N,) bool
    centres: torch.Tensor  # (N, 2) row, column of the cutout square's centre: 0 .. SIZE - 1


def draw(n: int, generator: torch.Generator) -> Draws:
    """One epoch's choices for ``n`` images, each uniform and independent of the others (the order: a uniform
    permutation, as DataLoader's RandomSampler)."""
    order = torch.randperm(n, generator=generator)
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    centres = torch.randint(0, SIZE, (n, 2), generator=generator)
    return Draws(order, offsets, flips, centres)


def padded(draws: torch.Tensor, ranks: int) -> torch.Tensor:
    """``draws`` with its first rows repeated at the end up to a multiple of ``ranks`` (DistributedSampler's)."""
    return torch.cat([draws, draws[:-len(draws) % ranks]])


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 as ToTensor then Normalize compute it (``x / 255``, ``- mean``, ``/ std``)."""
    return images.float().div_(255).sub_(mean).div_(std)


def crop_and_flip(padded: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor,
                  flips: torch.Tensor) -> torch.Tensor:
    """The 32x32 crops at ``offsets`` of the images ``index`` of ``padded`` (N, C, H, W), mirrored where
    ``flips`` (a mirrored crop's column j is the crop's column 31 - j): one ``take`` of flat indices, built
    from (B, C), (B, rows) and (B, columns) parts (several times faster on CPU than four broadcast indices)."""
    _, C, H, W = padded.shape
    span = torch.arange(SIZE, device=padded.device)
    planes = (index[:, None] * C + torch.arange(C, device=padded.device)) * (H * W)
    rows = (offsets[:, 0, None] + span) * W
    cols = offsets[:, 1, None] + torch.where(flips[:, None], SIZE - 1 - span, span)
    return padded.view(-1).take((planes[:, :, None] + rows[:, None, :])[..., None] + cols[:, None, None, :])


def cutout(images: torch.Tensor, centres: torch.Tensor, length: int) -> torch.Tensor:
    """Zero, in place, the rows ``cy - L // 2 .. cy + L // 2 - 1`` and columns likewise of each image, clipped
    at the borders: ``data.Cutout`` and DARTS's ``utils.Cutout`` (whose square has side L - 1 for an odd L).
    As DARTS's, by multiplying with a 0/1 mask (a float product: a boolean fill is many times slower on CPU)."""
    half = length // 2
    span = torch.arange(images.shape[-1], device=images.device)
    rows, cols = (((span - centres[:, axis, None] >= -half) & (span - centres[:, axis, None] < half)).float()
                  for axis in (0, 1))
    return images.mul_(1 - rows[:, None, :, None] * cols[:, None, None, :])


class BatchedCifar:
    """A CIFAR split (``CifarPickles``) held on ``device``, iterated as (images, labels) batches.

    With a ``generator`` it is the training split: shuffled, cropped, flipped and cut out (``cutout`` > 0) as
    ``cifar_transforms(train=True)``; without one, the images in order, normalised only (``train=False``).
    """

    def __init__(self, dataset: CifarPickles, batch_size: int, device: torch.device, mean: Sequence[float],
                 std: Sequence[float], generator: Optional[torch.Generator] = None, cutout: int = 0):
        if not isinstance(dataset, CifarPickles):
            raise ValueError("--data-path batched holds CIFAR only; use --data-path torchvision for other datasets")
        images = torch.from_numpy(dataset.images).permute(0, 3, 1, 2)  # the pickles' N x H x W x C
        self.train, self.generator, self.cutout = generator is not None, generator, cutout
        # zero pixels before normalisation, as RandomCrop pads the PIL image
        self.images = (F.pad(images, (PAD,) * 4) if self.train else images).contiguous().to(device)
        self.labels = torch.as_tensor(dataset.targets, dtype=torch.long).to(device)
        self.mean, self.std = (torch.as_tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)
                               for v in (mean, std))
        self.batch_size = batch_size

    def __len__(self) -> int:
        """Batches per epoch on this rank: one per global batch (training), or its share's (a test split)."""
        n, ranks = len(self.labels), distributed.world_size()
        if not self.train:
            return math.ceil(len(range(distributed.rank(), n, ranks)) / self.batch_size)
        return math.ceil(math.ceil(n / ranks) * ranks / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self.labels), self.images.device
        rank, ranks = distributed.rank(), distributed.world_size()
        if not self.train:  # this rank's share: every image once over the ranks
            images, labels = self.images[rank::ranks], self.labels[rank::ranks]
            for start in range(0, len(labels), self.batch_size):
                part = slice(start, start + self.batch_size)
                yield normalize(images[part], self.mean, self.std), labels[part]
            return
        draws = Draws(*(padded(t.to(device), ranks) for t in draw(n, self.generator)))
        for start in range(0, len(draws.order), self.batch_size):
            order, offsets, flips, centres = (t[start:start + self.batch_size][rank::ranks] for t in draws)
            images = normalize(crop_and_flip(self.images, order, offsets, flips), self.mean, self.std)
            yield (cutout(images, centres, self.cutout) if self.cutout else images), self.labels[order]
