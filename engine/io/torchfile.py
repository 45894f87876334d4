"""Our torch files (checkpoints, priors, prior-training state): a dict tagged with a format name and
version, written atomically, read back with weights_only=True so that opening a file never runs code."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from engine.errors import UserError
from engine.io.atomic import write_bytes


def save(path: str | Path, fmt: str, version: int, data: dict) -> None:
    """Serialises to memory first, then one atomic file replace (a kill never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"format": fmt, "version": version, **data}, buf)
    write_bytes(path, buf.getvalue())


def load(path: str | Path, fmt: str, version: int, *, what: str, kind: str, remedy: str) -> dict:
    """Reads a file written by `save` with this format and version.

    `what` names the file in messages ("checkpoint"), `kind` says what it should be ("an avatar
    checkpoint"), `remedy` what the user can do about a bad one ("delete it to start over").

    Raises:
        UserError: unreadable, not this format, or another version.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets one message
        raise UserError(f"{what} {path} is unreadable ({e.__class__.__name__}); {remedy}.") from e
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise UserError(f"{path} is not {kind}.")
    if data.get("version") != version:
        raise UserError(f"{what} {path} is from another version (format {data.get('version')}, this version reads "
                        f"{version}); {remedy}.")
    return data
