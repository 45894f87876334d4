"""Meshes from the learned fields: extraction (marching cubes), colouring, decimation, posing, export."""

from engine.mesh.export import FORMATS, write_mesh, write_sequence
from engine.mesh.extract import (
    Mesh,
    color_mesh,
    count_faces_after,
    decimate,
    extract_mesh,
    keep_largest_component,
    pose_mesh,
    vertex_normals,
    with_normals,
)

__all__ = [
    "FORMATS",
    "Mesh",
    "color_mesh",
    "count_faces_after",
    "decimate",
    "extract_mesh",
    "keep_largest_component",
    "pose_mesh",
    "vertex_normals",
    "with_normals",
    "write_mesh",
    "write_sequence",
]
