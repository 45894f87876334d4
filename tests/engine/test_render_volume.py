"""Volume rendering of known shapes, and the fast paths against their reference twins."""

from __future__ import annotations

import numpy as np
import torch

from engine.body import create_body_model
from engine.fields.body_sdf import BodySDFGrid, body_sdf_reference, exact_body_sdf
from engine.geometry.camera import Camera, look_at, pixel_rays
from engine.metrics import iou
from engine.refine.raymarch import ray_box
from engine.render.volume import composite, composite_reference


def _sphere_scene(n=48):
    H = W = n
    K = np.array([[1.2 * n, 0, W / 2], [0, 1.2 * n, H / 2], [0, 0, 1.0]])
    R, t = look_at(np.array([0.0, 0.0, 3.0]), np.zeros(3))
    return Camera(K, R, t, W, H)


def test_sphere_sdf_renders_its_silhouette_and_depth():
    cam = _sphere_scene()
    radius = 0.5
    xs, ys = np.meshgrid(np.arange(cam.width), np.arange(cam.height))
    pix = np.stack([xs.ravel(), ys.ravel()], 1)
    o, d = pixel_rays(cam, pix, "cpu")
    o, d = o.double(), d.double()
    t = torch.linspace(1.5, 4.5, 2048, dtype=torch.float64)[None].expand(len(o), -1)
    pts = o[:, None] + d[:, None] * t[..., None]
    sdf = pts.norm(dim=-1) - radius
    out = composite(t, sdf, 0.002)
    # Analytic ray–sphere intersection.
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - radius**2
    disc = b * b - c
    hit = disc > 0
    t_hit = -b - disc.clamp(min=0).sqrt()
    mask = (out.opacity > 0.5).numpy().reshape(cam.height, cam.width)
    assert iou(mask, hit.numpy().reshape(cam.height, cam.width)) > 0.97
    normal = (o + d * t_hit[:, None]) / radius
    facing = -(normal * d).sum(-1) > 0.5  # VolSDF's depth is biased at grazing angles, by design
    both = (out.opacity > 0.99) & hit & facing
    assert both.sum() > 100
    assert (out.depth[both] - t_hit[both]).abs().max() < 0.01  # within 1 cm of the true surface
    closest = (c - b * b).clamp(min=0).sqrt()  # distance of each ray from the centre
    assert out.opacity[closest > radius + 0.01].max() < 0.05  # clear misses stay empty


def test_composite_matches_reference_loop():
    g = torch.Generator().manual_seed(0)
    t = torch.sort(torch.rand(6, 20, generator=g, dtype=torch.float64) * 2, 1).values
    sdf = torch.randn(6, 20, generator=g, dtype=torch.float64) * 0.1
    rgb = torch.rand(6, 20, 3, generator=g, dtype=torch.float64)
    valid = torch.rand(6, 20, generator=g) > 0.2
    out = composite(t, sdf, 0.05, valid=valid, rgb=rgb)
    op, col = composite_reference(t, sdf, 0.05, valid=valid, rgb=rgb)
    assert torch.allclose(out.opacity, op, atol=1e-10)
    assert torch.allclose(out.rgb, col, atol=1e-10)


def test_ray_box_slab_test():
    o = torch.tensor([[0.0, 0.0, -5.0], [0.0, 3.0, -5.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far = ray_box(o, d, torch.tensor([-1.0, -1, -1]), torch.tensor([1.0, 1, 1]))
    assert torch.allclose(near[0], torch.tensor(4.0)) and torch.allclose(far[0], torch.tensor(6.0))
    assert far[1] < near[1]  # misses


def test_body_sdf_grid_against_exact_and_reference():
    body = create_body_model()
    v = body.canonical_vertices(body.default_shape()).numpy()
    grid = BodySDFGrid(v, body.faces, voxel=0.02, band=0.1)
    g = np.random.default_rng(0)
    pts = v[g.integers(0, len(v), 2000)] + g.normal(0, 0.03, (2000, 3))
    exact = exact_body_sdf(v, body.faces, pts)
    x = torch.as_tensor(pts, dtype=torch.float32)
    fast = grid(x)
    assert (fast.numpy() - exact).__abs__().mean() < 0.005  # trilinear of a 2 cm grid
    clear = np.abs(exact) > 0.02  # one voxel away from the surface the sign must be right
    assert np.mean(np.sign(fast.numpy()[clear]) == np.sign(exact[clear])) > 0.995
    assert torch.allclose(fast, body_sdf_reference(grid, x), atol=1e-5)
