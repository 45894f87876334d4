"""Exact closest triangle of each query point, with numpy and scipy only (no open3d).

Three steps, each with a bound that never drops the closest triangle t* (at distance d*):

1. Upper bound. Every triangle is covered by *proxy* points (`_proxies`): the centroids of its
   m x m congruent sub-triangles, so every point of it lies within the proxy's radius r / m of a
   proxy. The triangle of the nearest proxy (a KD-tree query) is measured exactly: its distance
   `upper` >= d*.
2. Candidates. A uniform grid lists each triangle in every cell its (padded) bounding box touches.
   The closest point q of t* is within `upper` of p, so it lies in the cube p ± upper, and t* is
   listed in the cell of q: the triangles listed in the cells of that cube contain t*. A point whose
   cube covers too many cells (far from the surface) takes a KD-tree ball query over the proxies
   instead: t* has a proxy within upper + its radius of p.
3. Pruning and measuring. A candidate whose bounding sphere or bounding box is farther than `upper`
   cannot be t*; the rest are measured in float64 (`_squared_distances`) and the nearest wins (any
   of them on a tie). Grid cells that do not meet the ball p ± upper are skipped the same way.

Floor of (x - origin) / h is monotone in x, so cell ranges computed in floating point keep these
inclusions; a slack of 1e-9 of the coordinate scale covers the rounding of the bounds themselves.
The closest point on the chosen triangle is then computed by `closest_points_on_triangles`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

#: Candidate (point, triangle) pairs handled at once: bounds the temporaries (~17 float64 each).
MAX_ROWS = 1 << 20
#: The proxy radius is this quantile of the triangles' radii (larger triangles are cut up).
PROXY_QUANTILE = 0.9
#: At most this many proxies per triangle on average; the proxy radius grows until the mesh fits.
MAX_PROXIES_PER_FACE = 3.0
#: Grid cell size over the median largest side of a triangle's bounding box.
CELL_SCALE = 1.0
#: Most cells in the grid (its start-offset table is dense, int64).
MAX_CELLS = 1 << 23
#: Points whose search cube covers more cells than this take the ball query instead.
MAX_CELLS_PER_POINT = 64
#: Slack on every bound, relative to the largest coordinate, for float64 rounding.
ROUNDING_SLACK = 1e-9


def closest_points_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest point on triangle (a, b, c) to p, row-wise, in float64.

    Voronoi-region method of Ericson, "Real-Time Collision Detection", 5.1.5. All inputs
    ``[N, 3]``; returns ``[N, 3]``. Triangles must be non-degenerate.
    """

    def dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", x, y)

    ab, ac = b - a, c - a
    ap, bp, cp = p - a, p - b, p - c
    d1, d2 = dot(ab, ap), dot(ac, ap)
    d3, d4 = dot(ab, bp), dot(ac, bp)
    d5, d6 = dot(ab, cp), dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2

    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        out = a + ab * (vb / denom)[:, None] + ac * (vc / denom)[:, None]  # face interior
        # Ericson tests the regions in order A, B, AB, C, AC, BC and returns on the first hit;
        # assigning in reverse order lets the earliest matching region win.
        e_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
        w_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        out[e_bc] = (b + (c - b) * w_bc[:, None])[e_bc]
        e_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
        out[e_ac] = (a + ac * (d2 / (d2 - d6))[:, None])[e_ac]
        v_c = (d6 >= 0) & (d5 <= d6)
        out[v_c] = c[v_c]
        e_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
        out[e_ab] = (a + ab * (d1 / (d1 - d3))[:, None])[e_ab]
        v_b = (d3 >= 0) & (d4 <= d3)
        out[v_b] = b[v_b]
        v_a = (d1 <= 0) & (d2 <= 0)
        out[v_a] = a[v_a]
    return out


def _subdivision_centroids(m: int) -> np.ndarray:
    """Barycentric (u, v) of the centroids of the m*m sub-triangles of a triangle, ``[m*m, 2]``."""
    i, j = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    up = (i + j <= m - 1).ravel()  # sub-triangle (i, j), (i+1, j), (i, j+1)
    down = (i + j <= m - 2).ravel()  # sub-triangle (i+1, j), (i, j+1), (i+1, j+1)
    ij = np.stack([i.ravel(), j.ravel()], axis=1).astype(np.float64)
    return np.concatenate([ij[up] + 1.0 / 3.0, ij[down] + 2.0 / 3.0]) / m


def _proxies(tri: np.ndarray, quantile: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Proxy points ``[P, 3]``, the triangle owning each ``[P]`` (int64) and its radius ``[P]``.

    A proxy's radius bounds the distance from it to every point of its sub-triangle.

    Args:
        tri: ``[F, 3, 3]`` triangle corners.
        quantile: r_proxy, the largest proxy radius, is this quantile of the triangle radii.
    """
    centroid = tri.mean(axis=1)
    radius = np.linalg.norm(tri - centroid[:, None], axis=2).max(axis=1)  # [F]
    r_proxy = max(float(np.quantile(radius, quantile)), float(radius.max()) * 1e-3)
    if r_proxy == 0.0:  # every triangle is a point: its centroid is exact
        return centroid, np.arange(len(tri)), radius
    while True:
        m = np.maximum(np.ceil(radius / r_proxy), 1.0).astype(np.int64)
        if (m * m).sum() <= MAX_PROXIES_PER_FACE * len(tri):
            break
        r_proxy *= 1.5
    one = np.flatnonzero(m == 1)
    points, owner, reach = [centroid[one]], [one], [radius[one]]
    for level in np.unique(m[m > 1]):
        faces = np.flatnonzero(m == level)
        uv = _subdivision_centroids(int(level))  # [m*m, 2]
        a = tri[faces, 0]
        ab, ac = tri[faces, 1] - a, tri[faces, 2] - a
        pts = a[:, None] + uv[None, :, :1] * ab[:, None] + uv[None, :, 1:] * ac[:, None]
        points.append(pts.reshape(-1, 3))
        owner.append(np.repeat(faces, len(uv)))
        reach.append(np.repeat(radius[faces] / level, len(uv)))
    return np.concatenate(points), np.concatenate(owner), np.concatenate(reach)


def _triangle_table(tri: np.ndarray) -> np.ndarray:
    """Per-triangle constants of `_squared_distances`, ``[17, F]`` (rows gather contiguously)."""
    a = tri[:, 0]
    e0, e1 = tri[:, 1] - a, tri[:, 2] - a
    cross = np.cross(e0, e1)
    n = cross / np.linalg.norm(cross, axis=1, keepdims=True)
    d00, d01, d11 = (e0 * e0).sum(1), (e0 * e1).sum(1), (e1 * e1).sum(1)
    d22 = ((e1 - e0) ** 2).sum(1)
    inv = 1.0 / (d00 * d11 - d01 * d01)
    return np.ascontiguousarray(np.column_stack([a, e0, e1, n, d00, d01, d11, d22, inv]).T)


def _squared_distances(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Squared distance from points ``[3, M]`` to triangles (columns of `_triangle_table`), ``[M]``.

    Inside the triangle's prism it is the squared plane distance, otherwise that of the nearest of
    the three edges. Used to pick the closest triangle; the point itself comes from
    `closest_points_on_triangles`.
    """
    w = p - t[0:3]
    d00, d01, d11, d22, inv = t[12], t[13], t[14], t[15], t[16]
    we0 = w[0] * t[3] + w[1] * t[4] + w[2] * t[5]
    we1 = w[0] * t[6] + w[1] * t[7] + w[2] * t[8]
    plane = w[0] * t[9] + w[1] * t[10] + w[2] * t[11]
    ww = w[0] * w[0] + w[1] * w[1] + w[2] * w[2]
    s = (d11 * we0 - d01 * we1) * inv
    r = (d00 * we1 - d01 * we0) * inv
    inside = (s >= 0) & (r >= 0) & (s + r <= 1)
    # Edges a-b, a-c and b-c as |w - u e|^2 with u clamped to [0, 1].
    u = np.clip(we0 / d00, 0.0, 1.0)
    out = ww - u * (2.0 * we0 - u * d00)
    u = np.clip(we1 / d11, 0.0, 1.0)
    np.minimum(out, ww - u * (2.0 * we1 - u * d11), out=out)
    wb = ww - 2.0 * we0 + d00  # |p - b|^2
    wbe = we1 - we0 - d01 + d00  # (p - b) . (c - b)
    u = np.clip(wbe / d22, 0.0, 1.0)
    np.minimum(out, wb - u * (2.0 * wbe - u * d22), out=out)
    return np.where(inside, plane * plane, np.maximum(out, 0.0))


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Enumerates the integer boxes [lo, hi] (inclusive, ``[R, 3]``) as (owner row, cell ``[3]``)."""
    size = hi - lo + 1  # [R, 3]
    count = size.prod(axis=1)
    owner = np.repeat(np.arange(len(lo)), count)
    j = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    sx, sy = size[owner, 0], size[owner, 1]
    cell = lo[owner] + np.stack([j % sx, (j // sx) % sy, j // (sx * sy)], axis=1)
    return owner, cell


@dataclass(frozen=True)
class _Grid:
    """Triangles listed by the uniform-grid cells their bounding boxes touch."""

    origin: np.ndarray  # [3]
    h: float  # cell size
    dims: np.ndarray  # [3] int64, cells per axis
    start: np.ndarray  # [C + 1] offsets into `listed`, C = dims.prod()
    listed: np.ndarray  # triangle ids, cell by cell
    box: np.ndarray  # [6, F] each triangle's padded bounding box, low then high corner

    @staticmethod
    def build(tri: np.ndarray, slack: float, cell_scale: float) -> _Grid:
        box_lo, box_hi = tri.min(axis=1) - slack, tri.max(axis=1) + slack
        origin = box_lo.min(axis=0)
        extent = box_hi.max(axis=0) - origin
        h = max(
            cell_scale * float(np.median((box_hi - box_lo).max(axis=1))),
            float(np.prod(extent) / MAX_CELLS) ** (1.0 / 3.0),
            float(extent.max()) / 1024,
            1e-300,
        )
        dims = (np.floor(extent / h) + 1).astype(np.int64)
        tri_lo = np.floor((box_lo - origin) / h).astype(np.int64)
        tri_hi = np.minimum(np.floor((box_hi - origin) / h).astype(np.int64), dims - 1)
        tri_of, cell = _expand(tri_lo, tri_hi)
        key = _cell_key(cell, dims)
        start = np.zeros(int(dims.prod()) + 1, dtype=np.int64)
        np.cumsum(np.bincount(key, minlength=int(dims.prod())), out=start[1:])
        listed = tri_of[np.argsort(key, kind="stable")]
        return _Grid(origin, h, dims, start, listed, np.ascontiguousarray(np.hstack([box_lo, box_hi]).T))

    def cells(self, points: np.ndarray, reach: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last cell ``[N, 3]`` of the cubes points ± reach, clipped to the grid."""
        lo = np.floor((points - reach[:, None] - self.origin) / self.h).astype(np.int64)
        hi = np.floor((points + reach[:, None] - self.origin) / self.h).astype(np.int64)
        return np.maximum(lo, 0), np.minimum(hi, self.dims - 1)


def _cell_key(cell: np.ndarray, dims: np.ndarray) -> np.ndarray:
    return (cell[:, 2] * dims[1] + cell[:, 1]) * dims[0] + cell[:, 0]


def _first_at_min(row: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Position of the first smallest value of each run of equal, sorted `row` entries."""
    group = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    row_min = np.minimum.reduceat(value, group)
    at_min = np.flatnonzero(value == np.repeat(row_min, np.diff(np.r_[group, len(value)])))
    return at_min[np.r_[True, row[at_min][1:] != row[at_min][:-1]]]


def _grid_search(
    points: np.ndarray,
    upper: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    grid: _Grid,
    table: np.ndarray,
    spheres: np.ndarray,
) -> np.ndarray:
    """Closest triangle ``[N]`` among those listed in the cells lo..hi of each point (-1: none).

    ``spheres`` ``[4, F]`` holds each triangle's centroid and radius (a bounding sphere).
    """
    row, cell = _expand(lo, hi)
    key = _cell_key(cell, grid.dims)
    count = grid.start[key + 1] - grid.start[key]
    # Only the cells that meet the ball p ± upper (not just its bounding cube), and not empty.
    corner = grid.origin + cell * grid.h - points[row]
    outside = np.maximum(np.maximum(corner, -(corner + grid.h)), 0.0)
    keep = np.flatnonzero((count > 0) & (np.einsum("ij,ij->i", outside, outside) <= upper[row] ** 2))
    row, cell, key, count = row[keep], cell[keep], key[keep], count[keep]
    offset = np.repeat(grid.start[key] - (np.cumsum(count) - count), count)
    tid = grid.listed[offset + np.arange(count.sum())]
    row, key = np.repeat(row, count), np.repeat(key, count)
    # A triangle whose bounding sphere or box is farther than the upper bound is not the closest.
    p = np.ascontiguousarray(points.T)[:, row]  # [3, M]
    sphere = np.take(spheres, tid, axis=1)  # [4, M]: centre, radius
    reach = upper[row] + sphere[3]
    keep = np.flatnonzero(np.einsum("ij,ij->j", sphere[:3] - p, sphere[:3] - p) <= reach * reach)
    row, tid, key, p = row[keep], tid[keep], key[keep], p[:, keep]
    # A triangle listed in several of these cells counts in one: the cell of the point of its box
    # nearest to p (in the ball whenever the triangle is, so the closest triangle is never dropped).
    box = np.take(grid.box, tid, axis=1)  # [6, M]
    near = np.minimum(np.maximum(p, box[:3]), box[3:])
    gap = np.einsum("ij,ij->j", near - p, near - p)
    cell = np.floor((near - grid.origin[:, None]) / grid.h).astype(np.int64)
    keep = np.flatnonzero((_cell_key(cell.T, grid.dims) == key) & (gap <= upper[row] ** 2))
    row, tid, p = row[keep], tid[keep], p[:, keep]
    win = _first_at_min(row, _squared_distances(p, np.take(table, tid, axis=1)))
    index = np.full(len(points), -1, dtype=np.int64)
    index[row[win]] = tid[win]
    return index


def _ball_search(
    points: np.ndarray,
    upper: np.ndarray,
    tree: cKDTree,
    owner: np.ndarray,
    radius: np.ndarray,
    table: np.ndarray,
) -> np.ndarray:
    """Closest triangle ``[N]`` among those with a proxy within upper + its radius (-1: none)."""
    balls = tree.query_ball_point(points, upper + float(radius.max()), return_sorted=False)
    count = np.fromiter(map(len, balls), dtype=np.int64, count=len(points))
    cand = np.fromiter(itertools.chain.from_iterable(balls), dtype=np.int64, count=count.sum())
    row = np.repeat(np.arange(len(points)), count)
    gap = np.linalg.norm(tree.data[cand] - points[row], axis=1) - radius[cand]
    keep = np.flatnonzero(gap <= upper[row])
    row, tid = row[keep], owner[cand[keep]]
    win = _first_at_min(row, _squared_distances(points.T[:, row], np.take(table, tid, axis=1)))
    index = np.full(len(points), -1, dtype=np.int64)
    index[row[win]] = tid[win]
    return index


def closest_triangles(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, cell_scale: float = CELL_SCALE
) -> tuple[np.ndarray, np.ndarray]:
    """Exact closest triangle and closest point on it for each query point.

    Args:
        points: ``[N, 3]`` finite query points (float64).
        vertices: ``[V, 3]`` vertex positions (float64).
        faces: ``[F, 3]`` vertex indices of non-degenerate triangles (F >= 1).
        cell_scale: Grid cell size over the median triangle extent; changes the speed only.

    Returns:
        Index of the closest face ``[N]`` (int64) and the closest point on it ``[N, 3]`` (float64).
        On ties any of the equally close faces may be returned.
    """
    tri = vertices[faces]  # [F, 3, 3]
    a, b, c = (np.ascontiguousarray(tri[:, k]) for k in range(3))
    centroid = tri.mean(axis=1)
    radius = np.linalg.norm(tri - centroid[:, None], axis=2).max(axis=1)  # [F]
    table = _triangle_table(tri)
    spheres = np.ascontiguousarray(np.column_stack([centroid, radius]).T)  # [4, F]
    scale = max(float(np.abs(vertices).max()), float(np.abs(points).max(initial=0.0)), 1e-300)
    slack = ROUNDING_SLACK * scale

    proxy, owner, proxy_radius = _proxies(tri, PROXY_QUANTILE)
    tree = cKDTree(proxy)
    _, nearest = tree.query(points, k=1, workers=-1)
    index = owner[nearest]
    closest = closest_points_on_triangles(points, a[index], b[index], c[index])
    upper = np.linalg.norm(closest - points, axis=1) + slack  # [N]

    grid = _Grid.build(tri, slack, cell_scale)
    lo, hi = grid.cells(points, upper)
    n_cells = (hi - lo + 1).prod(axis=1)
    near = np.flatnonzero(n_cells <= MAX_CELLS_PER_POINT)
    # A few dozen listings per point near the surface; chunks keep the temporaries bounded.
    step = max(1, MAX_ROWS // 32)
    for s in range(0, len(near), step):
        rows = near[s : s + step]
        found = _grid_search(points[rows], upper[rows], lo[rows], hi[rows], grid, table, spheres)
        # -1 cannot happen (the upper-bound triangle always qualifies); keep it then, not garbage.
        index[rows] = np.where(found >= 0, found, index[rows])
    far = np.flatnonzero(n_cells > MAX_CELLS_PER_POINT)
    if far.size:
        # Chunks of at most MAX_ROWS proxies in all (a single point may exceed it alone).
        reach = upper[far] + float(proxy_radius.max())
        count = tree.query_ball_point(points[far], reach, return_length=True)
        chunk = np.cumsum(count) // MAX_ROWS
        for k in np.unique(chunk):
            rows = far[chunk == k]
            found = _ball_search(points[rows], upper[rows], tree, owner, proxy_radius, table)
            index[rows] = np.where(found >= 0, found, index[rows])
    moved = np.flatnonzero(index != owner[nearest])
    closest[moved] = closest_points_on_triangles(
        points[moved], a[index[moved]], b[index[moved]], c[index[moved]]
    )
    return index, closest
