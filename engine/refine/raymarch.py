"""Rendering rays of one frame through the deformer and the canonical fields.

Two samplers:
- `shell` (fast): a no-grad search pass finds where each ray meets the current surface inside the
  avatar's occupied region; only a short window around that crossing is rendered with gradients.
  Rays that never come near the avatar are empty and cost nothing.
- `uniform` (Vid2Avatar-like): uniform samples over the ray's span of the body box, then
  importance samples from their weights; all of them are rendered with gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.refine.avatar import Avatar
from engine.refine.deformer import Deformer, FramePose
from engine.render.volume import composite

FAR = 1.0  # SDF value given to empty space (beyond the shell, or in an empty cell of the occupancy grid)


@dataclass
class RaysOut:
    rgb: torch.Tensor  # [R, 3] foreground colour, premultiplied by opacity
    opacity: torch.Tensor  # [R]
    depth: torch.Tensor  # [R] distance along the ray (0 where empty)
    body_dist: torch.Tensor  # [R] closest approach of the ray's samples to the body (m)
    points_c: torch.Tensor  # [P, 3] canonical points rendered with gradients (for regularisers)
    points_w: torch.Tensor  # [P, 3] the same points in the world
    morph: torch.Tensor | None = None  # [S] geometry-encoder displacement norms of the rendered samples
    # Per ray, from the search pass: whether it crossed the surface, and the canonical point of its sample
    # with the smallest SDF (NaN where no sample was in the occupied region). Rays that the person mask
    # covers but that found no surface pull the SDF down there (losses.silhouette_loss).
    crossed: torch.Tensor | None = None  # [R] bool
    closest_c: torch.Tensor | None = None  # [R, 3]


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Slab test: [R] near/far distances (near > far when the ray misses)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (lo - origins) * inv
    t1 = (hi - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def canonical_points(avatar: Avatar, deformer: Deformer, fp: FramePose, pts: torch.Tensor, bound: float = np.inf):
    """World points [P, 3] → canonical points [P, 3], distance to the body [P] and the geometry encoder's
    displacement [P, 3] (None without one); points farther than `bound` from the body are not mapped."""
    xc, dist = deformer.to_canonical(pts, fp, bound)
    if fp.features is None or avatar.encoder is None:
        return xc, dist, None
    disp = avatar.cfg.morph_factor * avatar.encoder.displacement(fp.features, fp.camera, pts, xc)
    return xc + disp, dist, disp


def occupied(avatar: Avatar, xc: torch.Tensor, dist: torch.Tensor, shell: float) -> torch.Tensor:
    """Which points [P] can hold matter: within `shell` of the posed body and in an occupied canonical cell."""
    return (dist < shell) & avatar.occupancy.contains(xc)


def _field(avatar: Avatar, deformer: Deformer, fp: FramePose, pts: torch.Tensor, shell: float):
    """SDF, features, canonical points, body distance, displacement and occupancy for world points [P, 3];
    empty where not occupied."""
    xc, dist, disp = canonical_points(avatar, deformer, fp, pts, shell)
    sdf, feat = avatar.sdf(xc)
    occ = occupied(avatar, xc, dist, shell)
    sdf = torch.where(occ, sdf, torch.full_like(sdf, FAR))
    return sdf, feat, xc, dist, disp, occ


def _search_field(avatar: Avatar, deformer: Deformer, fp: FramePose, pts: torch.Tensor, shell: float):
    """SDF [P], body distance [P] and canonical points [P, 3] of world points for the search pass: the field
    is only evaluated in occupied space (most of a ray's span is empty, which is FAR without asking)."""
    xc, dist, _ = canonical_points(avatar, deformer, fp, pts, shell)
    near = occupied(avatar, xc, dist, shell)
    sdf = torch.full_like(dist, FAR)
    idx = near.nonzero()[:, 0]  # the compaction is the one host round trip here (len)
    if len(idx):
        sdf[idx] = avatar.sdf(xc[idx])[0]
    return sdf, dist, torch.where(near[:, None], xc, torch.full_like(xc, float("nan")))


def render_rays(avatar: Avatar, deformer: Deformer, fp: FramePose, origins: torch.Tensor, dirs: torch.Tensor,
                coarse: int, fine: int, sampler: str, shell: float, generator: torch.Generator | None = None,
                need_rgb: bool = True) -> RaysOut:
    """Renders rays [R, 3] of one frame (differentiable unless called under no_grad)."""
    dev = origins.device
    R = origins.shape[0]
    # The search spans the box the occupied region can reach around the posed body.
    pad = avatar.occupancy.reach.clamp(max=shell).to(origins)
    verts = fp.vertices.to(origins)
    lo, hi = verts.amin(0) - pad, verts.amax(0) + pad
    near, far = ray_box(origins, dirs, lo, hi)
    hit = far > near + 1e-4
    rgb = torch.zeros(R, 3, device=dev)
    opacity = torch.zeros(R, device=dev)
    depth = torch.zeros(R, device=dev)
    body_dist = torch.full((R,), float("inf"), device=dev)
    crossed = torch.zeros(R, dtype=torch.bool, device=dev)
    closest_c = torch.full((R, 3), float("nan"), device=dev)
    empty = torch.zeros(0, 3, device=dev)
    ids = hit.nonzero()[:, 0]
    if not len(ids):
        return RaysOut(rgb, opacity, depth, body_dist, empty, empty, crossed=crossed, closest_c=closest_c)
    o, d, n0, f0 = origins[ids], dirs[ids], near[ids], far[ids]
    r = len(ids)

    # Search pass (no gradients): stratified samples over the box span.
    u = (torch.arange(coarse, device=dev) + torch.rand(r, coarse, device=dev, generator=generator)) / coarse
    t_c = n0[:, None] + (f0 - n0)[:, None] * u  # [r, C]
    with torch.no_grad():
        pts = o[:, None] + d[:, None] * t_c[..., None]
        sdf_c, dist_c, xc_c = _search_field(avatar, deformer, fp, pts.reshape(-1, 3), shell)
        sdf_c = sdf_c.view(r, coarse)
        body_dist[ids] = dist_c.view(r, coarse).amin(1)
        smin, amin = sdf_c.min(1)
        crossed[ids] = ((sdf_c[:, :-1] > 0) & (sdf_c[:, 1:] <= 0)).any(1)
        closest_c[ids] = xc_c.view(r, coarse, 3).gather(1, amin[:, None, None].expand(-1, 1, 3))[:, 0]

    if sampler == "shell":
        half = (4 * avatar.beta.detach()).clamp(0.02, 0.08)  # a tensor: no host round trip
        # First outside→inside crossing, else the closest approach if it is within the window.
        cross = (sdf_c[:, :-1] > 0) & (sdf_c[:, 1:] <= 0)
        has = cross.any(1)
        first = torch.argmax(cross.int(), dim=1)
        s0 = sdf_c.gather(1, first[:, None])[:, 0]
        s1 = sdf_c.gather(1, (first + 1)[:, None])[:, 0]
        ta = t_c.gather(1, first[:, None])[:, 0]
        tb = t_c.gather(1, (first + 1)[:, None])[:, 0]
        t_cross = ta + (tb - ta) * (s0 / (s0 - s1).clamp(min=1e-8))
        t_close = t_c.gather(1, amin[:, None])[:, 0]
        centre = torch.where(has, t_cross, t_close)
        active = has | (smin < half)
        keep = active.nonzero()[:, 0]
        if not len(keep):
            return RaysOut(rgb, opacity, depth, body_dist, empty, empty, crossed=crossed, closest_c=closest_c)
        v = (torch.arange(fine, device=dev) + torch.rand(len(keep), fine, device=dev, generator=generator)) / fine
        t_f = centre[keep, None] + (2 * v - 1) * half
        t_end = centre[keep] + half
    else:
        with torch.no_grad():
            rr = composite(t_c, sdf_c, avatar.beta)
            w = rr.weights + 1e-5
            pdf = w / w.sum(1, keepdim=True)
            cdf = torch.cat([torch.zeros(r, 1, device=dev), torch.cumsum(pdf, 1)], 1)
            uu = torch.rand(r, fine, device=dev, generator=generator)
            idx = torch.searchsorted(cdf, uu, right=True).clamp(1, coarse) - 1
            step = (f0 - n0) / coarse
            t_imp = t_c.gather(1, idx) + (torch.rand(r, fine, device=dev, generator=generator) - 0.5) * step[:, None]
        keep = torch.arange(r, device=dev)
        t_f, _ = torch.sort(torch.cat([t_c, t_imp], 1), 1)
        t_end = f0
    ok, dk = o[keep], d[keep]
    pts = ok[:, None] + dk[:, None] * t_f[..., None]
    S = t_f.shape[1]
    sdf, feat, xc, dist, disp, occ = _field(avatar, deformer, fp, pts.reshape(-1, 3), shell)
    col = avatar.rgb(xc, feat).view(-1, S, 3) if need_rgb else None
    out = composite(t_f, sdf.view(-1, S), avatar.beta, rgb=col, t_end=t_end)
    rows = ids[keep]
    if need_rgb:
        rgb = rgb.index_put((rows,), out.rgb)
    opacity = opacity.index_put((rows,), out.opacity)
    depth = depth.index_put((rows,), out.depth)
    near_surface = ((sdf.abs() < 0.05) & occ).nonzero()[:, 0]  # one compaction for both arrays
    morph = disp[occ].norm(dim=-1) if disp is not None else None
    return RaysOut(rgb, opacity, depth, body_dist, xc[near_surface], pts.reshape(-1, 3)[near_surface], morph,
                   crossed, closest_c)
