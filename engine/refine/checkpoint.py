"""Checkpoints: everything needed to resume, written atomically, loaded with weights_only=True."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import torch

from engine.errors import UserError
from engine.project.atomic import write_bytes

log = logging.getLogger(__name__)

FORMAT = "avatar-checkpoint"
VERSION = 1


def checkpoint_path(project_root: str | Path) -> Path:
    return Path(project_root) / "checkpoints" / "last.pt"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Serialises to memory first, then one atomic file replace (a kill never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, *, body_model: str, num_frames: int) -> dict:
    """Loads and validates a checkpoint for this project.

    Raises:
        UserError: unreadable, from another version, body model or project.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets one message
        raise UserError(f"checkpoint {path} is unreadable ({e.__class__.__name__}); delete it to start over.") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not an avatar checkpoint.")
    if state.get("version") != VERSION:
        raise UserError(f"checkpoint {path} is from another version (format {state.get('version')}, "
                        f"this version reads {VERSION}); delete it to start over.")
    if state.get("body_model") != body_model:
        raise UserError(f"checkpoint {path} was made with body model {state.get('body_model')!r}, "
                        f"the project uses {body_model!r}.")
    if state.get("num_frames") != num_frames:
        raise UserError(f"checkpoint {path} belongs to a project with {state.get('num_frames')} frames, "
                        f"this one has {num_frames}.")
    return state
