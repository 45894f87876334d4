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
from typing import Literal

import numpy as np
import torch
from scipy.spatial import cKDTree

from engine.errors import UserError
from engine.jobs.events import CancelToken, Done, Event, Progress
from engine.mesh import Mesh
from engine.mesh.textured import save_textured
from engine.metrics import iou, m_psnr, m_ssim, mesh_metrics, mpvpe_cm, psnr, ssim
from engine.project import Project
from engine.project_body import load_project_body
from engine.refine.checkpoint import checkpoint_path
from engine.refine.session import Session, median_background, open_session
from engine.render.raycast import render_mesh
from engine.settings import Device, check_choices
from engine.synth.ground_truth import GroundTruth
from engine.texture import BakeConfig, bake_session, load_bake, render_textured, texture_dir

log = logging.getLogger(__name__)

IMAGE_METRICS = ("psnr", "ssim", "m_psnr", "m_ssim", "iou")
MESH_METRICS = ("chamfer_cm", "normal_consistency", "fscore_1cm", "fscore_2cm", "mpvpe_cm")
# The textured mesh's block also says how its silhouette agrees with the volume render's, and compares both
# where the mesh and the person mask overlap.
TEXTURED_METRICS = ("mesh_vs_render_iou", "inside_m_psnr", "inside_m_psnr_neural")


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate."""

    mesh_samples: int = 50_000
    """Surface samples per mesh for Chamfer / normal consistency / F-score."""
    body_model_dir: str | None = None
    """Folder with SMPL/SMPL-X files, for projects fitted with those models."""
    frames: tuple[int, ...] | None = None
    """Frames to score (default: the project's held-out frames)."""
    method: Literal["auto", "avatar", "body_only"] = "auto"
    """What to score: auto (the avatar if fitted, else the body-only baseline), avatar or body_only."""
    mesh_resolution: int = 128
    """Marching-cubes resolution of the avatar mesh that is scored."""
    test_time_pose_steps: int = 40
    """Held-out frames: steps of pose-only fitting to the frame (avatar frozen) before scoring; 0 disables."""
    textured: bool = True
    """Also score the textured mesh (the project's bake for this checkpoint; baked first when there is none)."""
    texture_size: int = 2048
    """Size of the texture baked for scoring when the project has none."""
    device: Device = "cpu"
    """Compute device of the avatar's renders and test-time pose fits."""

    def validate(self) -> None:
        """Raises UserError naming the first bad value."""
        check_choices(self)
        if self.test_time_pose_steps < 0:
            raise UserError(f"test-time pose steps must be 0 or more (got {self.test_time_pose_steps}).")


def evaluate_job(project_dir: str | Path, config: EvalConfig = EvalConfig(),
                 cancel: CancelToken | None = None) -> Iterator[Event]:
    """Yields progress; `Done.result` is the metrics report (a JSON-ready dict)."""
    cancel = cancel or CancelToken()
    config.validate()
    t0 = time.perf_counter()
    project = Project.open(project_dir)
    gt = GroundTruth.load(project.ground_truth_dir) if project.ground_truth_dir else None
    method = config.method
    if method == "auto":
        method = "avatar" if checkpoint_path(project.root).exists() else "body_only"
    if method == "avatar":
        yield from _evaluate_avatar(project, gt, config, cancel, t0)
        return
    body = load_project_body(project, config.body_model_dir).model
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
    mean squared error over that regular subsample estimates the full frame's. Stride 1 scores every pixel.
    """
    rows = []
    for i in frames:
        r = session.render_frame(i, stride=stride, fill=False, normals=False)
        ix = np.ix_(r["ys"], r["xs"])
        image, mask = session.project.frame(i)[ix], session.project.mask(i)[ix]
        rows.append({"psnr": psnr(r["rgb"], image), **({"m_psnr": m_psnr(r["rgb"], image, mask)} if mask.any() else {})})
    return {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "m_psnr") if rows and all(k in r for r in rows)}


def _image_row(i: int, rgb: np.ndarray, pred_mask: np.ndarray, image: np.ndarray, mask: np.ndarray) -> dict:
    row = {"frame": i, "psnr": psnr(rgb, image), "ssim": ssim(rgb, image), "iou": iou(pred_mask, mask)}
    if mask.any():
        row["m_psnr"] = m_psnr(rgb, image, mask)
        row["m_ssim"] = m_ssim(rgb, image, mask)
    return row


def _summary(per_frame: list[dict]) -> dict:
    keys = [k for k in (*IMAGE_METRICS, *MESH_METRICS, *TEXTURED_METRICS) if all(k in r for r in per_frame)]
    return {k: float(np.mean([r[k] for r in per_frame])) for k in keys}


def _textured(session: Session, config: EvalConfig, cancel: CancelToken) -> Iterator[Event]:
    """The project's bake for this checkpoint (baked and saved first when there is none) and its skinning
    weights; the generator returns None when textured scoring is off."""
    if not config.textured:
        return None
    got = load_bake(session.project.root, step=session.step)
    if got is None:
        tm, report = yield from bake_session(session, BakeConfig(size=config.texture_size), cancel)
        save_textured(texture_dir(session.project.root), tm, report)
    else:
        tm = got[0]
    return tm, session.mesh_weights(Mesh(tm.vertices, tm.faces))


def _textured_row(session: Session, textured, i: int, neural_rgb: np.ndarray, opacity: np.ndarray) -> dict:
    """Scores of the textured mesh in frame i, and where mesh, render and mask agree."""
    tm, weights = textured
    image, mask = session.project.frame(i), session.project.mask(i)
    r = render_textured(session, tm, i, weights)
    row = _image_row(i, r.rgb, r.mask, image, mask)
    del row["frame"]
    rendered = opacity > 0.5
    row["mesh_vs_render_iou"] = iou(r.mask, rendered)
    both = mask & r.mask  # where the textured mesh and the person overlap: the texture's own quality
    if both.any():
        row["inside_m_psnr"] = m_psnr(r.rgb, image, both)
        row["inside_m_psnr_neural"] = m_psnr(neural_rgb, image, both)
    return row


def _evaluate_avatar(project: Project, gt: GroundTruth | None, config: EvalConfig, cancel: CancelToken,
                     t0: float) -> Iterator[Event]:
    session = open_session(project.root, None, config.device, config.body_model_dir, require_checkpoint=True)
    frames = list(config.frames) if config.frames is not None else (project.held_out or list(range(project.num_frames)))
    textured = yield from _textured(session, config, cancel)
    yield Progress("evaluate: mesh", 0, 1)
    canonical = session.canonical_mesh(config.mesh_resolution) if gt is not None else None
    yield Progress("evaluate: mesh", 1, 1)
    per_frame = []
    train = set(project.train_frames)
    # Two parts per frame (the test-time pose fit, the render and its scores), so progress moves within a frame.
    n = 2 * len(frames)
    yield Progress("evaluate", 0, n)
    for k, i in enumerate(frames):
        cancel.check()
        if config.test_time_pose_steps > 0 and i not in train:
            session.fit_frame_pose(i, steps=config.test_time_pose_steps, rays=512)
        yield Progress("evaluate", 2 * k + 1, n)
        cancel.check()
        r = session.render_frame(i, normals=False)  # the scores read colour and opacity only
        row = _image_row(i, r["rgb"], r["opacity"] > 0.5, project.frame(i), project.mask(i))
        if textured is not None:
            row["textured"] = _textured_row(session, textured, i, r["rgb"], r["opacity"])
        if gt is not None:
            posed = session.posed_mesh(canonical, i)
            row.update(mesh_metrics(posed.vertices, posed.faces, gt.posed_vertices(i), gt.faces,
                                    n_samples=config.mesh_samples))
            with torch.no_grad():
                verts = session.frame_pose(i).vertices.cpu().numpy()
            true_body = session.body.posed_vertices(gt.body.frame(i))[0].numpy()
            row["mpvpe_cm"] = mpvpe_cm(verts, true_body, align="none")
        per_frame.append(row)
        log.info("frame %d: psnr %.2f%s", i, row["psnr"], f", m_psnr {row['m_psnr']:.2f}" if "m_psnr" in row else "")
        yield Progress("evaluate", 2 * k + 2, n)
    yield Done({
        "project": str(project.root.resolve()),
        "method": "avatar",
        "preset": session.cfg.preset,
        "step": session.step,
        "frames": frames,
        "metrics": _summary(per_frame),
        **({"textured": _summary([r["textured"] for r in per_frame])} if textured is not None else {}),
        "per_frame": per_frame,
        "seconds": round(time.perf_counter() - t0, 2),
    })
