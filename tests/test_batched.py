"""The batched CIFAR data path (harness/batched.py) against the per-image pipeline it replaces
(``data.cifar_transforms``: torchvision's RandomCrop, RandomHorizontalFlip, ToTensor, Normalize, then our Cutout):
the same images for the same choices, the same law of choices, reproducible and resumable."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from nas_zoo.harness.batched import BatchedCifar, crop_and_flip, cutout, draw, normalize
from nas_zoo.harness.data import CifarPickles, Cutout, cifar_transforms
from nas_zoo.registry.zoo import DATASET_STATS

MEAN, STD = DATASET_STATS["cifar10"]
CPU = torch.device("cpu")
STATS = tuple(torch.tensor(v).view(1, 3, 1, 1) for v in (MEAN, STD))


@pytest.fixture
def split(tiny_cifar):
    return CifarPickles(tiny_cifar, "cifar10", train=True)


def padded(split, index):
    return TF.pad(torch.from_numpy(split.images[index]).permute(2, 0, 1)[None], [4])


def test_the_per_image_pipeline_gives_the_same_images_for_the_same_choices(split):
    """Run data.cifar_transforms on each image from a seed, read the choices it made by drawing from the same
    seed in torchvision's order (RandomCrop: top, left; flip: rand < 0.5; Cutout: row, column), make the
    same choices in the batched path: bit for bit the same tensor."""
    transform = cifar_transforms(MEAN, STD, train=True, cutout=16)
    made = []
    for i in range(len(split)):
        torch.manual_seed(i)
        expected = transform(Image.fromarray(split.images[i]))
        torch.manual_seed(i)
        top, left = (int(torch.randint(0, 9, (1,))) for _ in range(2))
        flip = bool(torch.rand(1) < 0.5)
        centre = [int(torch.randint(32, ())) for _ in range(2)]
        images = crop_and_flip(padded(split, i), torch.tensor([0]), torch.tensor([[top, left]]), torch.tensor([flip]))
        got = cutout(normalize(images, *STATS), torch.tensor([centre]), 16)[0]
        assert torch.equal(got, expected), (i, top, left, flip, centre)
        made.append((top, left, flip))
    tops, lefts, flips = zip(*made)  # the seeds covered both flips and crops at both borders
    assert set(flips) == {False, True} and {0, 8} <= set(tops) | set(lefts)


@pytest.mark.parametrize("length", [16, 15, 1])
def test_cutout_is_data_cutout_at_every_centre(length, monkeypatch):
    """data.Cutout (DARTS's utils.Cutout) and the batched cutout zero the same pixels at all 1,024 centres,
    clipped at the borders; an odd side L zeroes L - 1 rows, as DARTS's."""
    centres = torch.cartesian_prod(torch.arange(32), torch.arange(32))
    drawn = iter(centres.flatten().tolist())
    monkeypatch.setattr(torch, "randint", lambda high, size: torch.tensor(next(drawn)))  # Cutout's draws
    images = torch.rand(len(centres), 3, 32, 32) + 0.5  # no zeros of their own
    expected = torch.stack([Cutout(length)(image) for image in images])
    got = cutout(images.clone(), centres, length)
    assert torch.equal(got, expected)
    assert (got[0, 0] == 0).sum() == (length // 2) ** 2  # centre (0, 0): the square clipped to its quarter


def test_evaluation_batches_are_the_normalised_images(split):
    """Without augmentation the batched path is ToTensor + Normalize exactly, in order, the last batch partial."""
    transform = cifar_transforms(MEAN, STD, train=False)
    batches = list(BatchedCifar(split, 24, CPU, MEAN, STD))
    assert [len(labels) for _, labels in batches] == [24, 24, 24, 8]
    expected = torch.stack([transform(Image.fromarray(image)) for image in split.images])
    assert torch.equal(torch.cat([images for images, _ in batches]), expected)
    assert torch.cat([labels for _, labels in batches]).tolist() == split.targets


def chi_square_bound(cells: int) -> float:
    """A chi-square statistic's mean plus 6 of its standard deviations: exceeded by a uniform sample with a
    probability under 1e-5 (for the cell counts here)."""
    return (cells - 1) + 6 * math.sqrt(2 * (cells - 1))


def chi_square(values: torch.Tensor, cells: int) -> float:
    counts = torch.bincount(values, minlength=cells).double()
    expected = len(values) / cells
    return float(((counts - expected) ** 2 / expected).sum())


def test_the_choices_are_uniform_and_independent():
    n = 81 * 300
    draws = draw(n, torch.Generator().manual_seed(0))
    assert torch.equal(draws.order.sort().values, torch.arange(n))  # a permutation
    offsets = draws.offsets[:, 0] * 9 + draws.offsets[:, 1]  # joint cell of (top, left) in 9 x 9
    assert draws.offsets.min() == 0 and draws.offsets.max() == 8
    assert chi_square(offsets, 81) < chi_square_bound(81)
    centres = draws.centres[:, 0] * 32 + draws.centres[:, 1]
    assert chi_square(centres, 32 * 32) < chi_square_bound(32 * 32)
    assert abs(draws.flips.double().mean() - 0.5) < 6 * math.sqrt(0.25 / n)
    # crop, flip and cutout independent of each other: uniform over the joint cells too
    joint = (offsets * 2 + draws.flips.long()) * 4 + draws.centres[:, 0] // 8
    assert chi_square(joint, 81 * 2 * 4) < chi_square_bound(81 * 2 * 4)
    narrow = torch.randint(0, 8, (n, 2), generator=torch.Generator().manual_seed(0))  # an 8 x 8 crop range
    assert chi_square(narrow[:, 0] * 9 + narrow[:, 1], 81) > chi_square_bound(81)  # the test does reject it


def pixel_moments(images: torch.Tensor):
    """Per-pixel mean and mean square, and their standard errors."""
    images = images.double()
    moments = [images.mean(0), (images ** 2).mean(0)]
    errors = [images.std(0) / math.sqrt(len(images)), (images ** 2).std(0) / math.sqrt(len(images))]
    return moments, errors


def largest_z(a, b) -> float:
    (moments_a, errors_a), (moments_b, errors_b) = pixel_moments(a), pixel_moments(b)
    z = [(ma - mb).abs() / (ea ** 2 + eb ** 2).sqrt().clamp_min(1e-12)
         for ma, mb, ea, eb in zip(moments_a, moments_b, errors_a, errors_b)]
    return float(torch.stack(z).max())


def repeated(image: np.ndarray, n: int) -> CifarPickles:
    """One image, ``n`` times, as a CIFAR split."""
    split = CifarPickles.__new__(CifarPickles)
    split.images, split.targets = np.repeat(image[None], n, axis=0), [0] * n
    return split


def test_per_pixel_moments_match_torchvisions_pipeline(split, monkeypatch):
    """One image through both pipelines 4,000 times: every pixel's mean and mean square agree within 5.5
    standard errors (6,144 comparisons; a chance failure has a probability near 2e-4). The same comparison
    rejects the batched path with its flips turned off: the test can tell."""
    n, image = 4000, split.images[3]
    torch.manual_seed(0)
    transform = cifar_transforms(MEAN, STD, train=True, cutout=16)
    reference = torch.stack([transform(Image.fromarray(image)) for _ in range(n)])
    batched = torch.cat([x for x, _ in BatchedCifar(repeated(image, n), 500, CPU, MEAN, STD,
                                                     torch.Generator().manual_seed(1), 16)])
    assert largest_z(batched, reference) < 5.5
    import nas_zoo.harness.batched as batched_module
    real_draw = batched_module.draw
    monkeypatch.setattr(batched_module, "draw", lambda n, g: real_draw(n, g)._replace(flips=torch.zeros(n, dtype=bool)))
    unflipped = torch.cat([x for x, _ in BatchedCifar(repeated(image, n), 500, CPU, MEAN, STD,
                                                       torch.Generator().manual_seed(1), 16)])
    assert largest_z(unflipped, reference) > 5.5


def epoch(loader):
    return [(images.clone(), labels.clone()) for images, labels in loader]


def test_seeded_reproducible_and_resumable(split):
    """The same seed gives the same epochs; a generator restored from its state after epoch 1 (as a checkpoint
    holds it) gives the uninterrupted run's epoch 2; every image once per epoch, the last batch partial."""
    generator = torch.Generator().manual_seed(5)
    loader = BatchedCifar(split, 32, CPU, MEAN, STD, generator, cutout=16)
    assert len(loader) == 3
    first = epoch(loader)
    saved = generator.get_state()
    second = epoch(loader)
    assert [len(labels) for _, labels in first] == [32, 32, 16]
    assert sorted(torch.cat([labels for _, labels in first]).tolist()) == sorted(split.targets)

    again = BatchedCifar(split, 32, CPU, MEAN, STD, torch.Generator().manual_seed(5), cutout=16)
    resumed = BatchedCifar(split, 32, CPU, MEAN, STD, torch.Generator(), cutout=16)
    resumed.generator.set_state(saved)
    for a, b in zip(first + second, epoch(again) + epoch(resumed)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(first[0][0], second[0][0])  # each epoch draws anew


def test_batches_follow_the_drawn_choices(split):
    """The loader serves, in order, the images ``draw`` chose with their crops, flips and cutouts."""
    loader = BatchedCifar(split, 16, CPU, MEAN, STD, torch.Generator().manual_seed(2), cutout=16)
    images, labels = next(iter(loader))
    d = draw(len(split), torch.Generator().manual_seed(2))
    pad = TF.pad(torch.from_numpy(split.images).permute(0, 3, 1, 2), [4])
    expected = cutout(normalize(crop_and_flip(pad, d.order[:16], d.offsets[:16], d.flips[:16]), *STATS),
                      d.centres[:16], 16)
    assert torch.equal(images, expected) and labels.tolist() == [split.targets[i] for i in d.order[:16]]


def test_other_datasets_are_refused():
    with pytest.raises(ValueError, match="--data-path batched holds CIFAR only; use --data-path torchvision"):
        BatchedCifar(object(), 16, CPU, MEAN, STD)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_same_batches_on_the_gpu(split):
    """The choices are drawn on the CPU: the GPU serves the CPU's batches (to float rounding)."""
    cpu = epoch(BatchedCifar(split, 32, CPU, MEAN, STD, torch.Generator().manual_seed(0), cutout=16))
    gpu = epoch(BatchedCifar(split, 32, torch.device("cuda"), MEAN, STD, torch.Generator().manual_seed(0), 16))
    assert gpu[0][0].device.type == "cuda"
    for (a, x), (b, y) in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a)
        assert torch.equal(y.cpu(), x)
