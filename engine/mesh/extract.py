"""Triangle meshes from signed distance fields: extraction, colouring, decimation and posing.

Conventions: SDFs are negative inside and positive outside; meshes are in metres, Y-up, with
faces wound counter-clockwise seen from outside (right-hand normals point outward).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from engine.body.base import BodyModel
from engine.errors import UserError
from engine.geometry.lbs import warp

log = logging.getLogger(__name__)

SdfFn = Callable[[np.ndarray], np.ndarray]
WELD_VOXELS = 0.01  # marching-cubes vertices closer than this (in voxels) are merged (`weld`)


@dataclass
class Mesh:
    """A triangle mesh with optional per-vertex colours and normals (numpy arrays)."""

    vertices: np.ndarray  # [V, 3] float32
    faces: np.ndarray  # [F, 3] int64, counter-clockwise seen from outside
    colors: np.ndarray | None = None  # [V, 3] float32 in [0, 1]
    normals: np.ndarray | None = None  # [V, 3] float32 unit, outward

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32).reshape(-1, 3)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64).reshape(-1, 3)
        if self.colors is not None:
            self.colors = np.ascontiguousarray(self.colors, dtype=np.float32).reshape(-1, 3)
        if self.normals is not None:
            self.normals = np.ascontiguousarray(self.normals, dtype=np.float32).reshape(-1, 3)

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals.

    Args:
        vertices: [V, 3]; faces: [F, 3] (counter-clockwise from outside).

    Returns:
        [V, 3] float32 unit normals (zero for unreferenced vertices).
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if f.size == 0:
        return np.zeros((len(v), 3), np.float32)
    # The cross product's length is twice the face area: summing it weights faces by area.
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    idx = f.ravel()
    n = np.stack([np.bincount(idx, np.repeat(fn[:, c], 3), minlength=len(v)) for c in range(3)], axis=1)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return (n / np.where(length > 0, length, 1.0)).astype(np.float32)


def with_normals(mesh: Mesh) -> Mesh:
    """The same mesh with freshly computed vertex normals."""
    return replace(mesh, normals=vertex_normals(mesh.vertices, mesh.faces))


def keep_largest_component(mesh: Mesh) -> Mesh:
    """Keeps the connected component (via shared vertices) with the most faces."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    f = mesh.faces
    if len(f) == 0:
        return mesh
    n = mesh.num_vertices
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    if count == 1:
        return mesh
    face_label = labels[f[:, 0]]
    keep_label = np.argmax(np.bincount(face_label, minlength=count))
    log.debug("kept the largest of %d mesh components (%d of %d faces)", count,
              int((face_label == keep_label).sum()), len(f))
    return _subset_faces(mesh, face_label == keep_label)


def _subset_faces(mesh: Mesh, keep: np.ndarray) -> Mesh:
    """Keeps the faces where `keep` [F] is true and drops vertices no longer referenced."""
    faces = mesh.faces[keep]
    used = np.zeros(mesh.num_vertices, bool)
    used[faces.ravel()] = True
    remap = np.cumsum(used) - 1
    return Mesh(
        mesh.vertices[used],
        remap[faces],
        None if mesh.colors is None else mesh.colors[used],
        None if mesh.normals is None else mesh.normals[used],
    )


def _eval_chunked(fn: SdfFn, points_of: Callable[[np.ndarray], np.ndarray], flat: np.ndarray,
                  chunk: int) -> np.ndarray:
    """Evaluates a field at the grid points with flat indices `flat` [N], `chunk` points at a time."""
    out = np.empty(len(flat), np.float32)
    for s in range(0, len(flat), chunk):
        idx = flat[s : s + chunk]
        vals = np.asarray(fn(points_of(idx)), dtype=np.float32).reshape(-1)
        if vals.shape[0] != len(idx):
            raise ValueError(f"field returned {vals.shape[0]} values for {len(idx)} points")
        out[s : s + chunk] = vals
    return out


def extract_mesh(
    sdf_fn: SdfFn,
    bbox_min,
    bbox_max,
    resolution: int = 256,
    band_fn: SdfFn | None = None,
    band: float = 0.08,
    chunk: int = 65536,
    largest_component: bool = True,
) -> Mesh:
    """Marching cubes of the zero level set of an SDF (negative inside).

    The grid has isotropic voxels: the longest side of the box gets `resolution` cells, the
    others as many as cover them (the grid is centred on the box).

    Args:
        sdf_fn: points [N, 3] float32 → SDF [N] float32.
        bbox_min, bbox_max: [3] corners of the region to mesh.
        resolution: cells along the longest side.
        band_fn: optional cheap approximate SDF (e.g. the naked body's). `sdf_fn` is then only
            evaluated where |band_fn| < band; elsewhere the grid holds band_fn's value. The
            surface must lie inside that band (a warning is logged when it seems not to).
        band: half-width of the band in metres.
        chunk: points per call of `sdf_fn` / `band_fn`.
        largest_component: keep only the connected component with the most faces.

    Returns:
        Mesh with outward faces and area-weighted outward normals (no colours).

    Raises:
        ValueError: the field has no zero crossing in the box ("no surface found"), or is not finite.
    """
    from skimage.measure import marching_cubes

    t0 = time.perf_counter()
    lo = np.asarray(bbox_min, np.float64).reshape(3)
    hi = np.asarray(bbox_max, np.float64).reshape(3)
    extent = hi - lo
    if resolution < 2 or not np.all(extent > 0):
        raise ValueError(f"bad grid: resolution {resolution}, box {lo} .. {hi}")
    voxel = float(extent.max()) / resolution
    cells = np.maximum(np.ceil(extent / voxel - 1e-6), 1).astype(np.int64)
    origin = (lo + hi) / 2 - cells * voxel / 2
    shape = tuple(int(c) + 1 for c in cells)
    axes = [(origin[a] + voxel * np.arange(shape[a])).astype(np.float32) for a in range(3)]

    def points_of(flat: np.ndarray) -> np.ndarray:
        # Grid points built per chunk: the whole grid at 256³ would take 200 MB.
        out = np.empty((len(flat), 3), np.float32)
        for a, ix in enumerate(np.unravel_index(flat, shape)):
            out[:, a] = axes[a][ix]
        return out

    total = math.prod(shape)
    all_idx = np.arange(total, dtype=np.int64)
    if band_fn is None:
        volume = _eval_chunked(sdf_fn, points_of, all_idx, chunk)
        evaluated = total
    else:
        volume = _eval_chunked(band_fn, points_of, all_idx, chunk)
        near = np.flatnonzero(np.abs(volume) < band)
        approx = volume[near]
        volume[near] = _eval_chunked(sdf_fn, points_of, near, chunk)
        evaluated = len(near)
        _check_band(volume.reshape(shape), near, approx, shape)
    del all_idx
    if not np.all(np.isfinite(volume)):
        raise ValueError(f"the SDF returned {int((~np.isfinite(volume)).sum())} non-finite values")
    volume = volume.reshape(shape)
    t_eval = time.perf_counter() - t0
    if not (volume.min() < 0 < volume.max()):
        raise ValueError(f"no surface found in the box {lo.round(3)} .. {hi.round(3)} "
                         f"(SDF range {volume.min():.4g} .. {volume.max():.4g})")
    if _touches_boundary(volume):
        log.warning("the surface reaches the edge of the meshing box; the mesh will be open there")

    # For an inside-negative field skimage's default winding is already outward (counter-
    # clockwise from outside); the sphere test in tests/engine/test_mesh.py pins this down.
    verts, faces, _, _ = marching_cubes(volume, level=0.0, spacing=(voxel, voxel, voxel))
    mesh = Mesh((verts + origin).astype(np.float32), faces.astype(np.int64))
    mesh = _drop_degenerate(weld(mesh, WELD_VOXELS * voxel))
    if largest_component and mesh.num_faces:
        mesh = keep_largest_component(mesh)
    mesh = with_normals(mesh)
    log.info("extracted mesh: grid %s, voxel %.4f m, SDF evaluated at %d of %d points (%.1f%%), "
             "%d faces, %.2f s (fields %.2f s)", "x".join(map(str, shape)), voxel, evaluated, total,
             100.0 * evaluated / total, mesh.num_faces, time.perf_counter() - t0, t_eval)
    return mesh


def _check_band(volume: np.ndarray, near: np.ndarray, approx: np.ndarray, shape: tuple[int, ...]) -> None:
    """Warns when the exact SDF's surface seems to leave the band around `band_fn`'s.

    At the band's rim the exact and approximate fields must agree in sign, otherwise marching
    cubes meets a false crossing where the two fields are stitched together.
    """
    from scipy.ndimage import binary_erosion

    mask = np.zeros(math.prod(shape), bool)
    mask[near] = True
    mask = mask.reshape(shape)
    rim = (mask & ~binary_erosion(mask, border_value=1)).ravel()[near]
    flips = int(np.count_nonzero(np.signbit(volume.ravel()[near][rim]) != np.signbit(approx[rim])))
    if flips:
        log.warning("the surface leaves the band around the approximate SDF at %d grid points; "
                    "widen `band` or the mesh may have spurious sheets there", flips)


def weld(mesh: Mesh, tolerance: float) -> Mesh:
    """Merges vertices closer than `tolerance` (the first of each cluster stays). Marching cubes puts two
    vertices almost on top of each other where the surface passes next to a grid point; the slivers
    between them have no area but wreck UV charting (xatlas gave such faces atlas-wide UV triangles)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pairs = cKDTree(mesh.vertices).query_pairs(tolerance, output_type="ndarray")
    if len(pairs) == 0:
        return mesh
    n = mesh.num_vertices
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    keep = np.zeros(n, bool)
    _, first = np.unique(label, return_index=True)
    keep[first] = True
    new_index = np.cumsum(keep) - 1  # index of each kept vertex
    remap = new_index[first][label]  # every vertex → its cluster's kept vertex
    return Mesh(mesh.vertices[keep], remap[mesh.faces],
                None if mesh.colors is None else mesh.colors[keep],
                None if mesh.normals is None else mesh.normals[keep])


def _touches_boundary(volume: np.ndarray) -> bool:
    faces = [volume[0], volume[-1], volume[:, 0], volume[:, -1], volume[:, :, 0], volume[:, :, -1]]
    return any(bool((f <= 0).any()) for f in faces)


def _drop_degenerate(mesh: Mesh) -> Mesh:
    """Removes faces with a repeated vertex index (marching cubes emits a few where values are 0)."""
    f = mesh.faces
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])
    return mesh if ok.all() else _subset_faces(mesh, ok)


def color_mesh(mesh: Mesh, color_fn: Callable[[np.ndarray], np.ndarray], chunk: int = 65536) -> Mesh:
    """Vertex colours from a colour field.

    Args:
        mesh: the mesh to colour.
        color_fn: points [N, 3] float32 → RGB [N, 3] (nominally in [0, 1]; clipped).
        chunk: points per call.

    Returns:
        A copy of `mesh` with `colors` [V, 3] float32 in [0, 1].
    """
    colors = np.empty((mesh.num_vertices, 3), np.float32)
    for s in range(0, mesh.num_vertices, chunk):
        pts = mesh.vertices[s : s + chunk]
        colors[s : s + chunk] = np.asarray(color_fn(pts), dtype=np.float32).reshape(len(pts), 3)
    return replace(mesh, colors=np.clip(colors, 0.0, 1.0))


def count_faces_after(mesh: Mesh, target_faces: int | None) -> int:
    """Triangles `decimate(mesh, target_faces)` leaves (at most; for showing before writing)."""
    if target_faces is None or target_faces <= 0:
        return mesh.num_faces
    return min(mesh.num_faces, int(target_faces))


def decimate(mesh: Mesh, target_faces: int) -> Mesh:
    """Quadric edge-collapse decimation to at most `target_faces` faces (open3d).

    Vertex colours are carried along (open3d interpolates them with the collapses); normals
    are recomputed. Returns `mesh` itself when it already has no more than `target_faces` faces.

    Raises:
        UserError: open3d is not installed (a machine without the desktop stack).
    """
    if target_faces <= 0 or mesh.num_faces <= target_faces:
        return mesh
    try:
        import open3d as o3d
    except ImportError:
        raise UserError("decimating a mesh (--faces) needs open3d, which this machine lacks; export without "
                        "--faces here, or on the desktop install.") from None
    t0 = time.perf_counter()
    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(mesh.vertices.astype(np.float64)),
                                  o3d.utility.Vector3iVector(mesh.faces.astype(np.int32)))
    if mesh.colors is not None:
        m.vertex_colors = o3d.utility.Vector3dVector(mesh.colors.astype(np.float64))
    m = m.simplify_quadric_decimation(target_number_of_triangles=int(target_faces))
    m.remove_degenerate_triangles()
    m.remove_unreferenced_vertices()
    colors = np.clip(np.asarray(m.vertex_colors), 0.0, 1.0) if mesh.colors is not None else None
    out = with_normals(Mesh(np.asarray(m.vertices), np.asarray(m.triangles), colors))
    log.info("decimated %d → %d faces in %.2f s", mesh.num_faces, out.num_faces, time.perf_counter() - t0)
    return out


def skinning_weights(vertices: np.ndarray, body: BodyModel, canonical_body_vertices) -> torch.Tensor:
    """Skinning weights [V, J] of canonical points [V, 3]: those of the nearest canonical body vertex
    (Vid2Avatar's deformer). They do not depend on the frame: compute once, pose many times."""
    from scipy.spatial import cKDTree

    body_verts = np.asarray(torch.as_tensor(canonical_body_vertices).detach().cpu(), np.float64)
    _, idx = cKDTree(body_verts).query(np.asarray(vertices, np.float64), k=1, workers=-1)
    return body.skin_weights[torch.as_tensor(idx, device=body.skin_weights.device)]


def pose_vertices(vertices: np.ndarray, weights: torch.Tensor, body: BodyModel, shape: torch.Tensor,
                  frame_tf: torch.Tensor, chunk: int = 65536) -> np.ndarray:
    """Canonical points [V, 3] with their `skinning_weights` → world points [V, 3] of one frame
    (frame_tf [J, 4, 4] rest → world)."""
    device = body.skin_weights.device
    frame_tf = frame_tf.to(device)
    star_tf = body.star_transforms(shape.to(device))  # once per call: it runs the body model
    out = np.empty((len(vertices), 3), np.float32)
    with torch.no_grad():
        for s in range(0, len(vertices), chunk):
            pts = torch.as_tensor(np.asarray(vertices[s : s + chunk], np.float32), device=device)
            out[s : s + chunk] = warp(pts, weights[s : s + chunk], star_tf, frame_tf).float().cpu().numpy()
    return out


def pose_mesh(
    mesh: Mesh,
    body: BodyModel,
    shape: torch.Tensor,
    frame_tf: torch.Tensor,
    canonical_body_vertices,
    weights: torch.Tensor | None = None,
) -> Mesh:
    """Forward-skins a canonical (star-pose) mesh into one frame.

    Each vertex takes the skinning weights of its nearest canonical body vertex (`skinning_weights`;
    pass them in when posing the same mesh into many frames), then moves from the canonical pose to
    the frame's pose.

    Args:
        mesh: canonical mesh.
        body: the body model.
        shape: [S] shape coefficients.
        frame_tf: [J, 4, 4] rest → world bone transforms of the frame (`body.bone_transforms(p)[i]`).
        canonical_body_vertices: [Vb, 3] body vertices in the canonical pose (tensor or array).
        weights: [V, J] the mesh's skinning weights, when already computed.

    Returns:
        The posed mesh (same faces and colours, normals recomputed).
    """
    if weights is None:
        weights = skinning_weights(mesh.vertices, body, canonical_body_vertices)
    out = pose_vertices(mesh.vertices, weights, body, shape, frame_tf)
    return with_normals(Mesh(out, mesh.faces, mesh.colors))
