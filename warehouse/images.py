"""Content-addressed file store: images/<sha256[:2]>/<sha256>.png (and embeddings/…/<sha256>.npy).

A file appears under its final name only complete (temp name, fsync, rename), so a reader or a
later commit never sees half an image; writing the same bytes twice is a no-op.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from warehouse.publish import fsync_path
from warehouse.staging import crash_point

IMAGE_DIR = "images"
EMBEDDING_DIR = "embeddings"
TMP_PREFIX = ".tmp-"


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W, 3] array (deterministic: no timestamps in the file)."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def relative_path(sha256: str, base: str = IMAGE_DIR, suffix: str = ".png") -> str:
    return f"{base}/{sha256[:2]}/{sha256}{suffix}"


def put_bytes(root: Path, data: bytes, base: str = IMAGE_DIR, suffix: str = ".png") -> tuple[str, str]:
    """Store `data`; returns (path relative to root, sha256). Atomic and idempotent."""
    sha = hashlib.sha256(data).hexdigest()
    rel = relative_path(sha, base, suffix)
    final = Path(root) / rel
    if final.exists() and final.stat().st_size == len(data):
        return rel, sha
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{sha}.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        crash_point("mid-image-write")
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_path(final.parent)
    return rel, sha


def put_png(root: Path, image: np.ndarray) -> tuple[str, str]:
    """Encode and store one image; returns (relative path, sha256)."""
    return put_bytes(root, encode_png(image))


def put_array(root: Path, array: np.ndarray) -> tuple[str, str]:
    """Store a float32 array as .npy under embeddings/; returns (relative path, sha256)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return put_bytes(root, buf.getvalue(), EMBEDDING_DIR, ".npy")


def load_array(root: Path, rel: str) -> np.ndarray:
    return np.load(Path(root) / rel, allow_pickle=False)


def verify(root: Path, rel: str, sha256: str) -> bool:
    """True if the file exists and its content hashes to `sha256`."""
    path = Path(root) / rel
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def remove_temp_files(root: Path) -> int:
    """Delete temp files left by killed writers; returns how many."""
    stale = [p for d in (IMAGE_DIR, EMBEDDING_DIR) for p in (Path(root) / d).glob(f"*/{TMP_PREFIX}*")]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)
