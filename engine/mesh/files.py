"""Writing meshes: binary PLY and OBJ with vertex colours and normals, and textured OBJ and glTF
binary, atomically.

PLY: binary little-endian; float x y z, float nx ny nz, uchar red green blue; int32 faces.
OBJ: `v x y z r g b` (the per-vertex colour extension Blender and MeshLab read), `vn`, and
`f a//a b//b c//c`; no material file.
Textured OBJ (`write_textured`): `v`, `vt`, `vn`, `f a/a/a …`, with NAME.mtl (`map_Kd NAME.png`) and
NAME.png beside it. Textured glTF binary: one mesh with TEXCOORD_0 and NORMAL, a PBR material whose
base colour texture is the embedded PNG; written by trimesh, which flips v to glTF's top-left origin.

Our world is Y-up, which Blender's OBJ/PLY importers expect by default; `up="z"` rotates +90°
about X (Y-up → Z-up, the body then faces -Y) for tools that do not convert.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from engine.errors import UserError
from engine.io.atomic import atomic_path, write_bytes, write_image
from engine.mesh.extract import Mesh, vertex_normals
from engine.mesh.textured import TexturedMesh

log = logging.getLogger(__name__)

MeshFormat = Literal["obj", "ply"]
FORMATS: tuple[str, ...] = get_args(MeshFormat)
# Up axis of a written file: y (ours, and what Blender's importers expect) or z.
UpAxis = Literal["y", "z"]
UP_AXES: tuple[str, ...] = get_args(UpAxis)
# Formats that carry a texture (`write_textured`).
TexturedFormat = Literal["obj", "glb"]
TEXTURED_FORMATS: tuple[str, ...] = get_args(TexturedFormat)
MATERIAL_NAME = "avatar"
_ROWS = 100_000  # OBJ lines formatted per batch (bounds the temporary strings)


def write_mesh(
    path: str | Path,
    mesh_or_vertices: Mesh | np.ndarray,
    faces: np.ndarray | None = None,
    colors: np.ndarray | None = None,
    up: UpAxis = "y",
) -> Path:
    """Writes a mesh as `.ply` or `.obj` (by suffix), atomically.

    Args:
        path: target file; its folder must exist.
        mesh_or_vertices: a `Mesh`, or vertices [V, 3] (then `faces` [F, 3] is required).
        faces: [F, 3] vertex indices when passing vertices.
        colors: [V, 3] in [0, 1]; overrides the mesh's colours.
        up: "y" (as is) or "z" (rotate +90° about X).

    Returns:
        The written path.

    Raises:
        UserError: unsupported suffix, or the file cannot be written (the target is then untouched
            and no temporary file is left).
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UserError(f"unsupported mesh format {path.suffix or '(none)'!r} for {path}: use "
                        f"{' or '.join('.' + f for f in FORMATS)}.")
    mesh = _as_mesh(mesh_or_vertices, faces, colors)
    vertices, normals = _orient(mesh.vertices, mesh.normals, up)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            if fmt == "ply":
                _write_ply(f, vertices, mesh.faces, mesh.colors, normals)
            else:
                _write_obj(f, vertices, mesh.faces, mesh.colors, normals)
    except OSError as e:
        raise UserError(_os_error_message(path, e)) from e
    log.debug("wrote %s (%d vertices, %d faces)", path, mesh.num_vertices, mesh.num_faces)
    return path


def write_sequence(
    folder: str | Path, meshes: Iterable[Mesh], fmt: MeshFormat = "obj", up: UpAxis = "y", overwrite: bool = False
) -> list[Path]:
    """Writes one file per frame: `folder/frame_000000.obj`, `frame_000001.obj`, …

    Each file is written atomically. With `overwrite`, files of an earlier sequence in the same
    folder that this one does not replace (`frame_NNNNNN.obj|ply` only) are removed at the end so
    that the folder holds exactly this sequence.

    Args:
        folder: output folder (created with its parents).
        meshes: the frames' meshes, in order (may be a generator).
        fmt: "obj" or "ply".
        up: "y" or "z", as in `write_mesh`.
        overwrite: allow a folder that already holds files.

    Returns:
        The written paths.

    Raises:
        UserError: bad format, a non-empty folder without `overwrite`, or a write failure.
    """
    folder = Path(folder)
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UserError(f"unsupported mesh format {fmt!r}: use {' or '.join(FORMATS)}.")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder.")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise UserError(f"{folder} is not empty; choose an empty folder or allow overwriting.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder {folder}: {e.strerror or e}.") from e
    written = [write_mesh(folder / f"frame_{i:06d}.{fmt}", m, up=up) for i, m in enumerate(meshes)]
    if overwrite:
        keep = {p.name for p in written}
        pattern = re.compile(r"frame_\d{6}\.(obj|ply)")
        stale = [p for p in folder.iterdir() if pattern.fullmatch(p.name) and p.name not in keep]
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            log.info("removed %d frames of an earlier sequence from %s", len(stale), folder)
    return written


def write_textured(
    path: str | Path, tm: TexturedMesh, up: UpAxis = "y", material: str | Path | None = None
) -> list[Path]:
    """Writes a textured mesh as `.obj` (+ `.mtl` + `.png` beside it) or `.glb` (texture embedded).

    Each file is written atomically; the OBJ's material and image take its name (`avatar.obj` →
    `avatar.mtl`, `avatar.png`). glTF is Y-up by definition and its importers convert, so "y" is the
    right axis for `.glb`; "z" rotates it as for the other formats.

    Args:
        path: target `.obj` or `.glb`; its folder must exist.
        tm: the mesh, its UVs and texture (normals are computed when it has none).
        up: "y" (as is) or "z" (rotate +90° about X).
        material: OBJ only: an `.mtl` this function wrote before in the same folder (a sequence's first
            frame); the OBJ then uses it (and its image) and writes no material or image of its own.

    Returns:
        The written paths (OBJ, MTL, PNG; the OBJ alone with `material`; or the GLB).

    Raises:
        UserError: unsupported suffix, or a file cannot be written.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in TEXTURED_FORMATS:
        raise UserError(f"unsupported textured mesh format {path.suffix or '(none)'!r} for {path}: use "
                        f"{' or '.join('.' + f for f in TEXTURED_FORMATS)}.")
    if material is not None and fmt != "obj":
        raise ValueError("a shared material is for OBJ files; a .glb embeds its texture")
    _check_textured(tm)
    normals = tm.normals if tm.normals is not None else vertex_normals(tm.vertices, tm.faces)
    vertices, normals = _orient(tm.vertices, normals, up)
    texture_u8 = _colors_u8(tm.texture) if material is None else None
    try:
        if fmt == "obj":
            written = _write_textured_obj(path, vertices, normals, tm, texture_u8, material)
        else:
            write_bytes(path, _glb_bytes(vertices, normals, tm, texture_u8))
            written = [path]
    except OSError as e:
        raise UserError(_os_error_message(path, e)) from e
    log.debug("wrote %s (%d vertices, %d faces, %d² texture)", path, tm.num_vertices, tm.num_faces,
              tm.texture_size)
    return written


def _check_textured(tm: TexturedMesh) -> None:
    n = tm.num_vertices
    if tm.num_faces and (tm.faces.min() < 0 or tm.faces.max() >= n):
        raise ValueError(f"face indices out of range for {n} vertices")
    if len(tm.uvs) != n or (tm.normals is not None and len(tm.normals) != n):
        raise ValueError(f"{len(tm.uvs)} UVs (or normals) for {n} vertices")
    if tm.texture.ndim != 3 or tm.texture.shape[2] != 3:
        raise ValueError(f"texture must be [S, S, 3], not {list(tm.texture.shape)}")


def _write_textured_obj(path: Path, vertices, normals, tm: TexturedMesh, texture_u8, shared) -> list[Path]:
    written = [path]
    if shared is None:
        mtl, png = path.with_suffix(".mtl"), path.with_suffix(".png")
        write_image(png, texture_u8)
        material = (f"# avatar-studio\nnewmtl {MATERIAL_NAME}\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nillum 1\n"
                    f"map_Kd {png.name}\n")
        write_bytes(mtl, material.encode())
        written += [mtl, png]
        mtllib = mtl.name
    else:
        # Readers resolve the MTL's image against the OBJ's folder or the MTL's: keep all in one.
        if Path(shared).resolve().parent != path.resolve().parent:
            raise ValueError(f"the shared material {shared} must be in the folder of {path}")
        mtllib = Path(shared).name
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(f"# avatar-studio\n# {len(vertices)} vertices, {len(tm.faces)} faces\n"
                f"mtllib {mtllib}\n".encode())
        _write_rows(f, "v %.6f %.6f %.6f\n", vertices.astype(np.float64))
        _write_rows(f, "vt %.6f %.6f\n", tm.uvs.astype(np.float64))
        _write_rows(f, "vn %.4f %.4f %.4f\n", normals.astype(np.float64))
        f.write(f"usemtl {MATERIAL_NAME}\n".encode())
        idx = tm.faces.astype(np.int64) + 1  # OBJ indices are 1-based; v, vt and vn share them
        _write_rows(f, "f %d/%d/%d %d/%d/%d %d/%d/%d\n", np.repeat(idx, 3, axis=1))
    return written


def _glb_bytes(vertices, normals, tm: TexturedMesh, texture_u8) -> bytes:
    import trimesh  # deferred: only the glTF writer needs it
    from PIL import Image

    material = trimesh.visual.material.PBRMaterial(
        name=MATERIAL_NAME, baseColorTexture=Image.fromarray(texture_u8), metallicFactor=0.0, roughnessFactor=1.0
    )
    # TextureVisuals takes OBJ-style UVs (v up) and the glTF exporter writes 1 - v: image rows from the top.
    mesh = trimesh.Trimesh(
        vertices=vertices, faces=tm.faces, vertex_normals=normals,
        visual=trimesh.visual.TextureVisuals(uv=tm.uvs, material=material), process=False,
    )
    return mesh.export(file_type="glb", include_normals=True)


def _as_mesh(mesh_or_vertices, faces, colors) -> Mesh:
    if isinstance(mesh_or_vertices, Mesh):
        if faces is not None:
            raise ValueError("pass either a Mesh or vertices and faces, not both")
        mesh = mesh_or_vertices
        if colors is not None:
            mesh = Mesh(mesh.vertices, mesh.faces, colors, mesh.normals)
    else:
        if faces is None:
            raise ValueError("faces are required with bare vertices")
        mesh = Mesh(mesh_or_vertices, faces, colors)
    n = mesh.num_vertices
    if mesh.num_faces and (mesh.faces.min() < 0 or mesh.faces.max() >= n):
        raise ValueError(f"face indices out of range for {n} vertices")
    if mesh.colors is not None and len(mesh.colors) != n:
        raise ValueError(f"{len(mesh.colors)} colours for {n} vertices")
    if mesh.normals is None or len(mesh.normals) != n:
        mesh = Mesh(mesh.vertices, mesh.faces, mesh.colors, vertex_normals(mesh.vertices, mesh.faces))
    return mesh


def _orient(vertices: np.ndarray, normals: np.ndarray, up: UpAxis) -> tuple[np.ndarray, np.ndarray]:
    if up == "y":
        return vertices, normals
    if up == "z":
        # +90° about X: (x, y, z) → (x, -z, y); a rotation, so normals turn the same way.
        rot = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], np.float32)
        return vertices @ rot.T, normals @ rot.T
    raise UserError(f"unknown up axis {up!r}: use {' or '.join(UP_AXES)}.")


def _colors_u8(colors: np.ndarray) -> np.ndarray:
    return np.clip(np.round(colors * 255.0), 0, 255).astype(np.uint8)


def _write_ply(f, vertices, faces, colors, normals) -> None:
    props = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        props += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vert = np.empty(len(vertices), dtype=np.dtype(props))  # packed: matches the PLY record layout
    vert["x"], vert["y"], vert["z"] = vertices.T
    vert["nx"], vert["ny"], vert["nz"] = normals.T
    if colors is not None:
        vert["red"], vert["green"], vert["blue"] = _colors_u8(colors).T
    face = np.empty(len(faces), dtype=np.dtype([("n", "u1"), ("v", "<i4", (3,))]))
    face["n"] = 3
    face["v"] = faces
    ply_type = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment avatar-studio",
              f"element vertex {len(vertices)}"]
    header += [f"property {ply_type[t]} {name}" for name, t in props]
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header", ""]
    f.write("\n".join(header).encode("ascii"))
    f.write(vert.tobytes())
    f.write(face.tobytes())


def _write_obj(f, vertices, faces, colors, normals) -> None:
    f.write(f"# avatar-studio\n# {len(vertices)} vertices, {len(faces)} faces\n".encode("ascii"))
    if colors is not None:
        _write_rows(f, "v %.6f %.6f %.6f %.4f %.4f %.4f\n", np.hstack([vertices, colors]).astype(np.float64))
    else:
        _write_rows(f, "v %.6f %.6f %.6f\n", vertices.astype(np.float64))
    _write_rows(f, "vn %.4f %.4f %.4f\n", normals.astype(np.float64))
    idx = faces.astype(np.int64) + 1  # OBJ indices are 1-based
    _write_rows(f, "f %d//%d %d//%d %d//%d\n", np.repeat(idx, 2, axis=1))


def _write_rows(f, row_fmt: str, rows: np.ndarray) -> None:
    """Formats a 2-D array line by line with one `%` per batch (C-speed, unlike np.savetxt)."""
    for s in range(0, len(rows), _ROWS):
        batch = rows[s : s + _ROWS]
        f.write(((row_fmt * len(batch)) % tuple(batch.ravel().tolist())).encode("ascii"))


def _os_error_message(path: Path, e: OSError) -> str:
    parent = path.parent
    if e.errno == errno.ENOENT and not parent.exists():
        return f"cannot write {path}: the folder {parent} does not exist."
    if e.errno == errno.ENOTDIR or (parent.exists() and not parent.is_dir()):
        return f"cannot write {path}: {parent} is not a folder."
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: permission denied; choose another location."
    if e.errno == errno.EISDIR:
        return f"cannot write {path}: it is a folder."
    return f"cannot write {path}: {e.strerror or e}."
