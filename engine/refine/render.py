"""Rendering whole frames of the refined avatar: the one frame renderer and the one person box.

Live previews, "Render this frame", live held-out scores, `eval` and the figures all render through
`render_frame`; training draws its rays inside `person_box` too.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.geometry.camera import Camera, pixel_rays, project
from engine.refine.avatar import Avatar
from engine.refine.config import RefineConfig
from engine.refine.deformer import Deformer, FramePose
from engine.refine.raymarch import canonical_points, render_rays

# Frame renders look this far (metres at the body's depth, plus pixels) around the projected body, or as
# far as the avatar's occupied region reaches if that is farther: beyond, only the background shows.
RENDER_MARGIN_M = 0.25
RENDER_MARGIN_PX = 8.0
# Training rays: most of them fall within this many pixels of the projected body.
TRAIN_MARGIN_PX = 15.0


def person_box(camera: Camera, vertices: np.ndarray | torch.Tensor, margin_m: float = 0.0, margin_px: float = 0.0):
    """Image box of the projected body [V, 3] grown by `margin_m` metres (at the camera's distance) plus
    `margin_px` pixels, clipped to the image: (x, y) of its low and high corners, [2] each (float; tensors on
    the vertices' device when given a tensor)."""
    uv = project(vertices, camera)
    m = margin_m * camera.K[0, 0] / max(float(camera.t[2]), 1.0) + margin_px
    top = [camera.width - 1, camera.height - 1]
    if isinstance(uv, torch.Tensor):
        top_t = torch.tensor(top, dtype=uv.dtype, device=uv.device)
        return ((uv.amin(0) - m).clamp(min=0).minimum(top_t), (uv.amax(0) + m).clamp(min=0).minimum(top_t))
    return np.clip(uv.min(0) - m, 0, top), np.clip(uv.max(0) + m, 0, top)


def box_pixels(camera: Camera, lo: torch.Tensor, hi: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n integer pixels [n, 2] (x, y) drawn uniformly from the box lo..hi ([2] each, inclusive, as `person_box`
    gives), clipped to the image, on the generator's device."""
    p = lo + (hi + 1 - lo) * torch.rand(n, 2, generator=gen, device=gen.device)
    size = torch.tensor([camera.width, camera.height], device=gen.device)
    return p.long().clamp(min=0).minimum(size - 1)


@torch.no_grad()
def world_normals(avatar: Avatar, deformer: Deformer, fp: FramePose, x: torch.Tensor, h: float = 0.004
                  ) -> torch.Tensor:
    """Unit normals of the posed surface at world points [P, 3] (central differences)."""
    cols = []
    for k in range(3):
        e = torch.zeros(3, device=x.device)
        e[k] = h
        sp, _ = avatar.sdf(canonical_points(avatar, deformer, fp, x + e)[0])
        sm, _ = avatar.sdf(canonical_points(avatar, deformer, fp, x - e)[0])
        cols.append((sp - sm) / (2 * h))
    g = torch.stack(cols, -1)
    return g / g.norm(dim=-1, keepdim=True).clamp(min=1e-8)


@torch.no_grad()
def render_frame(avatar: Avatar, deformer: Deformer, fp: FramePose, camera: Camera, cfg: RefineConfig,
                 stride: int = 1, fill: bool = True, normals: bool = True, chunk: int = 8192,
                 coarse: int | None = None, fine: int | None = None) -> dict[str, np.ndarray]:
    """Renders frame `fp` of the avatar through `camera`: numpy arrays, composited over the background.

    Rays go through every `stride`-th pixel of every `stride`-th row (the lattice of pixels whose x and y
    are multiples of the stride; s² fewer rays), and only inside the person's box. With `fill` each
    rendered pixel fills its stride × stride block, so the arrays have the frame's size (a cheap live
    preview); without it the arrays are the lattice itself, rows `ys` and columns `xs` of the frame (a
    regular subsample for scoring). Stride 1 renders every pixel either way.

    Returns:
        rgb [h, w, 3] in [0, 1]; opacity [h, w]; depth [h, w] (0 where empty); normals [h, w, 3] (world, unit;
        0 where empty; only with `normals`); ys [h] and xs [w], the frame rows and columns of the arrays.
    """
    if stride < 1:
        raise ValueError(f"stride must be at least 1 (got {stride})")
    H, W = camera.height, camera.width
    reach = min(cfg.shell, max(RENDER_MARGIN_M, float(avatar.occupancy.reach)))
    lo, hi = person_box(camera, fp.vertices.cpu().numpy(), reach, RENDER_MARGIN_PX)
    x0, y0 = np.floor(lo).astype(int)
    x1, y1 = np.ceil(hi).astype(int)
    ys, xs = np.arange(0, H, stride), np.arange(0, W, stride)
    # Lattice points whose block meets the box (the first one may start just before it).
    ri = np.flatnonzero((ys >= y0 - y0 % stride) & (ys <= y1))
    ci = np.flatnonzero((xs >= x0 - x0 % stride) & (xs <= x1))
    rr, cc = (a.ravel() for a in np.meshgrid(ri, ci, indexing="ij"))
    pix = np.stack([xs[cc], ys[rr]], 1)
    h, w = len(ys), len(xs)
    fg = np.zeros((h, w, 3), np.float32)
    opacity = np.zeros((h, w), np.float32)
    depth = np.zeros((h, w), np.float32)
    nrm = np.zeros((h, w, 3), np.float32) if normals else None
    for s in range(0, len(pix), chunk):
        p, r, c = pix[s : s + chunk], rr[s : s + chunk], cc[s : s + chunk]
        o, d = pixel_rays(camera, p, fp.transforms.device)
        out = render_rays(avatar, deformer, fp, o, d, coarse or cfg.coarse_samples, fine or cfg.fine_samples,
                          cfg.sampler, cfg.shell)
        op = out.opacity.cpu().numpy()
        fg[r, c] = out.rgb.cpu().numpy()
        opacity[r, c] = op
        depth[r, c] = out.depth.cpu().numpy()
        if normals and (op > 0.5).any():
            hit = torch.as_tensor(op > 0.5, device=o.device)
            x = o[hit] + d[hit] * out.depth[hit, None]
            nrm[r[op > 0.5], c[op > 0.5]] = world_normals(avatar, deformer, fp, x).cpu().numpy()
    bg = torch.sigmoid(avatar.background).cpu().numpy()
    if fill and stride > 1:
        # Each lattice value fills its block, up to the box's far edges (beyond them: background).
        def grow(a: np.ndarray) -> np.ndarray:
            return np.repeat(np.repeat(a, stride, 0), stride, 1)[:H, :W]

        inside = np.zeros((H, W), bool)
        inside[y0 - y0 % stride : y1 + 1, x0 - x0 % stride : x1 + 1] = True
        fg, opacity, depth = (np.where(inside[..., None] if a.ndim == 3 else inside, grow(a), 0)
                              for a in (fg, opacity, depth))
        nrm = np.where(inside[..., None], grow(nrm), 0) if normals else None
        ys, xs = np.arange(H), np.arange(W)
    else:
        bg = bg[np.ix_(ys, xs)]
    rgb = np.clip(fg + (1 - opacity[..., None]) * bg, 0, 1).astype(np.float32)
    out = {"rgb": rgb, "opacity": opacity.astype(np.float32), "depth": depth.astype(np.float32), "ys": ys, "xs": xs}
    if normals:
        out["normals"] = nrm.astype(np.float32)
    return out
