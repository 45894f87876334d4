"""The canonical occupancy grid (engine/refine/occupancy.py): what the sampler covers, on a synthetic dress.

The avatar is given the true clothed shape of a walking dress scene (its SDF grid is the true dress mesh's,
the residual is zero), so what the occupancy grid keeps and what the sampler renders can be checked
against exact ground truth: the true surface is never dropped, empty space is, and rendering with the
occupancy-skipping sampler agrees with a dense twin that asks the field everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.fields.body_sdf import BodySDFGrid
from engine.geometry.camera import pixel_rays
from engine.jobs import run_job
from engine.refine.config import load_preset
from engine.refine.raymarch import FAR, ray_box, render_rays
from engine.refine.session import open_session
from engine.render.volume import composite
from engine.synth.ground_truth import GroundTruth
from engine.synth.scene import SynthConfig, synth_job

# A dress with a flared hem, walking; the stored body is exact so skinning is not what is measured.
DRESS = SynthConfig(frames=4, size=128, motion="walk", garment="dress", seed=1, pose_noise=0.0, voxel=0.012)


@pytest.fixture(scope="module")
def dress(tmp_path_factory):
    """A session of the dress scene whose avatar has the true clothed shape, and the scene's ground truth."""
    out = tmp_path_factory.mktemp("dress") / "s"
    run_job(synth_job(DRESS, out))
    gt = GroundTruth.load(out / "ground_truth")
    session = open_session(out / "project", load_preset("fast"))
    av = session.avatar
    with torch.no_grad():
        av.sdf.body = BodySDFGrid(gt.canonical_vertices, gt.faces, voxel=0.01, margin=0.25, band=0.3)
        av.log_beta.fill_(np.log(0.004))
    return session, gt


def _true_points_in_world(session, gt, i):
    """The true dress surface of frame i taken back to canonical space through the sampler's own warp:
    canonical points [V, 3] and distances to the body [V]."""
    x = torch.as_tensor(gt.posed_vertices(i), dtype=torch.float32)
    return session.deformer.to_canonical(x, session.frame_pose(i))


def test_the_dress_is_far_outside_the_old_shell(dress):
    """The scene is the case the occupancy grid exists for: part of the dress is beyond 20 cm of the body."""
    session, gt = dress
    _, dist = _true_points_in_world(session, gt, 0)
    assert float((dist > 0.2).float().mean()) > 0.05
    assert float(dist.max()) > 0.3


def test_occupancy_never_drops_the_true_surface(dress):
    session, gt = dress
    av = session.avatar
    occ = av.occupancy
    cv = torch.as_tensor(gt.canonical_vertices, dtype=torch.float32)
    start = occ.fraction()
    assert bool(occ.contains(cv).all()), "the initial band must hold the whole dress"
    for _ in range(4):  # updates from the (true) SDF: the grid shrinks to a band around the surface
        av.update_occupancy()
        assert bool(occ.contains(cv).all()), "an update dropped cells the true surface occupies"
    assert occ.fraction() < 0.6 * start, "empty space far from the surface should be skipped"
    # Every frame: the true surface, seen through the sampler's warp, is in occupied space within the shell.
    for i in range(DRESS.frames):
        xc, dist = _true_points_in_world(session, gt, i)
        inside = occ.contains(xc) & (dist < session.cfg.shell)
        assert float(inside.float().mean()) > 0.99, f"frame {i}: only {float(inside.float().mean()):.3f} covered"


def _dense_render(session, i, o, d, samples=1536):
    """Reference twin: every ray sampled densely over its box, the field asked everywhere within the shell
    (no occupancy grid, no search window)."""
    av, fp, shell = session.avatar, session.frame_pose(i), session.cfg.shell
    lo, hi = fp.vertices.amin(0) - shell, fp.vertices.amax(0) + shell
    near, far = ray_box(o, d, lo, hi)
    t = near[:, None] + (far - near)[:, None] * (torch.arange(samples) + 0.5) / samples
    pts = (o[:, None] + d[:, None] * t[..., None]).reshape(-1, 3)
    with torch.no_grad():
        xc, dist = session.deformer.to_canonical(pts, fp)
        sdf = av.sdf(xc)[0]
        sdf = torch.where(dist < shell, sdf, torch.full_like(sdf, FAR)).view(len(o), samples)
        out = composite(t, sdf, av.beta, t_end=far)
    return out.opacity, out.depth


def test_sampler_agrees_with_dense_sampling_over_the_new_region(dress):
    session, gt = dress
    av, cfg = session.avatar, session.cfg
    for _ in range(2):
        av.update_occupancy()
    i = 2
    cam = session.cameras[i]
    mask = session.project.mask(i) > 0
    # Rays inside the person, along its silhouette (where the hem is) and just outside.
    from scipy.ndimage import binary_dilation, binary_erosion
    edge = binary_dilation(mask, iterations=2) & ~binary_erosion(mask, iterations=2)
    rng = np.random.default_rng(0)
    pick = []
    for region in (mask, edge, binary_dilation(mask, iterations=6) & ~mask):
        ys, xs = np.nonzero(region)
        k = rng.choice(len(xs), size=min(150, len(xs)), replace=False)
        pick.append(np.stack([xs[k], ys[k]], 1))
    pix = np.concatenate(pick)
    o, d = pixel_rays(cam, pix, torch.device("cpu"))
    with torch.no_grad():
        out = render_rays(av, session.deformer, session.frame_pose(i), o, d, cfg.coarse_samples, 64, "shell",
                          cfg.shell, need_rgb=False)
    ref_op, ref_depth = _dense_render(session, i, o, d)
    assert float((out.opacity - ref_op).abs().mean()) < 0.03
    both = (out.opacity > 0.9) & (ref_op > 0.9)
    assert int(both.sum()) > 100
    assert float((out.depth[both] - ref_depth[both]).abs().median()) < 0.01
    # The sampler's silhouette is the person's (dress hem included).
    m = torch.as_tensor(mask[pix[:, 1], pix[:, 0]])
    hit = out.opacity > 0.5
    iou = float((hit & m).sum()) / float((hit | m).sum())
    assert iou > 0.85
