"""How well preprocessing recovers a synthetic scene: its project against the scene's ground truth.

The preprocessed project and the scene live in different world frames (the preprocessed camera is
Vid2Avatar's fixed one, the synthetic camera looks at the person from its own place), so 3D
comparisons are made in camera coordinates, frame by frame, where both describe the same view.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from engine.body import BodyConfig, create_body_model
from engine.geometry.camera import Camera, project
from engine.metrics import iou
from engine.metrics.body import mpvpe_cm
from engine.project import Project
from engine.synth.ground_truth import GroundTruth


def _to_camera(vertices: np.ndarray, camera: Camera) -> np.ndarray:
    return vertices @ camera.R.T + camera.t


def _mean(values: list[float]) -> float | None:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else None


def preprocess_accuracy(project_dir: str | Path, scene_dir: str | Path, body_model_dir: str | None = None) -> dict:
    """Compares a project made by `preprocess` from a synthetic scene's video.mp4 with that scene.

    Args:
        project_dir: the preprocessed project.
        scene_dir: the `synth` output folder (holds project/ and ground_truth/).

    Returns:
        A JSON-ready dict of means over the frames:
            mask_iou: person masks vs the true masks;
            keypoint_error_px: detected keypoints (confidence ≥ 0.5) vs the true body's projected
                keypoints, in pixels of the project's images;
            fit_keypoint_error_px: the fitted body's projected keypoints vs the true ones;
            mpvpe_cm / mpvpe_scale_cm / mpvpe_procrustes_cm: fitted vs true naked body vertices in
                camera coordinates after translation / scale+translation / similarity alignment
                (None when the project uses another body model than the scene);
            frames: number of frames compared.
    """
    proj = Project.open(project_dir)
    scene_dir = Path(scene_dir)
    gt = GroundTruth.load(scene_dir / "ground_truth")
    gt_proj = Project.open(scene_dir / "project")
    gt_cam = Camera.from_dict(gt.scene["camera"])
    cam = proj.cameras()[0]
    src = np.asarray(proj.meta["source"]["frame_indices"], np.int64)  # [N] scene frame of each project frame
    n = proj.num_frames
    sx, sy = cam.width / gt_cam.width, cam.height / gt_cam.height  # project px per scene px

    true_body = create_body_model(BodyConfig(gt.scene["body_model"]))
    fitted_body = create_body_model(BodyConfig(proj.body_model, body_model_dir))
    fitted = proj.body()
    with torch.no_grad():
        true_verts = true_body.posed_vertices(gt.body).numpy()[src]  # [N, V, 3]
        true_kp = project(true_body.keypoints(torch.as_tensor(true_verts)).numpy(), gt_cam) * [sx, sy]  # [N, K, 2]
        fit_verts = fitted_body.posed(fitted)[1].numpy()  # [N, V', 3]
        fit_kp = project(fitted_body.keypoints(torch.as_tensor(fit_verts)).numpy(), cam)

    keypoints = proj.keypoints()
    ious, kp_err, fit_err, mp_t, mp_s, mp_p = [], [], [], [], [], []
    same_model = fitted_body.name == true_body.name
    for i in range(n):
        true_mask = gt_proj.mask(int(src[i]))
        if true_mask.shape != (cam.height, cam.width):
            true_mask = cv2.resize(true_mask.astype(np.uint8), (cam.width, cam.height),
                                   interpolation=cv2.INTER_NEAREST) > 0
        ious.append(iou(proj.mask(i), true_mask))
        if keypoints is not None:
            ok = keypoints[i, :, 2] >= 0.5
            if ok.any():
                kp_err.append(float(np.linalg.norm(keypoints[i, ok, :2] - true_kp[i, ok], axis=-1).mean()))
        fit_err.append(float(np.linalg.norm(fit_kp[i] - true_kp[i], axis=-1).mean()))
        if same_model:
            a, b = _to_camera(fit_verts[i], cam), _to_camera(true_verts[i], gt_cam)
            mp_t.append(mpvpe_cm(a, b, "translation"))
            mp_s.append(mpvpe_cm(a, b, "scale_translation"))
            mp_p.append(mpvpe_cm(a, b, "procrustes"))
    return {
        "frames": n,
        "mask_iou": _mean(ious),
        "mask_iou_min": float(np.min(ious)),
        "keypoint_error_px": _mean(kp_err),
        "fit_keypoint_error_px": _mean(fit_err),
        "mpvpe_cm": _mean(mp_t),
        "mpvpe_scale_cm": _mean(mp_s),
        "mpvpe_procrustes_cm": _mean(mp_p),
        "mpvpe_cm_per_frame": [round(x, 2) for x in mp_t],
    }
