"""Ray casting of a triangle mesh in torch (CPU or CUDA), for rays that all leave one centre.

Every ray of this code base leaves a pinhole camera's centre, so the triangles are rasterised in an
image plane instead of walking a BVH: the rays and the triangles are projected onto the plane at unit
distance along the rays' mean direction (the axis), the rays are binned into a grid of cells over that
plane and sorted by cell (so the rays of a run of cells in one grid row are one contiguous range), and
each triangle is tested against the rays of the cells its projection spans, row by row. The test
itself is exact, in 3D, with the centre at the origin: the signed edge functions d·(vi × vj) decide the
hit and give the barycentrics (a shared edge gives both of its triangles the same value, negated, so no
ray slips between two neighbours), and t comes from the triangle's normal. The nearest hit per ray
(lowest triangle id on a tie) is a `scatter_reduce('amin')` over (t, id) packed into one int64.

Geometry behind the camera is handled by clipping at a near plane `NEAR` along the axis: a triangle
wholly behind it is dropped, one crossing it is rasterised over its clipped part, and hits nearer than
`NEAR` along the axis are not reported (Embree would report them; no camera here is that close).

Memory is bounded by building the (triangle, row) and (triangle, ray) pairs in chunks. The host waits
for the device only for sizes: the grid's, each chunk's, and the number of rays that hit.

`cast_rays_brute` tests every ray against every triangle: the slow, obvious twin of `TorchRaycaster`.
"""

from __future__ import annotations

import torch

NEAR = 1e-5  # scene units (metres): hits nearer than this to the centre, along the axis, are dropped
MIN_AXIS_COS = 0.05  # a ray more than ~87° off the rays' mean direction cannot be projected
PAIR_CHUNK = {"cpu": 1 << 20, "cuda": 1 << 24}  # (triangle, ray) pairs tested at once
ROW_CHUNK = 1 << 21  # (triangle, grid row) pairs built at once
_NO_HIT = torch.iinfo(torch.int64).max


def _triangle_table(rel: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Per triangle (float64 vertices `rel` relative to the centre), in float32 [F, 13]: the x, y and z
    components [0:4], [4:8], [8:12] of the edge cross products v1×v2, v2×v0, v0×v1 (the hit test) and of
    the normal n = (v1-v0)×(v2-v0), then v0·n [12] (the distance).

    Computed in float64 because the vertices are far from the centre compared with the edges: these
    small products of long, nearly parallel vectors lose their digits in float32. The distance uses the
    normal, not the sum of the edge terms, which cancels at grazing angles."""
    v0, v1, v2 = rel.index_select(0, faces.reshape(-1)).view(-1, 3, 3).unbind(1)
    n = torch.linalg.cross(v1 - v0, v2 - v0)
    vecs = torch.stack([torch.linalg.cross(v1, v2), torch.linalg.cross(v2, v0), torch.linalg.cross(v0, v1), n], 2)
    return torch.cat([vecs.reshape(-1, 12), (v0 * n).sum(-1, keepdim=True)], 1).to(torch.float32)


def _edges(dirs: torch.Tensor, tri: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dirs [P, 3], triangle rows [P, 13] → edge functions d·(vi×vj) [P, 3] and d·n [P].

    A shared edge gives both of its triangles the same value, negated (elementwise arithmetic, the
    same for every pair), so a ray on an edge hits both neighbours and none slips between them."""
    m = tri[:, 0:4] * dirs[:, 0:1]
    m.addcmul_(tri[:, 4:8], dirs[:, 1:2]).addcmul_(tri[:, 8:12], dirs[:, 2:3])
    return m[:, :3], m[:, 3]


def _hits(dirs: torch.Tensor, tri: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray-triangle tests of pairs (dirs [P, 3], triangle rows [P, 13]) → hit [P] bool and t [P].

    Inclusive edges, either winding."""
    e, along = _edges(dirs, tri)
    lo, hi = e.aminmax(dim=-1)
    t = tri[:, 12] / along  # ±inf or nan where along == 0: no hit below
    inside = ((lo >= 0) | (hi <= 0)) & ((lo != 0) | (hi != 0))
    return inside & (t > 0) & torch.isfinite(t), t


def _finish(table: torch.Tensor, normals: torch.Tensor, dirs: torch.Tensor, best: torch.Tensor):
    """The output dict (see `TorchRaycaster.cast`) of the winners `best` [N] (packed keys)."""
    n = dirs.shape[0]
    ray = torch.nonzero(best != _NO_HIT)[:, 0]
    prim = best.index_select(0, ray) & 0xFFFFFFFF
    tri = table.index_select(0, prim)
    e, along = _edges(dirs.index_select(0, ray), tri)
    det = e.sum(-1)
    out = {
        "t_hit": torch.full((n,), float("inf"), device=dirs.device),
        "primitive_ids": torch.full((n,), -1, dtype=torch.int64, device=dirs.device),
        "primitive_uvs": torch.zeros(n, 2, device=dirs.device),
        "primitive_normals": torch.zeros(n, 3, device=dirs.device),
    }
    out["t_hit"][ray] = tri[:, 12] / along
    out["primitive_ids"][ray] = prim
    out["primitive_uvs"][ray] = e[:, 1:] / det[:, None]
    out["primitive_normals"][ray] = normals.index_select(0, prim)
    return out


def unit_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit geometric normals (v1 - v0) × (v2 - v0) [F, 3] (0 for a degenerate triangle)."""
    v0, v1, v2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    n = torch.linalg.cross(v1 - v0, v2 - v0)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-30)


class TorchRaycaster:
    """One triangle mesh on a device, cast against bundles of rays from one centre."""

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor) -> None:
        """vertices [V, 3] float (kept in float64 until the centre is subtracted), faces [F, 3] int."""
        self.vertices = vertices.to(torch.float64)
        self.faces = faces.to(torch.int64)
        self.device = vertices.device
        self.normals = unit_normals(vertices.to(torch.float32), self.faces)

    def cast(self, centre: torch.Tensor, dirs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rays `centre` [3] + t·`dirs` [N, 3] (any length; t is in units of it).

        Returns t_hit [N] (inf on a miss), primitive_ids [N] int64 (-1), primitive_uvs [N, 2] (u, v with
        barycentrics (1-u-v, u, v); 0) and primitive_normals [N, 3] (unit, 0).
        """
        dev = self.device
        dirs = dirs.to(dev, torch.float32)
        rel = self.vertices - centre.to(dev, torch.float64)
        table = _triangle_table(rel, self.faces)
        best = torch.full((dirs.shape[0],), _NO_HIT, dtype=torch.int64, device=dev)
        if dirs.shape[0] and self.faces.shape[0]:
            self._rasterise(rel, table, dirs, best)
        return _finish(table, self.normals, dirs, best)

    def _rasterise(self, rel: torch.Tensor, table: torch.Tensor, dirs: torch.Tensor, best: torch.Tensor) -> None:
        """Fills `best` [N] (packed (t, id) of each ray's nearest hit) in place."""
        dev = dirs.device
        # The image plane: the unit-distance plane along the rays' mean direction.
        length, unit, axis = _directions(dirs)
        helper = torch.where(axis[0].abs() < 0.9, torch.eye(3, device=dev)[0], torch.eye(3, device=dev)[1])
        ex = torch.linalg.cross(axis, helper)
        ex = ex / ex.norm()
        ey = torch.linalg.cross(axis, ex)
        basis = torch.stack([ex, ey, axis], 1)  # [3, 3] world → plane coordinates (columns)
        q = unit @ basis  # [N, 3]
        wide = ((q[:, 2] < MIN_AXIS_COS) & (length > 0)).any()
        p = q[:, :2] / q[:, 2:].clamp_min(MIN_AXIS_COS)  # [N, 2] on the plane
        lo, hi = p.amin(0), p.amax(0)
        # One sync: the grid's size sets every shape below.
        *ext, wide = torch.cat([hi - lo, wide.to(lo.dtype)[None]]).tolist()
        if wide:
            raise ValueError("the torch ray caster needs rays within ~87° of their mean direction (a pinhole "
                             "camera's field of view); these spread wider")
        n_rays = dirs.shape[0]
        cell = max((ext[0] * ext[1] / n_rays) ** 0.5, max(ext) / n_rays, 1e-9)
        gw, gh = int(ext[0] / cell) + 1, int(ext[1] / cell) + 1
        cx = ((p[:, 0] - lo[0]) / cell).floor().clamp(0, gw - 1).long()
        cy = ((p[:, 1] - lo[1]) / cell).floor().clamp(0, gh - 1).long()
        key = cy * gw + cx
        # Rays sorted by cell, row-major: the rays of cells x0..x1 of one row are one contiguous range.
        # (A stable sort of int32 keys is a radix sort on the CPU, about twice as fast.)
        order = torch.sort(key.int() if gw * gh < 2**31 else key, stable=True).indices
        start = torch.zeros(gw * gh + 1, dtype=torch.int64, device=dev)
        start[1:] = torch.cumsum(torch.bincount(key, minlength=gw * gh), 0)
        dirs_sorted = dirs.index_select(0, order)
        t_near = _t_near(dirs, axis).index_select(0, order)
        best_sorted = torch.full_like(best, _NO_HIT)

        box, corners, whole = _plane_triangles(rel, self.faces, basis)
        # Margins so that rounding never loses a hit: the tests that count are the exact ones in 3D.
        pad = 1e-3 * cell + 1e-6 * box.abs().clamp_max(1e6).amax(1)  # [F]
        box = box + torch.stack([-pad, -pad, pad, pad], 1)
        gx0 = ((box[:, 0] - lo[0]) / cell).clamp(-1, gw).floor().long().clamp_min(0)
        gy0 = ((box[:, 1] - lo[1]) / cell).clamp(-1, gh).floor().long().clamp_min(0)
        gx1 = ((box[:, 2] - lo[0]) / cell).clamp(-1, gw).floor().long().clamp_max(gw - 1)
        gy1 = ((box[:, 3] - lo[1]) / cell).clamp(-1, gh).floor().long().clamp_max(gh - 1)
        rows = torch.where((gx1 >= gx0) & (gy1 >= gy0) & torch.isfinite(box).all(1), gy1 - gy0 + 1, 0)
        pair_chunk = PAIR_CHUNK.get(dev.type, PAIR_CHUNK["cpu"])
        for f0, f1 in _chunks(torch.cumsum(rows, 0), ROW_CHUNK):
            # (triangle, grid row) pairs of this group of triangles, and each one's range of sorted rays.
            r = rows[f0:f1]
            n_rows = int(r.sum())
            tri = torch.repeat_interleave(torch.arange(f0, f1, device=dev), r, output_size=n_rows)
            row = gy0[tri] + torch.arange(n_rows, device=dev) - (torch.cumsum(r, 0) - r)[tri - f0]
            # Within its bounding box, a whole triangle over several rows covers only its own span of each.
            x0, x1 = gx0.index_select(0, tri), gx1.index_select(0, tri)
            tall = torch.nonzero(whole.index_select(0, tri) & (r.index_select(0, tri - f0) > 1))[:, 0]
            if tall.numel():
                t_tri, band = tri.index_select(0, tall), lo[1] + row.index_select(0, tall) * cell
                span_lo, span_hi = _row_spans(corners.index_select(0, t_tri), band, band + cell,
                                              pad.index_select(0, t_tri))
                x0[tall] = ((span_lo - lo[0]) / cell).clamp(-1, gw).floor().long().clamp_min(x0[tall])
                x1[tall] = ((span_hi - lo[0]) / cell).clamp(-1, gw).floor().long().clamp_max(x1[tall])
            first = start.index_select(0, row * gw + x0)
            count = torch.where(x1 >= x0, start.index_select(0, row * gw + x1.clamp_min(x0) + 1) - first, 0)
            for k0, k1 in _chunks(torch.cumsum(count, 0), pair_chunk):
                ck = count[k0:k1]
                size = int(ck.sum())
                if size == 0:
                    continue
                # The (triangle, ray) pairs: each range expanded, rays as indices into the sorted rays.
                shift = first[k0:k1] - (torch.cumsum(ck, 0) - ck)
                ray = torch.repeat_interleave(shift, ck, output_size=size) + torch.arange(size, device=dev)
                tid = torch.repeat_interleave(tri[k0:k1], ck, output_size=size)
                hit, t = _hits(dirs_sorted.index_select(0, ray), table.index_select(0, tid))
                hit &= t >= t_near.index_select(0, ray)
                _keep_nearest(best_sorted, ray, t, tid, hit)
        best.index_copy_(0, order, best_sorted)


def _keep_nearest(best: torch.Tensor, ray: torch.Tensor, t: torch.Tensor, tid: torch.Tensor,
                  hit: torch.Tensor) -> None:
    """best[ray] = min(best[ray], (t, tid)) over the pairs that hit, in place.

    t > 0, so its float bits order like it: (t, id) packed into one int64 orders by t, then by id."""
    packed = (t.view(torch.int32).to(torch.int64) << 32) | tid
    best.scatter_reduce_(0, ray, torch.where(hit, packed, _NO_HIT), "amin")


def _chunks(cumulative: torch.Tensor, budget: int) -> list[tuple[int, int]]:
    """Index ranges [i0, i1) of consecutive items whose sizes (given as their running sum) stay within
    `budget` per range where possible (an item larger than the budget gets a range of its own)."""
    if cumulative.numel() == 0:
        return []
    total = int(cumulative[-1])
    if total <= budget:
        return [(0, cumulative.numel())]
    marks = torch.arange(budget, total, budget, device=cumulative.device, dtype=cumulative.dtype)
    cuts = torch.searchsorted(cumulative, marks, right=True).tolist()
    edges = sorted({0, *[max(1, i) for i in cuts], cumulative.numel()})
    return list(zip(edges[:-1], edges[1:]))


def _plane_triangles(rel: torch.Tensor, faces: torch.Tensor,
                     basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The triangles on the plane: bounding boxes [F, 4] (x0, y0, x1, y1) of their parts in front of the
    near plane (inf, inf, -inf, -inf for a triangle wholly behind it), projected corners [F, 3, 2], and
    whether the whole triangle is in front [F] (then the corners are its outline)."""
    v = rel.to(basis.dtype) @ basis  # [V, 3] in plane coordinates, z along the axis
    flat = faces.reshape(-1)
    corners = (v[:, :2] / v[:, 2:].clamp_min(NEAR)).index_select(0, flat).view(-1, 3, 2)
    front = (v[:, 2] > NEAR).index_select(0, flat).view(-1, 3)
    whole = front.all(1)
    box = torch.cat([corners.amin(1), corners.amax(1)], 1)
    box = torch.where(whole[:, None], box, torch.tensor([1.0, 1.0, -1.0, -1.0], device=v.device) * float("inf"))
    part = torch.nonzero(front.any(1) & ~whole)[:, 0]  # across the near plane: few, if any
    if part.numel():
        box[part] = _clipped_boxes(v.index_select(0, faces[part].reshape(-1)).view(-1, 3, 3))
    return box, corners, whole


def _clipped_boxes(v: torch.Tensor) -> torch.Tensor:
    """Plane bounding boxes [T, 4] of the parts in front of the near plane of triangles v [T, 3, 3]
    (plane coordinates) that cross it: the corners in front and the edges' crossings of the plane."""
    z = v[..., 2]
    front = z > NEAR
    pts = [v[:, i, :2] / z[:, i : i + 1].clamp_min(NEAR) for i in range(3)]
    valid = [front[:, i] for i in range(3)]
    for i, j in ((0, 1), (1, 2), (2, 0)):
        crosses = front[:, i] != front[:, j]
        s = ((NEAR - z[:, i]) / torch.where(crosses, z[:, j] - z[:, i], torch.ones_like(z[:, i])))[:, None]
        pts.append((v[:, i, :2] + s * (v[:, j, :2] - v[:, i, :2])) / NEAR)
        valid.append(crosses)
    pts_t = torch.stack(pts, 1)  # [T, 6, 2]
    ok = torch.stack(valid, 1)[..., None]
    mins = torch.where(ok, pts_t, float("inf")).amin(1)
    maxs = torch.where(ok, pts_t, -float("inf")).amax(1)
    return torch.cat([mins, maxs], 1)


def _row_spans(corners: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, pad: torch.Tensor):
    """x extent (lo, hi) [R] of triangles (corners [R, 3, 2]) within the bands y0..y1 [R] (padded by
    `pad` [R]): the corners inside the band and the edges' crossings of its two lines. (inf, -inf) where
    the triangle misses the band."""
    x, y = corners[..., 0], corners[..., 1]  # [R, 3]
    lines = torch.stack([y0 - pad, y1 + pad], 1)[:, None, :]  # [R, 1, 2]
    a = y[..., None] - lines  # [R, 3 edges (corner i to i+1), 2 lines]
    b = y.roll(-1, 1)[..., None] - lines
    crosses = (a * b <= 0) & (a != b)
    s = a / torch.where(crosses, a - b, 1.0)
    at = x[..., None] + s * (x.roll(-1, 1) - x)[..., None]
    inside = (a[..., 0] >= 0) & (a[..., 1] <= 0)  # [R, 3] corners within the band
    cand = torch.cat([at.flatten(1), x], 1)  # [R, 9]
    ok = torch.cat([crosses.flatten(1), inside], 1)
    lo = torch.where(ok, cand, float("inf")).amin(1)
    hi = torch.where(ok, cand, -float("inf")).amax(1)
    return lo - pad, hi + pad


def cast_rays_brute(vertices: torch.Tensor, faces: torch.Tensor, centre: torch.Tensor,
                    dirs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every ray against every triangle (small meshes only): the reference `TorchRaycaster` must match."""
    caster = TorchRaycaster(vertices, faces)
    dirs = dirs.to(caster.device, torch.float32)
    rel = caster.vertices - centre.to(caster.device, torch.float64)
    table = _triangle_table(rel, caster.faces)
    n, f = dirs.shape[0], caster.faces.shape[0]
    ray = torch.arange(n, device=caster.device).repeat_interleave(f)
    tid = torch.arange(f, device=caster.device).repeat(n)
    hit, t = _hits(dirs[ray], table[tid])
    hit &= t >= _t_near(dirs, _directions(dirs)[2])[ray]
    best = torch.full((n,), _NO_HIT, dtype=torch.int64, device=caster.device)
    _keep_nearest(best, ray, t, tid, hit)
    return _finish(table, caster.normals, dirs, best)


def _directions(dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lengths [N], unit directions [N, 3] and their normalised mean, the axis [3]."""
    length = dirs.norm(dim=-1)
    unit = dirs / length.clamp_min(1e-30)[:, None]
    axis = unit.mean(0)
    return length, unit, axis / axis.norm().clamp_min(1e-30)


def _t_near(dirs: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """Per ray [N], the t at which it crosses the near plane: nearer hits are not reported (the part of a
    triangle in front of the near plane is all that is rasterised)."""
    return NEAR / (dirs @ axis).clamp_min(1e-30)
