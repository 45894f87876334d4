"""UV atlases of meshes (xatlas) and the texels they cover: charting, texel rasterisation, seam dilation.

Conventions are those of `engine/mesh/textured.py` (UVs with v up, texture row 0 at the top); texel
(r, c) has its centre at u = (c + 0.5) / S, v = 1 - (r + 0.5) / S (`engine/geometry/texture_sampling.py`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import xatlas

from engine.errors import UserError
from engine.geometry.texture_sampling import uv_to_texel
from engine.mesh.extract import Mesh, vertex_normals
from engine.mesh.textured import TexturedMesh

log = logging.getLogger(__name__)

TEXTURE_MIN = 1024
TEXTURE_MAX = 4096
TEXTURE_DEFAULT = 2048

# xatlas grows charts face by face and its cost rises steeply with a chart's face count (a smooth
# marching-cubes surface otherwise becomes a few huge charts): cap charts at about this many faces.
_FACES_PER_CHART = 256
# xatlas packs into an atlas near `resolution` assuming 75 % use; with padding around hundreds of
# charts it reaches less and the atlas comes out larger. Ask for this share of the texture so that
# the atlas, scaled to the texture, keeps about the padding asked for.
_RESOLUTION_SHARE = 0.7
_ATTEMPTS = 3
# Faces xatlas leaves out (slivers it cannot parametrise) may hold at most this share of the area.
_MAX_UNCHARTED_AREA = 0.01
_UNCHARTED = np.uint32(0xFFFFFFFF)  # xatlas's atlas index of a vertex in no chart
_CANDIDATES = 1 << 21  # texel candidates tested per batch in texel_samples (bounds memory)
# A bilinear lookup reads the four texels whose centres are less than one texel away along each axis,
# so all lie within √2 texels: the `margin` of texel_samples that covers every lookup inside a chart.
BILINEAR_MARGIN = math.sqrt(2.0)
_ON_EDGE = 1e-6  # barycentric tolerance: a texel centre on a shared edge counts as inside (one face keeps it)


def check_texture_size(size: int) -> int:
    """Returns `size` if it is a valid texture size; raises UserError naming `--texture` otherwise."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not TEXTURE_MIN <= size <= TEXTURE_MAX:
        raise UserError(f"--texture must be a size in pixels from {TEXTURE_MIN} to {TEXTURE_MAX} "
                        f"(default {TEXTURE_DEFAULT}), not {size!r}.")
    return int(size)


def uv_atlas(mesh: Mesh, size: int = TEXTURE_DEFAULT, padding: int = 4) -> TexturedMesh:
    """Charts and packs `mesh` into one square UV atlas with xatlas.

    Vertices are split along chart seams; `source_vertex` maps each back to `mesh`. Charts are at
    least about `padding` texels of the final texture apart, so bilinear lookups and dilation at a
    chart's border do not reach another chart. Faces xatlas leaves out (near-degenerate slivers) get
    the UV of a neighbouring charted vertex: they cover no texel and take the colour beside them.

    Args:
        mesh: the mesh to chart (its normals, if any, are carried over).
        size: texture size S in texels (TEXTURE_MIN..TEXTURE_MAX).
        padding: texels kept free around each chart.

    Returns:
        A TexturedMesh with UVs in [0, 1] and a black [S, S, 3] texture.

    Raises:
        UserError: a size out of range, or a mesh xatlas cannot chart (no faces, non-finite
            vertices, only degenerate faces, no charts, too much of the surface left out).
    """
    size = check_texture_size(size)
    padding = int(padding)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, not {padding}")
    vertices, faces = mesh.vertices, mesh.faces
    area, face_area = _check_chartable(vertices, faces)

    chart_options = xatlas.ChartOptions()
    chart_options.max_chart_area = float(area * _FACES_PER_CHART / len(faces))
    # No re-seeding rounds after the first growth: about half the charting time, a few more charts.
    chart_options.max_iterations = 0
    resolution = max(64, int(size * _RESOLUTION_SHARE))
    # Two texels of slack (with padding 4, an atlas up to half as large again as the texture still
    # keeps it), so that charting rarely has to run twice.
    asked = padding + 2 if padding else 0
    start = time.perf_counter()
    for attempt in range(_ATTEMPTS):
        atlas = _generate(vertices, faces, mesh.normals, chart_options, resolution, asked)
        longest = max(atlas.width, atlas.height)
        scale = size / longest  # atlas texels → texture texels
        if asked * scale >= padding or attempt == _ATTEMPTS - 1:
            break
        # The atlas came out larger than the texture: ask for a smaller one so the padding survives.
        resolution = max(64, int(resolution * scale * 0.95))
        log.debug("xatlas atlas %dx%d for a %d texture; packing again at %d", atlas.width, atlas.height,
                  size, resolution)
    vmapping, indices, uvs = atlas[0]
    if atlas.chart_count == 0 or atlas.atlas_count != 1 or len(vmapping) == 0:
        raise UserError(f"xatlas could not chart the mesh: it made {atlas.chart_count} charts in "
                        f"{atlas.atlas_count} atlases.")
    source = vmapping.astype(np.int64)
    new_faces = indices.astype(np.int64).reshape(-1, 3)
    if len(new_faces) != len(faces) or not np.isfinite(uvs).all():
        raise UserError("xatlas could not chart the mesh: its output does not match the mesh "
                        f"({len(new_faces)} faces for {len(faces)}, or non-finite UVs).")
    # xatlas normalises by its atlas's width and height; one scale keeps texels square.
    uvs = (uvs.astype(np.float64) * np.array([atlas.width, atlas.height]) / longest).astype(np.float32)
    charted = atlas.get_mesh_vertex_assignment(0)[0] != _UNCHARTED
    uvs, new_faces, source = _place_uncharted(uvs, new_faces, source, charted, vertices[source], face_area, area)
    uvs = np.clip(uvs, 0.0, 1.0)

    normals = mesh.normals if mesh.normals is not None and len(mesh.normals) == len(vertices) else \
        vertex_normals(vertices, faces)
    log.info("UV atlas: %d charts, %d → %d vertices, %.0f %% of a %d² texture used, padding %.1f texels "
             "(%.1f s)", atlas.chart_count, len(vertices), len(source),
             100 * atlas.utilization * atlas.width * atlas.height / longest**2,
             size, asked * scale, time.perf_counter() - start)
    return TexturedMesh(
        vertices=vertices[source],
        faces=new_faces,
        uvs=uvs,
        texture=np.zeros((size, size, 3), np.float32),
        source_vertex=source,
        normals=normals[source],
    )


def _check_chartable(vertices: np.ndarray, faces: np.ndarray) -> tuple[float, np.ndarray]:
    """Total and per-face area [F] of a mesh xatlas can chart; UserError naming what is wrong."""
    if len(faces) == 0 or len(vertices) == 0:
        raise UserError("xatlas could not chart the mesh: it has no faces.")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise UserError(f"xatlas could not chart the mesh: face indices out of range for {len(vertices)} vertices.")
    if not np.isfinite(vertices).all():
        raise UserError("xatlas could not chart the mesh: some vertex positions are not finite (NaN or inf).")
    v = vertices.astype(np.float64)
    face_area = 0.5 * np.linalg.norm(np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]]),
                                     axis=1)
    area = float(face_area.sum())
    if not area > 0:
        raise UserError("xatlas could not chart the mesh: all its faces are degenerate (zero area).")
    return area, face_area


def _generate(vertices, faces, normals, chart_options, resolution: int, padding: int) -> xatlas.Atlas:
    pack_options = xatlas.PackOptions()
    pack_options.resolution = resolution
    pack_options.padding = padding
    pack_options.bilinear = True  # keep the texels a bilinear lookup inside a chart reads free of others
    pack_options.bruteForce = False  # its exhaustive placement costs far more than the few % it saves
    atlas = xatlas.Atlas()
    try:
        n = None if normals is None or len(normals) != len(vertices) else np.ascontiguousarray(normals, np.float32)
        atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32), n)
        atlas.generate(chart_options, pack_options)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"xatlas could not chart the mesh: {e}.") from e
    return atlas


def _place_uncharted(uvs, faces, source, charted, positions, face_area, area):
    """Gives each face xatlas left out three vertices of its own, all at the UV of the charted vertex
    nearest its first corner: it covers no texel, takes the colour beside it, and (having its own
    vertices) cannot drag a neighbour's corner, nor span charts.

    Returns UVs [V', 2], faces [F, 3] and source vertices [V'] without the vertices no face uses.
    """
    loose = ~charted[faces].all(axis=1)
    if not loose.any():
        return uvs, faces, source
    lost = float(face_area[loose].sum()) / area
    if lost > _MAX_UNCHARTED_AREA or not charted.any():
        raise UserError(f"xatlas could not chart the mesh: it left out {int(loose.sum())} of {len(faces)} "
                        f"faces ({100 * lost:.1f} % of the surface).")
    from scipy.spatial import cKDTree  # deferred: the first scipy import is slow

    anchors = np.flatnonzero(charted)
    _, nearest = cKDTree(positions[anchors]).query(positions[faces[loose, 0]])
    count = int(loose.sum())
    faces = faces.copy()
    own = len(uvs) + np.arange(3 * count).reshape(count, 3)
    uvs = np.concatenate([uvs, np.repeat(uvs[anchors[nearest]], 3, axis=0)])
    source = np.concatenate([source, source[faces[loose]].ravel()])
    faces[loose] = own
    used = np.zeros(len(uvs), bool)
    used[faces.ravel()] = True
    log.debug("xatlas left out %d sliver faces (%.2g %% of the area); collapsed onto neighbours", count,
              100 * lost)
    return uvs[used], (np.cumsum(used) - 1)[faces], source[used]


@dataclass
class TexelSamples:
    """The texels whose centres lie inside a face in UV space, each with its face and barycentrics."""

    rows: np.ndarray  # [T] int64, row 0 at the top
    cols: np.ndarray  # [T] int64
    face: np.ndarray  # [T] int64
    bary: np.ndarray  # [T, 3] float32, sums to 1
    size: int  # S: the texture is [S, S]

    def __len__(self) -> int:
        return int(len(self.rows))

    def covered(self) -> np.ndarray:
        """[S, S] bool: the texels that lie on the surface."""
        mask = np.zeros((self.size, self.size), bool)
        mask[self.rows, self.cols] = True
        return mask


def texel_samples(tm: TexturedMesh, margin: float = 0.0) -> TexelSamples:
    """Rasterises every face in UV space: the texels whose centre lies inside it.

    A texel centre on an edge shared by faces goes to the lowest-numbered one, so each texel appears
    once; the samples come in texel order (row by row). With `margin` > 0, texels whose centre lies within
    `margin` texels of a face (and inside none) are added too, sampled at the face's nearest point.
    With `BILINEAR_MARGIN`, every texel a bilinear lookup inside a chart reads is sampled, even along
    sliver triangles and in charts smaller than a texel, which hold few or no texel centres.

    Args:
        tm: the mesh; its texture gives the size S.
        margin: distance in texels (0: texel centres inside faces only). Keep it below the atlas's
            padding so that charts do not reach each other.

    Returns:
        The samples: texel rows and columns, face and barycentric weights of each.
    """
    size = tm.texture_size
    m = max(0.0, float(margin))
    y, x = uv_to_texel(tm.uvs, size, size)
    tx, ty = x[tm.faces], y[tm.faces]  # [F, 3] texel coordinates of the corners
    c0 = np.clip(np.ceil(tx.min(axis=1) - m), 0, size).astype(np.int64)
    c1 = np.clip(np.floor(tx.max(axis=1) + m), -1, size - 1).astype(np.int64)
    r0 = np.clip(np.ceil(ty.min(axis=1) - m), 0, size).astype(np.int64)
    r1 = np.clip(np.floor(ty.max(axis=1) + m), -1, size - 1).astype(np.int64)
    box_w, box_h = np.maximum(c1 - c0 + 1, 0), np.maximum(r1 - r0 + 1, 0)
    # Barycentric weights are affine in the texel position: l_i = a_i·(col - c0) + b_i·(row - r0) + k_i.
    den = (ty[:, 1] - ty[:, 2]) * (tx[:, 0] - tx[:, 2]) + (tx[:, 2] - tx[:, 1]) * (ty[:, 0] - ty[:, 2])
    live = (box_w > 0) & (box_h > 0) & (np.abs(den) > 1e-12)  # zero UV area: no texel of its own
    den = np.where(live, den, 1.0)
    a = np.stack([ty[:, 1] - ty[:, 2], ty[:, 2] - ty[:, 0]], axis=1) / den[:, None]  # [F, 2]
    b = np.stack([tx[:, 2] - tx[:, 1], tx[:, 0] - tx[:, 2]], axis=1) / den[:, None]
    k = a * (c0 - tx[:, 2])[:, None] + b * (r0 - ty[:, 2])[:, None]
    # l_i times the height over edge i is the signed distance to that edge's line, so a centre farther
    # than `margin` outside any edge cannot be within `margin` of the face: l_i >= -margin / height_i.
    edge = np.stack([np.hypot(tx[:, j] - tx[:, i], ty[:, j] - ty[:, i]) for i, j in ((1, 2), (2, 0), (0, 1))],
                    axis=1)  # [F, 3] length of the edge opposite each corner
    reach = (-m * edge / np.abs(den)[:, None] - _ON_EDGE).astype(np.float32)  # [F, 3]
    a32, b32, k32 = a.astype(np.float32), b.astype(np.float32), k.astype(np.float32)

    owner = np.full(size * size, -1, np.int64)  # the sample index that holds each texel
    inside_parts: list[tuple[np.ndarray, ...]] = []  # (texel, face, first two barycentrics)
    near_parts: list[tuple[np.ndarray, np.ndarray]] = []  # (texel, face) candidates within reach
    faces = np.flatnonzero(live)
    shape_key = box_h[faces] * (size + 1) + box_w[faces]
    order = np.argsort(shape_key, kind="stable")
    faces, shape_key = faces[order], shape_key[order]
    starts = np.flatnonzero(np.r_[True, shape_key[1:] != shape_key[:-1]])
    for group in np.split(faces, starts[1:]):
        if len(group) == 0:
            continue
        h, w = int(box_h[group[0]]), int(box_w[group[0]])
        dy = np.arange(h, dtype=np.float32)[None, :, None]
        dx = np.arange(w, dtype=np.float32)[None, None, :]
        step = max(1, _CANDIDATES // (h * w))
        for s in range(0, len(group), step):
            f = group[s : s + step]
            # float32 is exact enough here: the weights are O(1) over a box of a few texels.
            l0 = a32[f, 0, None, None] * dx + b32[f, 0, None, None] * dy + k32[f, 0, None, None]  # [G, h, w]
            l1 = a32[f, 1, None, None] * dx + b32[f, 1, None, None] * dy + k32[f, 1, None, None]
            l2 = 1.0 - l0 - l1
            inside = (l0 >= -_ON_EDGE) & (l1 >= -_ON_EDGE) & (l2 >= -_ON_EDGE)
            gi, iy, ix = np.nonzero(inside)
            ff = f[gi]
            inside_parts.append(((r0[ff] + iy) * size + c0[ff] + ix, ff,
                                 np.stack([l0[gi, iy, ix], l1[gi, iy, ix]], axis=1)))
            if m > 0:
                near = ~inside & (l0 >= reach[f, 0, None, None]) & (l1 >= reach[f, 1, None, None]) & \
                    (l2 >= reach[f, 2, None, None])
                gi, iy, ix = np.nonzero(near)
                ff = f[gi]
                near_parts.append(((r0[ff] + iy) * size + c0[ff] + ix, ff))
    # A centre on an edge shared by faces goes to the lowest-numbered one, however the faces were grouped.
    texel, face, bary2 = (np.concatenate(p) for p in zip(*inside_parts)) if inside_parts else \
        (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2), np.float32))
    lowest = np.full(size * size, len(tm.faces), np.int64)
    np.minimum.at(lowest, texel, face)
    keep = face == lowest[texel]
    owner[texel[keep]] = np.arange(int(keep.sum()))
    n_samples = int(keep.sum())
    parts = [(face[keep], bary2[keep])]
    if near_parts:
        texel, face = (np.concatenate(p) for p in zip(*near_parts))
        free = owner[texel] < 0  # a centre inside a face stays with it
        texel, face = texel[free], face[free]
        dist, bary = _closest_on_triangle(texel % size, texel // size, tx[face], ty[face])
        keep = dist <= m
        texel, face, dist, bary = texel[keep], face[keep], dist[keep], bary[keep]
        order = np.lexsort((face, dist, texel))  # the nearest face first for each texel
        texel, first = np.unique(texel[order], return_index=True)
        pick = order[first]
        owner[texel] = n_samples + np.arange(len(pick))
        parts = parts + [(face[pick], bary[pick, :2])]
    held = np.flatnonzero(owner >= 0)  # texel order
    if len(held) == 0:
        empty = np.zeros(0, np.int64)
        return TexelSamples(empty, empty, empty, np.zeros((0, 3), np.float32), size)
    pick = owner[held]
    face = np.concatenate([p[0] for p in parts])[pick]
    bary2 = np.concatenate([p[1] for p in parts])[pick]
    bary = np.clip(np.column_stack([bary2, 1.0 - bary2.sum(axis=1)]), 0.0, 1.0)
    bary /= bary.sum(axis=1, keepdims=True)
    return TexelSamples(held // size, held % size, face, bary.astype(np.float32), size)


def _closest_on_triangle(px, py, tx, ty) -> tuple[np.ndarray, np.ndarray]:
    """Distance [N] from points outside triangles to them, and the barycentrics [N, 3] of the nearest
    point (on one of the edges). px, py: [N]; tx, ty: [N, 3] corners."""
    best = np.full(len(px), np.inf)
    bary = np.zeros((len(px), 3))
    for i, j in ((0, 1), (1, 2), (2, 0)):
        ex, ey = tx[:, j] - tx[:, i], ty[:, j] - ty[:, i]
        t = ((px - tx[:, i]) * ex + (py - ty[:, i]) * ey) / np.maximum(ex * ex + ey * ey, 1e-24)
        t = np.clip(t, 0.0, 1.0)
        d2 = (px - tx[:, i] - t * ex) ** 2 + (py - ty[:, i] - t * ey) ** 2
        better = d2 < best
        best[better] = d2[better]
        bary[better] = 0.0
        bary[better, i] = 1.0 - t[better]
        bary[better, j] = t[better]
    return np.sqrt(best), bary


def points(tm: TexturedMesh, samples: TexelSamples) -> np.ndarray:
    """Surface points [T, 3] of the texels (their barycentric mix of the face's corners)."""
    corners = tm.vertices[tm.faces[samples.face]]  # [T, 3, 3]
    return np.einsum("tk,tkd->td", samples.bary, corners).astype(np.float32)


def surface_normals(tm: TexturedMesh, samples: TexelSamples) -> np.ndarray:
    """Unit normals [T, 3] of the texels: interpolated vertex normals, else the face's normal."""
    corners = tm.vertices[tm.faces[samples.face]].astype(np.float64)
    face_n = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    n = face_n
    if tm.normals is not None:
        n = np.einsum("tk,tkd->td", samples.bary, tm.normals[tm.faces[samples.face]])
        weak = np.linalg.norm(n, axis=1) < 1e-6  # opposite corner normals cancel
        n[weak] = face_n[weak]
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return (n / np.where(length > 0, length, 1.0)).astype(np.float32)


def dilate(texture: np.ndarray, covered: np.ndarray, pixels: int) -> np.ndarray:
    """Fills the uncovered texels within `pixels` of the surface with the nearest covered texel's colour.

    Covered texels are left as they are. Bilinear lookups at chart borders and the smaller mip levels
    viewers make then read the chart's own colours, not the black between charts.

    Args:
        texture: [S, S, C] (or [S, S]) image.
        covered: [S, S] bool, the texels on the surface.
        pixels: how far (Euclidean, in texels) to fill.

    Returns:
        A new image; texels farther than `pixels` from any covered texel keep their value.
    """
    from scipy.ndimage import distance_transform_edt  # deferred, as in _place_uncharted

    out = np.array(texture, copy=True)
    if pixels <= 0 or covered.all() or not covered.any():
        return out
    distance, (near_r, near_c) = distance_transform_edt(~covered, return_indices=True)
    fill = (distance > 0) & (distance <= pixels)
    out[fill] = texture[near_r[fill], near_c[fill]]
    return out

