import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pytest_configure(config):
    """Under pytest-xdist (``-n N``) each worker gets its share of the cores as PyTorch's threads, through
    OMP_NUM_THREADS, before torch is imported (it reads the variable then; the commands' default honours it, and
    the subprocesses inherit it): N workers of one thread per core each, not N times as many threads as cores."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // int(workers)))


@pytest.fixture(autouse=True)
def _restore_threads():
    """Commands set PyTorch's thread count (--threads); each test starts from the same one."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_reference() -> Path:
    path = SHARED / "reference"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (a fresh clone without ../shared)")
    return path


@pytest.fixture
def loopback_hub(tmp_path, monkeypatch):
    """A Hub on 127.0.0.1 (tests/loopback_hub.py) that huggingface_hub talks to, with the cache in tmp_path.

    huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so the fixture sets
    both the variables (for subprocesses) and the constants read from them (for this process).
    """
    from huggingface_hub import constants

    from tests.loopback_hub import LoopbackHub

    with LoopbackHub() as hub:
        cache = tmp_path / "hf-home" / "hub"
        for key, value in {"HF_ENDPOINT": hub.url, "HF_HOME": str(cache.parent), "HF_TOKEN": "hf_loopback",
                           "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        hub.cache = cache
        yield hub


@pytest.fixture
def tiny_cifar(tmp_path) -> Path:
    return write_tiny_cifar(tmp_path)


def write_tiny_cifar(directory: Path, images: int = 16) -> Path:
    """A CIFAR-10 folder in the standard python layout: 5 train batches and a test batch of ``images`` images
    each, random pixels but for the red channel, which encodes the label (something to learn)."""
    import pickle

    import numpy as np

    root = directory / "cifar"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, images)
        data = rng.integers(0, 256, (images, 3072), dtype=np.uint8)
        data[:, :1024] = (labels[:, None] * 25).astype(np.uint8)
        batch = {"batch_label": name, "labels": labels.tolist(), "data": data}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


TINY_IMAGENET_CLASSES = 4


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    """DATA/train/<class>/*.png: 4 classes of 40 random 16x16 images (the search crops them to 224)."""
    import torch
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet")
    generator = torch.Generator().manual_seed(0)
    for c in range(TINY_IMAGENET_CLASSES):
        folder = root / "train" / f"n0000000{c}"
        folder.mkdir(parents=True)
        for i in range(40):
            pixels = torch.randint(0, 256, (16, 16, 3), generator=generator, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root
