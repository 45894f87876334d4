"""Reading and writing project folders (format documented in engine/project/__init__.py)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.body.base import BodyParams
from engine.errors import UserError
from engine.geometry.camera import Camera
from engine.io import atomic

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
HELD_OUT_EVERY = 5
SCENE_PROJECT = "project"  # a `synth` scene folder holds its project here (engine/synth/scene.py)


def held_out_frames(num_frames: int) -> list[int]:
    """Every 5th frame (4, 9, 14, ...) is held out for evaluation."""
    return [i for i in range(num_frames) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]


def check_output_file(path: str | Path, suffix: str, what: str, overwrite: bool) -> Path:
    """Validates a single output file before any work starts: its suffix, an existing file (without
    `overwrite`) and its folder.

    Raises:
        UserError: naming the first problem.
    """
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise UserError(f"{what} is written as {suffix}: the output file must end in {suffix} (got {path.name!r}).")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite to replace it.")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist.")
    return path


def check_output_dir(path: str | Path, overwrite: bool) -> Path:
    """Validates an output folder before any work starts.

    Raises:
        UserError: it exists (without `overwrite`), is a file, or its parent is not writable.
    """
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder.")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise UserError(f"{path} already exists and is not empty; choose another folder or pass --overwrite.")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create {path}: {parent} is not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {parent} (permission denied).")
    return path


def resolve_project_dir(path: str | Path) -> Path:
    """The project a user means by `path`: the folder itself, or the project inside a scene folder that
    `synth` made (OUT/project) when OUT is not a project itself. Anything else is returned unchanged, for
    `Project.open` to explain."""
    path = Path(path).expanduser()
    inner = path / SCENE_PROJECT
    if not (path / "project.json").exists() and (inner / "project.json").is_file():
        log.info("using the project %s inside the scene folder %s", inner, path)
        return inner
    return path


@dataclass
class Project:
    """An opened project folder (metadata loaded; frames read on demand)."""

    root: Path
    meta: dict = field(default_factory=dict)

    # ---- creation ---------------------------------------------------------------------------
    @staticmethod
    def create(root: str | Path, *, body_model: str, num_frames: int, width: int, height: int, fps: float,
               source: dict, ground_truth: str | None = None) -> Project:
        root = Path(root)
        (root / "frames").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        meta = {
            "schema": SCHEMA_VERSION,
            "kind": "avatar-project",
            "body_model": body_model,
            "num_frames": num_frames,
            "width": width,
            "height": height,
            "fps": fps,
            "held_out": held_out_frames(num_frames),
            "source": source,
        }
        if ground_truth is not None:
            meta["ground_truth"] = ground_truth
        project = Project(root, meta)
        project.save_meta()
        return project

    def save_meta(self) -> None:
        atomic.write_json(self.root / "project.json", self.meta)

    # ---- opening ----------------------------------------------------------------------------
    @staticmethod
    def open(root: str | Path) -> Project:
        """Opens and validates a project folder.

        Raises:
            UserError: not a project, a newer schema, or missing parts.
        """
        root = Path(root).expanduser()
        if not root.is_dir():
            raise UserError(f"{root} is not a folder.")
        meta_path = root / "project.json"
        if not meta_path.is_file():
            inner = root / SCENE_PROJECT
            hint = f"; did you mean {inner}?" if (inner / "project.json").is_file() else "."
            raise UserError(f"{root} is not a project folder (no project.json){hint}")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{meta_path} is unreadable or corrupt: {e}") from e
        if not isinstance(meta, dict) or meta.get("kind") != "avatar-project":
            raise UserError(f"{meta_path} is not an avatar project file.")
        schema = meta.get("schema")
        if not isinstance(schema, int) or schema > SCHEMA_VERSION:
            raise UserError(f"{root} was written by a newer version (schema {schema}); this version reads schema {SCHEMA_VERSION}.")
        project = Project(root, meta)
        for name in ("frames", "masks", "cameras.json", "body.npz"):
            if not (root / name).exists():
                raise UserError(f"{root} is incomplete: {name} is missing.")
        if project.num_frames <= 0:
            raise UserError(f"{root} has no frames.")
        return project

    # ---- accessors --------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return int(self.meta["num_frames"])

    @property
    def body_model(self) -> str:
        return str(self.meta["body_model"])

    @property
    def held_out(self) -> list[int]:
        return list(self.meta.get("held_out", []))

    @property
    def train_frames(self) -> list[int]:
        held = set(self.held_out)
        return [i for i in range(self.num_frames) if i not in held]

    @property
    def ground_truth_dir(self) -> Path | None:
        gt = self.meta.get("ground_truth")
        return (self.root / gt).resolve() if gt else None

    def frame_path(self, i: int) -> Path:
        return self.root / "frames" / f"{i:06d}.png"

    def mask_path(self, i: int) -> Path:
        return self.root / "masks" / f"{i:06d}.png"

    def frame(self, i: int) -> np.ndarray:
        """RGB float32 [H, W, 3] in [0, 1]."""
        return atomic.read_image(self.frame_path(i)).astype(np.float32) / 255.0

    def mask(self, i: int) -> np.ndarray:
        """bool [H, W]."""
        m = atomic.read_image(self.mask_path(i))
        return (m if m.ndim == 2 else m[..., 0]) > 127

    def write_frame(self, i: int, rgb: np.ndarray) -> None:
        atomic.write_image(self.frame_path(i), rgb)

    def write_mask(self, i: int, mask: np.ndarray) -> None:
        atomic.write_image(self.mask_path(i), mask.astype(np.uint8) * 255)

    def cameras(self) -> list[Camera]:
        data = json.loads((self.root / "cameras.json").read_text())
        return [Camera.from_dict(c) for c in data["frames"]]

    def write_cameras(self, cameras: list[Camera]) -> None:
        atomic.write_json(self.root / "cameras.json", {"frames": [c.to_dict() for c in cameras]})

    def body(self) -> BodyParams:
        with np.load(self.root / "body.npz") as d:
            return BodyParams.from_numpy(d)

    def keypoints(self) -> np.ndarray | None:
        """The detected 2D keypoints [N, K, 3] (x, y, confidence), or None (synthetic projects have none)."""
        path = self.root / "keypoints.npy"
        return np.load(path, allow_pickle=False) if path.exists() else None

    def write_body(self, params: BodyParams) -> None:
        atomic.save_npz(self.root / "body.npz", model=np.array(self.body_model), **params.to_numpy())
