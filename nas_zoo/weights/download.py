"""The checked download of published weights: ``model.safetensors`` from the Hub cache, its sha256 verified.

``timm.create_model(NAME.TAG, pretrained=True)`` and ``hf-hub:`` names come here (``zoo``); publishing them
(the folder format, the card, the upload) is ``hub``.
"""
import hashlib
import re
from pathlib import Path
from typing import Optional

from ..harness.checkpoint import CheckpointError

WEIGHTS_NAME = "model.safetensors"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class WeightsError(CheckpointError):
    """Weights that are not published, cannot be downloaded, or fail their sha256 check."""


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_weights(hub_id: str, sha256: Optional[str] = None, cache_dir=None) -> Path:
    """``model.safetensors`` of ``hub_id`` (``ORG/REPO[@REVISION]``) from the Hub cache, downloading it if needed.

    The file must hash to ``sha256`` (the registry's) or, without one, to the sha256 the Hub names it by.
    A file that does not is removed from the cache and a WeightsError says so. ``HF_HUB_OFFLINE=1`` serves
    the cached file (checked the same way) without touching the network.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = hub_id.partition("@")
    try:
        path = Path(hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision or None, cache_dir=cache_dir,
                                    library_name="nas-zoo"))
    except LocalEntryNotFoundError as e:
        raise WeightsError(f"{hub_id}: {WEIGHTS_NAME} is not in the cache and the Hub cannot be reached ({e})") from None
    except (HfHubHTTPError, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{hub_id}: downloading {WEIGHTS_NAME} failed: {first_line}") from None
    blob = path.resolve()
    expected = sha256 or (blob.name if _SHA256.fullmatch(blob.name) else None)
    if expected is None:
        raise WeightsError(f"{hub_id}: the Hub gives no sha256 for {WEIGHTS_NAME} (not an LFS file), so it cannot "
                           "be checked; record its sha256 in the genotype file's \"weights\"")
    actual = sha256_of(blob)
    if actual != expected:
        for bad in {path, blob}:
            bad.unlink(missing_ok=True)
        raise WeightsError(f"{hub_id}: {WEIGHTS_NAME} fails its sha256 check (expected {expected}, got {actual}): "
                           "the download is corrupted or truncated; it was removed from the cache, so a retry "
                           "downloads it again")
    return path
