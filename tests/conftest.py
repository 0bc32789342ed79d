from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture
def shared_reference() -> Path:
    path = SHARED / "reference"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (a fresh clone without ../shared)")
    return path


@pytest.fixture
def tiny_cifar(tmp_path) -> Path:
    """A CIFAR-10 folder in the standard python layout holding 64 random images (5 train batches, 1 test)."""
    import pickle

    import numpy as np

    root = tmp_path / "cifar"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, 16).tolist()
        batch = {"data": rng.integers(0, 256, (16, 3072), dtype=np.uint8), "labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root
