"""Checkpoints: everything needed to resume, written atomically, loaded with weights_only=True."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.errors import UserError
from engine.io import torchfile

log = logging.getLogger(__name__)

FORMAT = "avatar-checkpoint"
VERSION = 1


def checkpoint_path(project_root: str | Path) -> Path:
    return Path(project_root) / "checkpoints" / "last.pt"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Written atomically (a kill never leaves half a file)."""
    torchfile.save(path, FORMAT, VERSION, state)


def load_checkpoint(path: str | Path, *, body_model: str, num_frames: int) -> dict:
    """Loads and validates a checkpoint for this project.

    Raises:
        UserError: unreadable, from another version, body model or project.
    """
    state = torchfile.load(path, FORMAT, VERSION, what="checkpoint", kind="an avatar checkpoint",
                           remedy="delete it to start over")
    if state.get("body_model") != body_model:
        raise UserError(f"checkpoint {path} was made with body model {state.get('body_model')!r}, "
                        f"the project uses {body_model!r}.")
    if state.get("num_frames") != num_frames:
        raise UserError(f"checkpoint {path} belongs to a project with {state.get('num_frames')} frames, "
                        f"this one has {num_frames}.")
    return state
