"""Body fit (issue 4): 2D keypoints + person masks → shared shape, per-frame pose and placement.

The main fixture renders a small clothed synthetic `turn` clip, makes detector-like keypoints by
projecting the true body keypoints (2 px noise, some dropped with garbage coordinates, two frames
with no keypoints at all) and fits with the scene's own camera.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np
import pytest
import roma
import torch

from engine.body import BodyParams, create_body_model
from engine.body.base import KEYPOINT_NAMES
from engine.body.smpl_model import SmplBody
from engine.errors import UserError
from engine.geometry.camera import Camera, project
from engine.jobs import Cancelled, CancelToken, Done, Log, Progress, run_job
from engine.metrics import iou, mpvpe_cm
from engine.preprocess.bodyfit import (
    BodyFitConfig,
    BodyFitResult,
    _check_inputs,
    _Fit,
    fit_body_job,
    real_video_camera,
)
from engine.project import Project
from engine.render.raycast import render_mesh
from engine.synth.ground_truth import GroundTruth
from engine.synth.motion import motion
from engine.synth.scene import SynthConfig, synth_job

from .smpl_fixture import write_smpl_model

log = logging.getLogger(__name__)

SCENE = SynthConfig(frames=24, size=192, motion="turn", garment="shirt", seed=1, voxel=0.012)
NOISE_PX = 2.0
EMPTY_FRAMES = (9, 10)  # frames whose keypoints are all missing
KP = {name: i for i, name in enumerate(KEYPOINT_NAMES)}


def _keypoints(
    body,
    params: BodyParams,
    camera: Camera,
    rng: np.random.Generator,
    noise: float = NOISE_PX,
    drop: float = 0.08,
) -> np.ndarray:
    """Detector-like keypoints [N, 23, 3]: true keypoints projected, noise added, some dropped."""
    with torch.no_grad():
        uv = project(body.keypoints(body.posed_vertices(params)).double().numpy(), camera)
    kp = np.concatenate([uv + rng.normal(0.0, noise, uv.shape), np.ones((*uv.shape[:2], 1))], axis=-1)
    dropped = rng.random(uv.shape[:2]) < drop
    kp[dropped, 2] = 0.0
    # A dropped keypoint's coordinates are garbage (far away, or NaN): confidence 0 must not pull.
    kp[dropped, :2] = rng.uniform(-5000, 5000, (int(dropped.sum()), 2))
    kp[dropped & (rng.random(uv.shape[:2]) < 0.5), :2] = np.nan
    return kp


@pytest.fixture(scope="module")
def anny():
    return create_body_model()


@pytest.fixture(scope="module")
def turn_fit(tmp_path_factory, anny):
    """(ground truth, camera, masks, keypoints, result, seconds, events) of the fit on the synthetic turn."""
    out = tmp_path_factory.mktemp("bodyfit") / "scene"
    run_job(synth_job(SCENE, out))
    proj = Project.open(out / "project")
    gt = GroundTruth.load(out / "ground_truth")
    camera = proj.cameras()[0]
    masks = np.stack([proj.mask(i) for i in range(proj.num_frames)])
    kp = _keypoints(anny, gt.body, camera, np.random.default_rng(0))
    kp[list(EMPTY_FRAMES), :, 2] = 0.0
    start = time.perf_counter()
    events = list(fit_body_job(anny, kp, masks, camera))
    seconds = time.perf_counter() - start
    result = events[-1].result
    return gt, camera, masks, kp, result, seconds, events


def _mpvpe(body, fitted: BodyParams, true: BodyParams, *aligns: str) -> list[np.ndarray]:
    """Per-frame MPVPE (cm) of the posed body vertices, for each alignment."""
    with torch.no_grad():
        a, b = body.posed_vertices(fitted).numpy(), body.posed_vertices(true).numpy()
    return [np.array([mpvpe_cm(a[i], b[i], align) for i in range(len(a))]) for align in aligns]


# ---- accuracy on the synthetic turn ------------------------------------------------------------------


def test_turn_fit_accuracy(turn_fit, anny):
    gt, _, masks, kp, res, seconds, _ = turn_fit
    assert isinstance(res, BodyFitResult)
    n = SCENE.frames
    p = res.params
    assert (
        p.pose.shape == (n, anny.num_bones, 3)
        and p.global_orient.shape == (n, 3)
        and p.transl.shape == (n, 3)
    )
    assert p.shape.shape == (anny.shape_dim,)
    for t in (p.shape, p.pose, p.global_orient, p.transl):
        assert torch.isfinite(t).all()
    # Only the semantic bones are posed; the other bones stay at rest.
    others = [j for j in range(anny.num_bones) if j not in anny.semantic_bones.values()]
    assert p.pose[:, others].abs().max() == 0

    err_t, err_st, err_pa = _mpvpe(anny, p, gt.body, "translation", "scale_translation", "procrustes")
    log.info(
        "turn %d frames %d px: MPVPE translation %.2f cm, scale+translation %.2f cm, Procrustes %.2f cm; "
        "keypoint error %.2f px; mask IoU %.3f; %.1f s",
        n,
        SCENE.size,
        err_t.mean(),
        err_st.mean(),
        err_pa.mean(),
        np.nanmean(res.keypoint_error_px),
        res.mask_iou.mean(),
        seconds,
    )
    # A single camera cannot tell a tall person far away from a short one nearby (the shape prior keeps
    # the height average), so the comparison aligns scale as well, as the issue specifies.
    assert err_st.mean() <= 5.0
    assert err_pa.mean() <= 4.0
    assert err_st.max() <= 8.0
    # Silhouette of the naked fitted body against the clothed mask.
    assert res.mask_iou.shape == (n,) and res.mask_iou.mean() >= 0.85 and res.mask_iou.min() >= 0.8
    # Reprojection close to the 2 px noise; frames with no keypoints have no error to report.
    ke = res.keypoint_error_px
    assert np.isnan(ke[list(EMPTY_FRAMES)]).all()
    assert np.nanmean(ke) <= 1.5 * NOISE_PX * math.sqrt(math.pi / 2)  # mean |2D gaussian| = 2.5 px
    assert np.nanmax(ke) <= 6.0


def test_mask_iou_is_the_rendered_silhouette(turn_fit, anny):
    """The reported IoU equals the IoU of the fitted body rendered by the project's ray caster."""
    _, camera, masks, _, res, _, _ = turn_fit
    for i in (0, 13):
        with torch.no_grad():
            verts = anny.posed_vertices(res.params.frame(i))[0].numpy()
        sil = render_mesh(verts, anny.faces, np.ones((len(verts), 3)), camera, supersample=1).mask
        assert res.mask_iou[i] == pytest.approx(iou(sil, masks[i]), abs=1e-9)


def test_turn_is_followed_all_the_way_round(turn_fit):
    """The person turns a full circle: every frame's facing is right (no front/back flip)."""
    gt, _, _, _, res, _, _ = turn_fit
    R_fit = roma.rotvec_to_rotmat(res.params.global_orient)
    R_true = roma.rotvec_to_rotmat(gt.body.global_orient)
    err = np.degrees(roma.rotmat_geodesic_distance(R_fit, R_true).numpy())
    assert err.max() < 20.0, err.round(1)


def test_frames_without_keypoints_are_interpolated(turn_fit, anny):
    gt, _, _, _, res, _, _ = turn_fit
    p = res.params
    for i in EMPTY_FRAMES:
        assert torch.isfinite(p.pose[i]).all() and torch.isfinite(p.transl[i]).all()
    # Between their neighbours, and still close to the truth.
    a, b = EMPTY_FRAMES[0] - 1, EMPTY_FRAMES[-1] + 1
    for i in EMPTY_FRAMES:
        s = (i - a) / (b - a)
        lerp = (1 - s) * p.transl[a] + s * p.transl[b]
        assert (p.transl[i] - lerp).norm() < 0.05
    (err,) = _mpvpe(anny, p, gt.body, "scale_translation")
    assert err[list(EMPTY_FRAMES)].max() <= 8.0


def test_progress_and_log_events(turn_fit):
    *_, events = turn_fit
    stages = [e.stage for e in events if isinstance(e, Progress)]
    assert list(dict.fromkeys(stages)) == ["initialise", "fit poses", "refine", "evaluate"]
    for e in events:
        if isinstance(e, Progress):
            assert 0 <= e.done <= e.total
    assert isinstance(events[-1], Done)
    logs = [e for e in events if isinstance(e, Log)]
    assert any("interpolated" in e.message and e.level == "warning" for e in logs)


# ---- the fast forward model agrees with the body model ----------------------------------------------


def _check_forward(body, n: int = 3):
    pose, orient, transl = motion(body, "walk", n, np.random.default_rng(2))
    cam = real_video_camera(200, 300)
    kp = np.zeros((n, len(KEYPOINT_NAMES), 3))
    fit = _Fit(
        body, *_check_inputs(kp + [100.0, 100.0, 1.0], None, cam), cam, BodyFitConfig(silhouette_vertices=50)
    )
    shape = body.default_shape() + 0.05
    # Y-up rotations of the fitted bones that reproduce the motion's pose through `local_rotvec`.
    basis = body.local_rotvec(torch.eye(3))  # rows: images of the unit vectors
    theta = pose[:, fit.bone_idx] @ torch.linalg.inv(basis)
    assert torch.allclose(fit.pose_of(theta), pose, atol=1e-6)
    kps, verts = fit.body_points(shape, theta, with_silhouette=True)
    ref = body.posed_vertices(BodyParams(shape, pose, torch.zeros(n, 3), torch.zeros(n, 3)))
    assert (kps - body.keypoints(ref)).abs().max() < 1e-4
    assert (verts - ref[:, fit.sub]).abs().max() < 1e-4


def test_fast_forward_matches_body_model_anny(anny):
    _check_forward(anny)


# ---- SMPL through smplx ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smpl(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smpl_model")
    write_smpl_model(folder)
    return SmplBody("smpl", folder)


def test_fast_forward_matches_body_model_smpl(smpl):
    _check_forward(smpl)


def test_fit_runs_with_smpl(smpl):
    n = 5
    pose, orient, transl = motion(smpl, "turn", n, np.random.default_rng(3))
    true = BodyParams(smpl.default_shape(), pose, orient, transl + torch.tensor([0.0, 0.2, -3.0]))
    cam = real_video_camera(120, 160)
    kp = _keypoints(smpl, true, cam, np.random.default_rng(1), noise=1.0)
    with torch.no_grad():
        verts = smpl.posed_vertices(true).numpy()
    colors = np.ones((smpl.num_vertices, 3))
    masks = np.stack([render_mesh(v, smpl.faces, colors, cam, supersample=1).mask for v in verts])
    cfg = BodyFitConfig(iters=30, init_iters=10, silhouette_vertices=200)
    res = run_job(fit_body_job(smpl, kp, masks, cam, cfg))
    p = res.params
    assert p.pose.shape == (n, smpl.num_bones, 3) and p.shape.shape == (smpl.shape_dim,)
    for t in (p.shape, p.pose, p.global_orient, p.transl):
        assert torch.isfinite(t).all()
    assert np.isfinite(res.keypoint_error_px).all() and np.isfinite(res.mask_iou).all()
    assert np.mean(res.keypoint_error_px) < 10.0


# ---- the real-video camera and facing ----------------------------------------------------------------


def test_real_video_camera_convention(anny):
    cam = real_video_camera(360, 640)
    assert cam.K[0, 0] == cam.K[1, 1] == 640 and cam.K[0, 2] == 180 and cam.K[1, 2] == 320
    assert np.allclose(project(np.array([[0.0, 0.0, -3.0]]), cam), [[180, 320]])
    assert project(np.array([[0.0, 1.0, -3.0]]), cam)[0, 1] < 320  # world up is image up
    assert real_video_camera(360, 640, focal=500.0).K[0, 0] == 500.0
    # A person at negative Z with zero orientation faces the camera: their left is on the image right.
    shape = anny.default_shape()
    params = BodyParams(shape, anny.zero_pose(1), torch.zeros(1, 3), torch.tensor([[0.0, 0.0, -3.0]]))
    uv = project(anny.keypoints(anny.posed_vertices(params)).double().numpy()[0], cam)
    assert uv[KP["left_shoulder"], 0] > uv[KP["right_shoulder"], 0]
    with pytest.raises(UserError, match="focal"):
        real_video_camera(360, 640, focal=-1.0)


def test_person_turning_from_behind_is_followed(anny):
    """Starting with the back to the camera and turning fast (40° per frame): no front/back flip."""
    n = 9
    pose, orient, transl = motion(anny, "turn", n, np.random.default_rng(4))
    R = roma.rotvec_to_rotmat(torch.tensor([0.0, math.pi, 0.0]))[None] @ roma.rotvec_to_rotmat(orient)
    true = BodyParams(
        anny.default_shape(), pose, roma.rotmat_to_rotvec(R), transl + torch.tensor([0.1, 0.0, -3.5])
    )
    cam = real_video_camera(270, 480)
    kp = _keypoints(anny, true, cam, np.random.default_rng(5))
    res = run_job(fit_body_job(anny, kp, None, cam, BodyFitConfig(iters=120, init_iters=40)))
    err = roma.rotmat_geodesic_distance(roma.rotvec_to_rotmat(res.params.global_orient), R)
    assert np.degrees(err.numpy()).max() < 15.0
    assert np.isnan(res.mask_iou).all()  # no masks, no IoU
    assert _mpvpe(anny, res.params, true, "translation")[0].mean() < 4.0


def _raised_arm_problem(body, n: int = 8) -> tuple[BodyParams, Camera]:
    """A three-quarter view (40° yaw) of the standing body raising its left upper arm from hanging to
    above the head over the first frames and holding it there (the right arm hangs)."""
    cam = real_video_camera(270, 480)
    kp = np.zeros((n, len(KEYPOINT_NAMES), 3))
    fit = _Fit(
        body, *_check_inputs(kp + [100.0, 100.0, 1.0], None, cam), cam, BodyFitConfig(silhouette_vertices=50)
    )
    b = fit.bone_names.index("left_shoulder")
    rest = fit.rest_kp0
    d = rest[KP["left_elbow"]] - rest[KP["left_shoulder"]]
    d = d / d.norm()
    up = torch.tensor([0.35, 0.93, 0.1])
    up = up / up.norm()
    axis = torch.linalg.cross(d, up)
    raised = axis / axis.norm() * torch.atan2(axis.norm(), d @ up)
    theta = fit.theta0.expand(n, -1, -1).clone()
    s = torch.clamp(torch.arange(n) / 3.0, max=1.0)[:, None]
    theta[:, b] = (1 - s) * fit.theta0[b] + s * raised
    orient = torch.tensor([[0.0, math.radians(40.0), 0.0]]).expand(n, 3)
    transl = torch.tensor([[0.1, 0.0, -3.5]]).expand(n, 3)
    return BodyParams(body.default_shape(), fit.pose_of(theta), orient.clone(), transl.clone()), cam


def test_single_raised_arm_is_followed(anny):
    """One arm raised above the head in a three-quarter view: the fit starts with the arms hanging, and
    the robust keypoint loss alone barely pulls a wrist a metre off (graduated sigma + arm start)."""
    true, cam = _raised_arm_problem(anny)
    kp = _keypoints(anny, true, cam, np.random.default_rng(8), noise=1.0, drop=0.0)
    res = run_job(fit_body_job(anny, kp, None, cam, BodyFitConfig(iters=120, init_iters=40)))
    with torch.no_grad():
        uv = project(anny.keypoints(anny.posed_vertices(res.params)).double().numpy(), cam)
    wrist = np.linalg.norm(uv[:, KP["left_wrist"]] - kp[:, KP["left_wrist"], :2], axis=-1)
    log.info(
        "raised arm: keypoint error %s px, left wrist %s px", res.keypoint_error_px.round(1), wrist.round(1)
    )
    assert wrist.max() < 15.0, wrist.round(1)  # ~100 px with the arm left hanging
    assert res.keypoint_error_px.max() < 4.0


# ---- cancel and bad input ----------------------------------------------------------------------------


def _small_problem(body, n: int = 4):
    pose, orient, transl = motion(body, "turn", n, np.random.default_rng(6))
    true = BodyParams(body.default_shape(), pose, orient, transl + torch.tensor([0.0, 0.0, -3.0]))
    cam = real_video_camera(120, 160)
    return _keypoints(body, true, cam, np.random.default_rng(7)), cam


@pytest.fixture(scope="module")
def small_problem(anny):
    return _small_problem(anny)


@pytest.mark.parametrize("stage", ["initialise", "fit poses", "refine"])
def test_cancel_stops_within_one_iteration(anny, small_problem, stage):
    kp, cam = small_problem
    token = CancelToken()
    job = fit_body_job(anny, kp, None, cam, BodyFitConfig(iters=30, init_iters=10), cancel=token)
    after = []
    with pytest.raises(Cancelled):
        for ev in job:
            if token.cancelled:
                after.append(ev)
            elif isinstance(ev, Progress) and ev.stage == stage and ev.done == 2:
                token.cancel()
    assert after == []  # not one more iteration reported after the cancel


@pytest.mark.parametrize(
    "field, value",
    [("iters", 0), ("init_iters", -1), ("orientations", 0), ("lr", 0.0), ("lr", float("nan")),
     ("robust_sigma", 0.0), ("min_confidence", 1.0), ("w_keypoints", 0.0), ("w_silhouette", -1.0),
     ("w_smooth_pose", float("inf")), ("turn_penalty", -0.1), ("silhouette_vertices", 3), ("threads", -1),
     ("iters", 2.5), ("device", "tpu"), ("device", "not a device"), ("gnc_sigma_scale", 0.5),
     ("w_pose_prior_shoulders", -1.0), ("init_arms", "yes")],
)  # fmt: skip
def test_bad_config_is_a_user_error(small_problem, field, value):
    cfg = dataclasses.replace(BodyFitConfig(), **{field: value})
    with pytest.raises(UserError, match=field):
        cfg.validate()
    kp, cam = small_problem
    with pytest.raises(UserError):
        run_job(fit_body_job(anny, kp, None, cam, cfg))


def test_bad_inputs_are_user_errors(anny, small_problem):
    kp, cam = small_problem
    with pytest.raises(UserError, match="keypoints"):
        run_job(fit_body_job(anny, kp[:, :17], None, cam))
    with pytest.raises(UserError, match="masks"):
        run_job(fit_body_job(anny, kp, np.zeros((len(kp) - 1, 160, 120), bool), cam))
    with pytest.raises(UserError, match="masks"):
        run_job(fit_body_job(anny, kp, np.zeros((len(kp), 100, 100), bool), cam))
    none = kp.copy()
    none[..., 2] = 0.0
    with pytest.raises(UserError, match="keypoints"):
        run_job(fit_body_job(anny, none, None, cam))
