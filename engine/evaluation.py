"""`eval`: score whatever a project holds on its held-out frames.

With a fitted avatar (a checkpoint), its renders of the held-out frames and its meshes posed into
them are scored. Without one, it is the body-only baseline: the project's posed naked body,
rendered with the ground-truth colours where they are known (nearest clothed-surface colour in
canonical space; grey otherwise) over the median background of the training frames, and its
mesh against the true clothed mesh. It is the number every later method has to beat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from engine.body import BodyConfig, create_body_model
from engine.geometry.camera import project as project_points
from engine.jobs.events import CancelToken, Done, Event, Progress
from engine.metrics import iou, m_psnr, m_ssim, mesh_metrics, mpvpe_cm, psnr, ssim
from engine.project import Project
from engine.refine.checkpoint import checkpoint_path
from engine.refine.raymarch import pixel_rays, render_rays
from engine.refine.session import Session, median_background, open_session
from engine.render.raycast import render_mesh
from engine.synth.ground_truth import GroundTruth

log = logging.getLogger(__name__)

IMAGE_METRICS = ("psnr", "ssim", "m_psnr", "m_ssim", "iou")
MESH_METRICS = ("chamfer_cm", "normal_consistency", "fscore_1cm", "fscore_2cm")


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate."""

    mesh_samples: int = 50_000
    """Surface samples per mesh for Chamfer / normal consistency / F-score."""
    body_model_dir: str | None = None
    """Folder with SMPL/SMPL-X files, for projects fitted with those models."""
    frames: tuple[int, ...] | None = None
    """Frames to score (default: the project's held-out frames)."""
    method: str = "auto"
    """What to score: auto (the avatar if fitted, else the body-only baseline), avatar or body_only."""
    mesh_resolution: int = 128
    """Marching-cubes resolution of the avatar mesh that is scored."""
    test_time_pose_steps: int = 40
    """Held-out frames: steps of pose-only fitting to the frame (avatar frozen) before scoring; 0 disables."""


def evaluate_job(project_dir: str | Path, config: EvalConfig = EvalConfig(),
                 cancel: CancelToken | None = None) -> Iterator[Event]:
    """Yields progress; `Done.result` is the metrics report (a JSON-ready dict)."""
    cancel = cancel or CancelToken()
    t0 = time.perf_counter()
    project = Project.open(project_dir)
    gt = GroundTruth.load(project.ground_truth_dir) if project.ground_truth_dir else None
    method = config.method
    if method == "auto":
        method = "avatar" if checkpoint_path(project.root).exists() else "body_only"
    if method == "avatar":
        yield from _evaluate_avatar(project, gt, config, cancel, t0)
        return
    body = create_body_model(BodyConfig(project.body_model, config.body_model_dir))
    params = project.body()
    cameras = project.cameras()
    frames = list(config.frames) if config.frames is not None else (project.held_out or list(range(project.num_frames)))

    # Body-only baseline appearance.
    canon = body.canonical_vertices(params.shape).numpy()
    if gt is not None:
        _, nn = cKDTree(gt.canonical_vertices).query(canon)
        colors = gt.colors[nn]
    else:
        colors = np.full((len(canon), 3), 0.5, np.float32)
    background = median_background(project, project.train_frames or frames)

    per_frame = []
    for k, i in enumerate(frames):
        cancel.check()
        verts = body.posed_vertices(params.frame(i))[0].numpy()
        r = render_mesh(verts, body.faces, colors, cameras[i], background)
        row = _image_row(i, r.rgb, r.mask, project.frame(i), project.mask(i))
        if gt is not None:
            row.update(mesh_metrics(verts, body.faces, gt.posed_vertices(i), gt.faces, n_samples=config.mesh_samples))
            true_body = body.posed_vertices(gt.body.frame(i))[0].numpy()
            row["mpvpe_cm"] = mpvpe_cm(verts, true_body, align="none")
        per_frame.append(row)
        yield Progress("evaluate", k + 1, len(frames))

    summary = _summary(per_frame)
    report = {
        "project": str(project.root.resolve()),
        "method": "body_only",
        "frames": frames,
        "metrics": summary,
        "per_frame": per_frame,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    yield Done(report)


def live_frames(project: Project, n: int = 2) -> list[int]:
    """Up to n of the project's held-out frames, spread over the video: what a live curve scores."""
    held = project.held_out
    if len(held) <= n:
        return held
    if n == 1:
        return [held[len(held) // 2]]
    return [held[round(k * (len(held) - 1) / (n - 1))] for k in range(n)]


def live_scores(session: Session, frames: list[int], stride: int = 2) -> dict[str, float]:
    """Mean PSNR and masked PSNR (the person's pixels only) of the avatar's renders of `frames` as it stands.

    Cheap enough to follow training: no test-time pose fit, so a held-out frame's body is the
    interpolation of its refined neighbours (`Session.base_params`); `eval` fits it and scores more.
    Only the colour is rendered (no normals), at every `stride`-th pixel of every `stride`-th row: the
    mean squared error over that regular subsample estimates the full frame's (stride 2: a quarter of
    the rays, within a few hundredths of a dB on the demo). Stride 1 scores every pixel, exactly as
    scoring `Session.render_frame`'s image does (a test checks both).
    """
    rows = []
    for i in frames:
        rgb, ys, xs = render_rgb_grid(session, i, stride)
        image, mask = session.project.frame(i)[np.ix_(ys, xs)], session.project.mask(i)[np.ix_(ys, xs)]
        rows.append({"psnr": psnr(rgb, image), **({"m_psnr": m_psnr(rgb, image, mask)} if mask.any() else {})})
    return {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "m_psnr") if rows and all(k in r for r in rows)}


@torch.no_grad()
def render_rgb_grid(session: Session, i: int, stride: int = 1, chunk: int = 8192
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The avatar's composited colour of frame i at the pixels (ys[r], xs[c]) of a `stride` grid.

    The same rays, samples, body box and background as `Session.render_frame` (its reference twin:
    at stride 1 the colours are the same), without the normals and depth that cost as much again.

    Returns:
        rgb [h, w, 3] in [0, 1], ys [h] and xs [w]: the rows and columns of the frame that were rendered.
    """
    if stride < 1:
        raise ValueError(f"stride must be at least 1 (got {stride})")
    cam = session.cameras[i]
    fp = session.frame_pose(i)
    H, W = cam.height, cam.width
    ys, xs = np.arange(0, H, stride), np.arange(0, W, stride)
    bg = torch.sigmoid(session.avatar.background).cpu().numpy()
    rgb = bg[np.ix_(ys, xs)].copy()
    # The person's box with a margin, as Session.render_frame draws it; outside it only the background shows.
    uv = project_points(fp.vertices, cam)
    m = 0.25 * cam.K[0, 0] / max(float(np.median(cam.t[2:])), 1.0) + 8
    x0, y0 = np.clip(np.floor(uv.min(0) - m), 0, [W - 1, H - 1]).astype(int)
    x1, y1 = np.clip(np.ceil(uv.max(0) + m), 0, [W - 1, H - 1]).astype(int)
    ri = np.flatnonzero((ys >= y0) & (ys <= y1))
    ci = np.flatnonzero((xs >= x0) & (xs <= x1))
    rr, cc = np.meshgrid(ri, ci, indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    pix = np.stack([xs[cc], ys[rr]], 1)
    cfg = session.cfg
    for s in range(0, len(pix), chunk):
        p = pix[s : s + chunk]
        o, d = pixel_rays(cam, p, session.device)
        out = render_rays(session.avatar, session.deformer, fp, o, d, cfg.coarse_samples, cfg.fine_samples,
                          cfg.sampler, cfg.shell)
        op = out.opacity.cpu().numpy()
        r, c = rr[s : s + chunk], cc[s : s + chunk]
        rgb[r, c] = out.rgb.cpu().numpy() + (1 - op[:, None]) * rgb[r, c]
    return np.clip(rgb, 0, 1), ys, xs


def _image_row(i: int, rgb: np.ndarray, pred_mask: np.ndarray, image: np.ndarray, mask: np.ndarray) -> dict:
    row = {"frame": i, "psnr": psnr(rgb, image), "ssim": ssim(rgb, image), "iou": iou(pred_mask, mask)}
    if mask.any():
        row["m_psnr"] = m_psnr(rgb, image, mask)
        row["m_ssim"] = m_ssim(rgb, image, mask)
    return row


def _summary(per_frame: list[dict]) -> dict:
    keys = [k for k in (*IMAGE_METRICS, *MESH_METRICS, "mpvpe_cm") if all(k in r for r in per_frame)]
    return {k: float(np.mean([r[k] for r in per_frame])) for k in keys}


def _evaluate_avatar(project: Project, gt: GroundTruth | None, config: EvalConfig, cancel: CancelToken,
                     t0: float) -> Iterator[Event]:
    from engine.refine.export import posed_mesh

    session = open_session(project.root, None, "cpu", config.body_model_dir, require_checkpoint=True)
    frames = list(config.frames) if config.frames is not None else (project.held_out or list(range(project.num_frames)))
    yield Progress("evaluate: mesh", 0, 1)
    canonical = session.canonical_mesh(config.mesh_resolution) if gt is not None else None
    yield Progress("evaluate: mesh", 1, 1)
    per_frame = []
    train = set(project.train_frames)
    for k, i in enumerate(frames):
        cancel.check()
        if config.test_time_pose_steps > 0 and i not in train:
            session.fit_frame_pose(i, steps=config.test_time_pose_steps, rays=512)
        r = session.render_frame(i)
        row = _image_row(i, r["rgb"], r["opacity"] > 0.5, project.frame(i), project.mask(i))
        if gt is not None:
            posed = posed_mesh(session, canonical, i)
            row.update(mesh_metrics(posed.vertices, posed.faces, gt.posed_vertices(i), gt.faces,
                                    n_samples=config.mesh_samples))
            with torch.no_grad():
                fp = session.frame_pose(i)
                verts = fp.vertices
            true_body = session.body.posed_vertices(gt.body.frame(i))[0].numpy()
            row["mpvpe_cm"] = mpvpe_cm(verts, true_body, align="none")
        per_frame.append(row)
        yield Progress("evaluate", k + 1, len(frames))
    yield Done({
        "project": str(project.root.resolve()),
        "method": "avatar",
        "preset": session.cfg.preset,
        "step": session.step,
        "frames": frames,
        "metrics": _summary(per_frame),
        "per_frame": per_frame,
        "seconds": round(time.perf_counter() - t0, 2),
    })
