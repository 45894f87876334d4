"""Mesh files: kept for its callers; the writer lives in `engine.mesh.export`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.mesh import export


def write_mesh(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> None:
    """Writes a triangle mesh (PLY or OBJ by suffix) with normals and optional vertex colours, atomically."""
    export.write_mesh(path, vertices, faces, colors)
