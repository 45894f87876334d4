"""A UV-mapped mesh with one colour texture (what `bake` makes and the textured exports write).

Conventions: `uvs` are in [0, 1] with v = 0 at the BOTTOM of the image (OBJ's convention; glTF's
flips v and the writers convert); `texture` is [S, S, 3] float32 in [0, 1] with row 0 at the TOP.
xatlas splits vertices along chart seams, so `vertices` can hold a point more than once;
`source_vertex` maps every vertex back to the mesh that was charted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TexturedMesh:
    vertices: np.ndarray  # [V, 3] float32 (split at seams)
    faces: np.ndarray  # [F, 3] int64, counter-clockwise seen from outside
    uvs: np.ndarray  # [V, 2] float32 in [0, 1], v up
    texture: np.ndarray  # [S, S, 3] float32 in [0, 1], row 0 at the top
    source_vertex: np.ndarray  # [V] int64: index of each vertex in the charted mesh
    normals: np.ndarray | None = None  # [V, 3] float32 unit, outward

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32).reshape(-1, 3)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64).reshape(-1, 3)
        self.uvs = np.ascontiguousarray(self.uvs, dtype=np.float32).reshape(-1, 2)
        self.texture = np.ascontiguousarray(self.texture, dtype=np.float32)
        self.source_vertex = np.ascontiguousarray(self.source_vertex, dtype=np.int64).reshape(-1)
        if self.normals is not None:
            self.normals = np.ascontiguousarray(self.normals, dtype=np.float32).reshape(-1, 3)

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def texture_size(self) -> int:
        return int(self.texture.shape[0])
