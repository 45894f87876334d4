"""`eval`: score whatever a project holds on its held-out frames.

Until a fitted avatar exists, that is the body-only baseline: the project's posed naked body,
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
from scipy.spatial import cKDTree

from engine.body import BodyConfig, create_body_model
from engine.jobs.events import CancelToken, Done, Event, Progress
from engine.metrics import iou, m_psnr, m_ssim, mesh_metrics, mpvpe_cm, psnr, ssim
from engine.project import Project
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


def median_background(project: Project, frames: list[int], max_frames: int = 40) -> np.ndarray:
    """Per-pixel median of the unmasked pixels over training frames, [H, W, 3] (grey where never seen)."""
    pick = frames[:: max(1, len(frames) // max_frames)]
    stack = np.stack([project.frame(i) for i in pick])
    masks = np.stack([project.mask(i) for i in pick])
    stack[masks] = np.nan
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: never-seen pixels
            bg = np.nanmedian(stack, axis=0)
    return np.nan_to_num(bg, nan=0.5).astype(np.float32)


def evaluate_job(project_dir: str | Path, config: EvalConfig = EvalConfig(),
                 cancel: CancelToken | None = None) -> Iterator[Event]:
    """Yields progress; `Done.result` is the metrics report (a JSON-ready dict)."""
    cancel = cancel or CancelToken()
    t0 = time.perf_counter()
    project = Project.open(project_dir)
    gt = GroundTruth.load(project.ground_truth_dir) if project.ground_truth_dir else None
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
        image, mask = project.frame(i), project.mask(i)
        row = {"frame": i, "psnr": psnr(r.rgb, image), "ssim": ssim(r.rgb, image), "iou": iou(r.mask, mask)}
        if mask.any():
            row["m_psnr"] = m_psnr(r.rgb, image, mask)
            row["m_ssim"] = m_ssim(r.rgb, image, mask)
        if gt is not None:
            row.update(mesh_metrics(verts, body.faces, gt.posed_vertices(i), gt.faces, n_samples=config.mesh_samples))
            true_body = body.posed_vertices(gt.body.frame(i))[0].numpy()
            row["mpvpe_cm"] = mpvpe_cm(verts, true_body, align="none")
        per_frame.append(row)
        yield Progress("evaluate", k + 1, len(frames))

    keys = [k for k in (*IMAGE_METRICS, *MESH_METRICS, "mpvpe_cm") if all(k in r for r in per_frame)]
    summary = {k: float(np.mean([r[k] for r in per_frame])) for k in keys}
    report = {
        "project": str(project.root.resolve()),
        "method": "body_only",
        "frames": frames,
        "metrics": summary,
        "per_frame": per_frame,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    yield Done(report)
