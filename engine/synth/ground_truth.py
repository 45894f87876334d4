"""Reading a synthetic scene's ground truth (layout in engine/synth/scene.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.body.base import BodyParams
from engine.errors import UserError
from engine.io.atomic import read_image


@dataclass
class GroundTruth:
    root: Path
    body: BodyParams
    canonical_vertices: np.ndarray  # [V, 3]
    faces: np.ndarray  # [F, 3]
    colors: np.ndarray  # [V, 3]
    weights: np.ndarray  # [V, J]
    background: np.ndarray  # [H, W, 3] float in [0, 1]
    scene: dict
    _posed_path: Path

    @staticmethod
    def load(root: str | Path) -> GroundTruth:
        root = Path(root)
        try:
            with np.load(root / "body.npz") as d:
                body = BodyParams.from_numpy(d)
            with np.load(root / "clothed_canonical.npz") as d:
                cv, f, c, w = d["vertices"], d["faces"].astype(np.int64), d["colors"], d["weights"]
            bg = read_image(root / "background.png").astype(np.float32) / 255.0
            scene = json.loads((root / "scene.json").read_text())
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"ground truth at {root} is missing or corrupt: {e}") from e
        return GroundTruth(root, body, cv, f, c, w, bg, scene, root / "posed_vertices.npy")

    def posed_vertices(self, frame: int) -> np.ndarray:
        """The true clothed mesh vertices [V, 3] in a frame (faces = `self.faces`)."""
        return np.load(self._posed_path, mmap_mode="r")[frame].astype(np.float64)
