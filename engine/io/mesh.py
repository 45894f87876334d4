"""Mesh files (PLY with vertex colours) through open3d, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d

from engine.project.atomic import atomic_path


def write_mesh(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> None:
    """Writes a triangle mesh (PLY or OBJ by suffix) with normals and optional vertex colours."""
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(vertices, np.float64)),
                                     o3d.utility.Vector3iVector(np.asarray(faces, np.int32)))
    if colors is not None:
        mesh.vertex_colors = o3d.utility.Vector3dVector(np.asarray(colors, np.float64))
    mesh.compute_vertex_normals()
    with atomic_path(path) as tmp:
        if not o3d.io.write_triangle_mesh(str(tmp), mesh, write_ascii=False):
            raise OSError(f"could not write {path}")
