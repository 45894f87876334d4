"""Atomic file writes: write a temporary file beside the target, fsync, then os.replace.

A crash mid-write leaves the old file (or none), never a half-written one.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from engine.errors import UserError

# mkstemp creates 0600 files; give finished files the usual permissions instead.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@contextmanager
def atomic_path(path: str | Path):
    """Yields a temporary path in the target's folder; on success it replaces `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())


def save_npy(path: str | Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    write_bytes(path, buf.getvalue())


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Writes uint8 [H, W] or [H, W, 3] RGB (or float in [0, 1]) as PNG."""
    import cv2

    img = image
    if img.dtype != np.uint8:
        img = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    if img.ndim == 3:
        img = img[..., ::-1]  # OpenCV wants BGR
    ok, enc = cv2.imencode(Path(path).suffix or ".png", img)
    if not ok:
        raise OSError(f"could not encode {path}")
    write_bytes(path, enc.tobytes())


def read_image(path: str | Path) -> np.ndarray:
    """Reads an image as uint8 RGB [H, W, 3] (or [H, W] for single-channel files)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"cannot read image {path}")
    if img.ndim == 3:
        img = img[..., :3][..., ::-1].copy()
    return img


@contextmanager
def staged_folder(target: str | Path, overwrite: bool = False):
    """Builds a whole output folder in a hidden sibling, then swaps it in.

    The existing folder (if `overwrite`) is only removed after the new one is complete, so a
    failure or a cancel leaves what was there untouched.
    """
    target = Path(target)
    stage = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        stage.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"cannot create {target}: {e.strerror or e}.") from e
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    os.replace(stage, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
