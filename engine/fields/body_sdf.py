"""The naked body's signed distance in canonical space, precomputed on a grid.

The fast preset's SDF is this grid plus a learned residual, so the avatar is a valid body at
step 0. Sampling is trilinear (`grid_sample`); `body_sdf_reference` is the exact twin.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree


def exact_body_sdf(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, band: float | None = None) -> np.ndarray:
    """Signed distance of points [N, 3] to a mesh (negative inside; sign by ray parity).

    With `band`, distances beyond it are only bounded (|value| >= band), which is much faster:
    Embree's closest-point queries are slow far from the surface.
    """
    import open3d as o3d  # only where a body SDF is made (preprocessing); fitting reads the stored grid

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    pts = points.astype(np.float32)
    if band is None:
        inside = scene.compute_occupancy(o3d.core.Tensor(pts), nsamples=3).numpy() > 0.5
        dist = scene.compute_distance(o3d.core.Tensor(pts)).numpy()
    else:
        # A point more than 32 cm from every vertex is outside (no part of a body is that thick), so the
        # ray-parity test, the slow part, only runs nearer than that.
        reach = max(band, 0.3) + 0.02
        d_v, _ = cKDTree(vertices).query(points, distance_upper_bound=reach, workers=-1)
        near = d_v < band + 0.02
        dist = np.maximum(np.minimum(d_v, band + 0.02), band).astype(np.float32)
        if near.any():
            dist[near] = scene.compute_distance(o3d.core.Tensor(pts[near])).numpy()
        maybe_inside = np.isfinite(d_v)
        inside = np.zeros(len(pts), bool)
        if maybe_inside.any():
            inside[maybe_inside] = scene.compute_occupancy(o3d.core.Tensor(pts[maybe_inside]), nsamples=3).numpy() > 0.5
    return np.where(inside, -dist, dist).astype(np.float32)


class BodySDFGrid(torch.nn.Module):
    """Trilinear body SDF on a regular grid over a box (values clamped outside the box)."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, voxel: float = 0.01, margin: float = 0.25,
                 band: float = 0.3) -> None:
        super().__init__()
        lo = vertices.min(0) - margin
        hi = vertices.max(0) + margin
        dims = np.ceil((hi - lo) / voxel).astype(int) + 1
        hi = lo + (dims - 1) * voxel
        axes = [lo[i] + voxel * np.arange(dims[i]) for i in range(3)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        sdf = exact_body_sdf(vertices, faces, grid, band=band).reshape(*dims)  # [X, Y, Z]
        # grid_sample wants [N, C, D, H, W] with x → W, y → H, z → D.
        self.register_buffer("volume", torch.as_tensor(sdf).permute(2, 1, 0)[None, None].contiguous())
        self.register_buffer("lo", torch.as_tensor(lo, dtype=torch.float32))
        self.register_buffer("hi", torch.as_tensor(hi, dtype=torch.float32))
        self.voxel = voxel

    @staticmethod
    def from_state(state: dict) -> BodySDFGrid:
        g = BodySDFGrid.__new__(BodySDFGrid)
        torch.nn.Module.__init__(g)
        for k in ("volume", "lo", "hi"):
            g.register_buffer(k, state[k])
        g.voxel = float(((g.hi - g.lo) / (torch.tensor(g.volume.shape[2:][::-1]) - 1)).mean())
        return g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[P, 3] canonical points → [P] SDF (differentiable in x)."""
        u = (x - self.lo) / (self.hi - self.lo) * 2 - 1
        inside = u.clamp(-1, 1)
        v = F.grid_sample(self.volume.to(x.dtype), inside.view(1, 1, 1, -1, 3), mode="bilinear",
                          padding_mode="border", align_corners=True).view(-1)
        # Outside the box: add the distance to the box so the value keeps growing.
        outside = (x - self.lo).clamp(max=0).norm(dim=-1) + (x - self.hi).clamp(min=0).norm(dim=-1)
        return v + outside


def body_sdf_reference(grid: BodySDFGrid, x: torch.Tensor) -> torch.Tensor:
    """Slow twin of `BodySDFGrid.forward`: explicit trilinear interpolation of the 8 corners."""
    vol = grid.volume[0, 0].permute(2, 1, 0)  # back to [X, Y, Z]
    dims = torch.tensor(vol.shape, dtype=x.dtype)
    f = ((x.clamp(grid.lo, grid.hi) - grid.lo) / (grid.hi - grid.lo)) * (dims - 1)
    i0 = f.floor().long().clamp(max=(dims - 2).long())
    t = f - i0
    out = torch.zeros(len(x), dtype=x.dtype)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = ((t[:, 0] if dx else 1 - t[:, 0]) * (t[:, 1] if dy else 1 - t[:, 1])
                     * (t[:, 2] if dz else 1 - t[:, 2]))
                out += w * vol[i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz].to(x.dtype)
    outside = (x - grid.lo).clamp(max=0).norm(dim=-1) + (x - grid.hi).clamp(min=0).norm(dim=-1)
    return out + outside
