"""Meshes from the learned fields: extraction (marching cubes), colouring, decimation, posing, and
the OBJ/PLY files they are written to (files.py)."""

from engine.mesh.extract import (
    Mesh,
    color_mesh,
    count_faces_after,
    decimate,
    extract_mesh,
    keep_largest_component,
    pose_mesh,
    pose_vertices,
    skinning_weights,
    vertex_normals,
    with_normals,
)
from engine.mesh.files import FORMATS, UP_AXES, MeshFormat, UpAxis, write_mesh, write_sequence

__all__ = [
    "FORMATS",
    "UP_AXES",
    "Mesh",
    "MeshFormat",
    "UpAxis",
    "color_mesh",
    "count_faces_after",
    "decimate",
    "extract_mesh",
    "keep_largest_component",
    "pose_mesh",
    "pose_vertices",
    "skinning_weights",
    "vertex_normals",
    "with_normals",
    "write_mesh",
    "write_sequence",
]
