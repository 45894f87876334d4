"""A UV-mapped mesh with one colour texture (what `bake` makes and the textured exports write).

Conventions: `uvs` are in [0, 1] with v = 0 at the BOTTOM of the image (OBJ's convention; glTF's
flips v and the writers convert); `texture` is [S, S, 3] float32 in [0, 1] with row 0 at the TOP.
xatlas splits vertices along chart seams, so `vertices` can hold a point more than once;
`source_vertex` maps every vertex back to the mesh that was charted.

`save_textured` / `load_textured` keep one in a folder: mesh.npz, albedo.png and texture.json.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import UserError
from engine.io.atomic import read_image, save_npz, write_image, write_json


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


MESH_FILE = "mesh.npz"
TEXTURE_FILE = "albedo.png"
META_FILE = "texture.json"
_ARRAYS = ("vertices", "faces", "uvs", "source_vertex")


def save_textured(folder: str | Path, tm: TexturedMesh, meta: dict) -> None:
    """Writes `folder/mesh.npz`, `albedo.png` (8-bit, the texture's values as they are) and
    `texture.json` (`meta`), each atomically; the JSON goes last, so a complete folder has it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {name: getattr(tm, name) for name in _ARRAYS}
    if tm.normals is not None:
        arrays["normals"] = tm.normals
    save_npz(folder / MESH_FILE, **arrays)
    write_image(folder / TEXTURE_FILE, tm.texture)
    write_json(folder / META_FILE, meta)


def load_textured(folder: str | Path) -> tuple[TexturedMesh, dict] | None:
    """Reads what `save_textured` wrote: the mesh and its meta, or None when the folder holds none.

    Raises:
        UserError: the files are incomplete or damaged.
    """
    folder = Path(folder)
    names = (MESH_FILE, TEXTURE_FILE, META_FILE)
    present = [(folder / n).is_file() for n in names]
    if not any(present):
        return None

    def damaged(reason: str) -> UserError:
        return UserError(f"the textured mesh in {folder} is damaged ({reason}); bake the texture again.")

    if not all(present):
        missing = ", ".join(n for n, p in zip(names, present) if not p)
        raise damaged(f"{missing} missing")
    try:
        with np.load(folder / MESH_FILE, allow_pickle=False) as d:
            arrays = {name: d[name] for name in d.files}
        meta = json.loads((folder / META_FILE).read_text())
        image = read_image(folder / TEXTURE_FILE)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise damaged(str(e) or type(e).__name__) from e
    missing = [n for n in _ARRAYS if n not in arrays]
    if missing:
        raise damaged(f"{MESH_FILE} lacks {', '.join(missing)}")
    if not isinstance(meta, dict):
        raise damaged(f"{META_FILE} is not a JSON object")
    if image.ndim != 3 or image.shape[0] != image.shape[1]:
        raise damaged(f"{TEXTURE_FILE} is {image.shape[1]}x{image.shape[0]}, not a square colour image")
    try:
        tm = TexturedMesh(
            vertices=arrays["vertices"],
            faces=arrays["faces"],
            uvs=arrays["uvs"],
            texture=image.astype(np.float32) / 255.0,
            source_vertex=arrays["source_vertex"],
            normals=arrays.get("normals"),
        )
    except ValueError as e:  # arrays of the wrong shape
        raise damaged(f"{MESH_FILE}: {e}") from e
    n = tm.num_vertices
    if len(tm.uvs) != n or len(tm.source_vertex) != n or (tm.normals is not None and len(tm.normals) != n):
        raise damaged(f"{MESH_FILE} holds arrays of different lengths")
    if tm.num_faces and (tm.faces.min() < 0 or tm.faces.max() >= n):
        raise damaged(f"{MESH_FILE} has face indices out of range")
    return tm, meta
