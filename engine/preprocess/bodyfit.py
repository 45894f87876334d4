"""Body fit: one shared shape plus per-frame pose and placement from 2D keypoints and person masks.

This replaces Vid2Avatar's ROMP + SMPL fitting and works with any `BodyModel` (Anny, SMPL, SMPL-X).
Everything is batched over frames (no per-frame Python loop in the optimisation):

1. initialise: the average body is placed rigidly in every frame from `orientations` facing hypotheses
   (yaw about the world up axis, depth from the keypoints' pixel size). A Viterbi pass then picks
   one hypothesis per frame, trading keypoint error against the turn between consecutive frames,
   so that a person turning around is followed continuously and the detector's left/right labels
   settle front versus back. Frames without keypoints are interpolated from their neighbours.
2. fit poses: from a relaxed standing pose, per-frame semantic-bone rotations, orientation and
   translation against the keypoints (robust Geman-McClure reprojection) with a pose prior, joint
   limits and temporal smoothness.
3. refine: the same plus the shared shape and a silhouette term against the masks.
4. evaluate: per-frame keypoint error and IoU of the ray-cast body silhouette with the mask.

One camera cannot tell a tall person far away from a short one close by: the shape prior keeps the
height near the model's average, and the depth follows from it.

Residuals are converted from pixels to centimetres at the person's depth (pixels x depth / focal), so
the weights below mean the same for any image size or camera distance.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields

import cv2
import numpy as np
import torch

from engine.body.base import KEYPOINT_NAMES, BodyModel, BodyParams
from engine.errors import UserError
from engine.geometry.camera import Camera, project
from engine.geometry.rotations import axis_angle_to_matrix
from engine.jobs.events import CancelToken, Done, Event, Log, Progress
from engine.render.raycast import raycasting_scene

log = logging.getLogger(__name__)

_KP = {name: i for i, name in enumerate(KEYPOINT_NAMES)}

# Typical spread of the shape coefficients, so one shape-prior weight suits every model: Anny's
# phenotypes live in [0, 1] around 0.5 (the synthetic generator draws them with this spread);
# SMPL/SMPL-X betas are unit-variance by construction.
_SHAPE_STD = {"anny": 0.15}
_SHAPE_RANGE = {"anny": (0.0, 1.0)}

# global_orient + transl already rotate and move the whole body; posing the root too is redundant.
_FIXED_BONES = ("pelvis",)

# Largest plausible rotation of each semantic bone from the rest pose (radians); beyond it the
# joint-limit term pushes back.
_MAX_ANGLE = {
    "spine": 0.6, "chest": 0.6, "neck": 0.8, "head": 0.8,
    "left_hip": 2.0, "right_hip": 2.0, "left_knee": 2.5, "right_knee": 2.5,
    "left_ankle": 0.8, "right_ankle": 0.8, "left_shoulder": 2.6, "right_shoulder": 2.6,
    "left_elbow": 2.6, "right_elbow": 2.6,
}  # fmt: skip

# Hinge joints: (bone, child keypoint, the way the child swings when flexing: +1 forward, -1 back).
_HINGES = {
    "left_knee": ("left_knee", "left_ankle", -1.0),
    "right_knee": ("right_knee", "right_ankle", -1.0),
    "left_elbow": ("left_elbow", "left_wrist", 1.0),
    "right_elbow": ("right_elbow", "right_wrist", 1.0),
}
_HYPEREXTENSION = 0.1  # radians a hinge may bend the wrong way before the limit pushes back
_HINGE_SIDEWAYS = 0.2  # radians of sideways bending a hinge tolerates
# The standing pose the fit starts from and the pose prior pulls towards: upper arms hanging this
# far out from vertical in the frontal plane (the models' rest poses hold them out at 45-90°).
_ARM_DEGREES = 30.0
# An upper arm starts along its keypoints (`init_arms`) where they show it raised at least this far from
# hanging in the image, this much more than the standing pose shows, and not much shorter than its full
# length (a foreshortened arm points at the camera: its image direction says little).
_RAISED_DEGREES = 60.0
_RAISED_MARGIN_DEGREES = 30.0
_ARM_MIN_LENGTH = 0.3

# Keypoint pairs whose 3D distance barely changes with pose or facing (for the depth guess).
_DEPTH_PAIRS = (
    ("left_shoulder", "left_hip"), ("right_shoulder", "right_hip"), ("left_hip", "left_knee"),
    ("right_hip", "right_knee"), ("left_knee", "left_ankle"), ("right_knee", "right_ankle"),
    ("nose", "left_hip"), ("nose", "right_hip"),
)  # fmt: skip
_LEVER_CM = 20.0  # orientation smoothness measured as the motion of a point this far from the axis
_NEAREST_EVERY = 4  # iterations between searches for the body vertex nearest to each mask outline point
_MIN_KEYPOINTS = 4  # a frame with fewer confident keypoints is initialised by interpolation


@dataclass(frozen=True)
class BodyFitConfig:
    """How the body is fitted to keypoints and masks (defaults: ~25 CPU-seconds for 150 frames)."""

    iters: int = 200
    """Iterations of the all-frame optimisation; the first third fits poses to keypoints only."""
    init_iters: int = 60
    """Iterations of the rigid placement of every facing hypothesis."""
    orientations: int = 8
    """Facing hypotheses per frame (yaw about the world up axis, evenly spaced)."""
    lr: float = 0.02
    """Adam learning rate (radians per step for rotations; the other parameters are scaled from it)."""
    robust_sigma: float = 10.0
    """Geman-McClure scale of the keypoint and silhouette residuals (cm at the person's depth)."""
    gnc_sigma_scale: float = 10.0
    """Graduated non-convexity: the keypoint term's robust scale starts this many times robust_sigma and
    shrinks to it over the pose fit, so that a limb starting far from its keypoints (a raised arm) is still
    pulled in before the loss turns robust (1: robust from the start)."""
    init_arms: bool = True
    """Start each upper arm whose keypoints show it clearly raised along them (in the plane parallel to the
    image) instead of hanging: Adam turns a bone at most ~lr per step, too little to raise an arm."""
    min_confidence: float = 0.1
    """Keypoints with a lower confidence are ignored."""
    w_keypoints: float = 1.0
    """Weight of the confidence-weighted robust keypoint reprojection term."""
    w_silhouette: float = 5.0
    """Weight of the silhouette term: body vertices projecting outside the mask."""
    w_coverage: float = 1.0
    """Weight of mask outline points far from the projected body (keeps the body filling the mask)."""
    w_pose_prior: float = 2.0
    """Weight of the L2 prior on the bone rotations (pulls towards a relaxed standing pose)."""
    w_pose_prior_shoulders: float = 0.5
    """Weight of that prior on the shoulders instead: arms range widely, and a strong pull towards hanging
    arms outweighs the bounded robust keypoint term of a raised one."""
    w_joint_limits: float = 100.0
    """Weight of the joint limits (knees and elbows bend one way; no bone turns too far)."""
    w_smooth_pose: float = 20.0
    """Weight of the temporal smoothness of the bone rotations (first and second differences over frames)."""
    w_smooth_global: float = 0.3
    """Weight of the temporal smoothness of orientation and translation (second differences over frames)."""
    w_shape_prior: float = 2.0
    """Weight of the prior keeping the shape near the model's average."""
    turn_penalty: float = 0.5
    """Cost per radian squared of turning between consecutive frames when picking facing hypotheses."""
    silhouette_vertices: int = 600
    """Body vertices (farthest-point subsample) used by the silhouette term."""
    contour_points: int = 128
    """Mask outline points per frame used by the coverage term."""
    mask_size: int = 256
    """Long side (pixels) the masks are reduced to for the silhouette term."""
    threads: int = 1
    """CPU threads for the tensor maths while the fit computes (0: leave torch's setting). Its many
    small operations run fastest on one; more threads slow it down badly on a busy machine."""
    seed: int = 0
    """Random seed (only the vertex subsample depends on it)."""
    device: str = "cpu"
    """Torch device of the loss computations: cpu, cuda or cuda:N (the body model itself runs on the CPU)."""

    def validate(self) -> None:
        """Raises UserError naming the first bad value."""
        ints = {
            "iters": (1, 100_000),
            "init_iters": (1, 10_000),
            "orientations": (1, 72),
            "threads": (0, 1024),
            "silhouette_vertices": (16, 100_000),
            "contour_points": (8, 10_000),
            "mask_size": (32, 4096),
        }
        for name, (lo, hi) in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise UserError(f"body fit: {name} must be an integer between {lo} and {hi} (got {v!r}).")
        for f in fields(self):
            if f.name.startswith("w_") or f.name == "turn_penalty":
                v = getattr(self, f.name)
                if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                    raise UserError(f"body fit: {f.name} must be a finite number >= 0 (got {v!r}).")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise UserError(f"body fit: lr must be in (0, 1] (got {self.lr!r}).")
        if not (
            isinstance(self.robust_sigma, int | float)
            and math.isfinite(self.robust_sigma)
            and self.robust_sigma > 0
        ):
            raise UserError(f"body fit: robust_sigma must be > 0 cm (got {self.robust_sigma!r}).")
        if not (
            isinstance(self.gnc_sigma_scale, int | float)
            and math.isfinite(self.gnc_sigma_scale)
            and self.gnc_sigma_scale >= 1
        ):
            raise UserError(f"body fit: gnc_sigma_scale must be >= 1 (got {self.gnc_sigma_scale!r}).")
        if not isinstance(self.init_arms, bool):
            raise UserError(f"body fit: init_arms must be true or false (got {self.init_arms!r}).")
        if not (isinstance(self.min_confidence, int | float) and 0 <= self.min_confidence < 1):
            raise UserError(f"body fit: min_confidence must be in [0, 1) (got {self.min_confidence!r}).")
        if self.w_keypoints <= 0:
            raise UserError("body fit: w_keypoints must be > 0 (the keypoints drive the fit).")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise UserError(f"body fit: unknown device {self.device!r} (use cpu or cuda).") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"body fit: device {self.device!r} requested but CUDA is not available.")
        if dev.type not in ("cpu", "cuda"):
            raise UserError(f"body fit: device must be cpu or cuda (got {self.device!r}).")


@dataclass
class BodyFitResult:
    """The fitted body and how well it explains each frame."""

    params: BodyParams
    """Shared shape, per-frame pose / global orientation / translation (N frames, CPU tensors)."""
    keypoint_error_px: np.ndarray
    """[N] confidence-weighted mean reprojection error in pixels (NaN where a frame has no keypoints)."""
    mask_iou: np.ndarray
    """[N] IoU of the rasterised body silhouette with the mask (NaN without masks)."""


def real_video_camera(width: int, height: int, focal: float | None = None) -> Camera:
    """The camera assumed for a real video (Vid2Avatar's convention).

    focal = max(H, W) unless given, principal point at the image centre, R = diag(1, -1, -1), t = 0:
    the world is Y-up like the body models and the camera looks down world -Z, so a person facing the
    camera stands at negative Z, faces +Z and has a near-zero global orientation.
    """
    if width <= 0 or height <= 0:
        raise UserError(f"image size must be positive (got {width}x{height}).")
    f = float(max(width, height) if focal is None else focal)
    if not math.isfinite(f) or f <= 0:
        raise UserError(f"--focal must be a positive number of pixels (got {focal}).")
    K = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
    return Camera(K=K, R=np.diag([1.0, -1.0, -1.0]), t=np.zeros(3), width=int(width), height=int(height))


# ---- small helpers ----------------------------------------------------------------------------------


def _gm(r2: torch.Tensor, sigma: float) -> torch.Tensor:
    """Geman-McClure of a squared residual: ~r² near 0, saturates at sigma² (outliers stop pulling)."""
    return r2 / (1.0 + r2 / (sigma * sigma))


def _rot_y(yaw: torch.Tensor) -> torch.Tensor:
    """[...] yaw angles → [..., 3, 3] rotations about +Y."""
    c, s = torch.cos(yaw), torch.sin(yaw)
    z, o = torch.zeros_like(yaw), torch.ones_like(yaw)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).reshape(*yaw.shape, 3, 3)


def _rotmat_to_rotvec(R: torch.Tensor) -> torch.Tensor:
    import roma

    return roma.rotmat_to_rotvec(R)


def _angle_between(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    """Geodesic angles between [..., 3, 3] rotation stacks (broadcasting), radians."""
    tr = np.einsum("...ji,...ji->...", Ra, Rb)  # trace(Ra^T Rb)
    return np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0))


def _interp_rotations(R: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fills the frames where `known` is False by slerp between the nearest known frames [N, 3, 3]."""
    R = R.copy()
    idx = np.flatnonzero(known)
    for i in np.flatnonzero(~known):
        after = idx[idx > i]
        before = idx[idx < i]
        if len(before) == 0 or len(after) == 0:
            R[i] = R[after[0] if len(before) == 0 else before[-1]]
            continue
        a, b = before[-1], after[0]
        s = (i - a) / (b - a)
        rel = torch.as_tensor(R[a].T @ R[b])
        R[i] = R[a] @ axis_angle_to_matrix(s * _rotmat_to_rotvec(rel)).numpy()
    return R


def _interp_linear(x: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fills unknown frames of [N, ...] by linear interpolation (constant beyond the ends)."""
    idx = np.flatnonzero(known)
    flat = x.reshape(len(x), -1).copy()
    t = np.arange(len(x))
    for c in range(flat.shape[1]):
        flat[:, c] = np.interp(t, idx, flat[idx, c])
    return flat.reshape(x.shape)


def _farthest_points(points: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of a farthest-point subsample (even coverage of the surface, unlike a random pick)."""
    count = min(count, len(points))
    rng = np.random.default_rng(seed)
    chosen = np.empty(count, dtype=np.int64)
    chosen[0] = rng.integers(len(points))
    dist = np.linalg.norm(points - points[chosen[0]], axis=1)
    for i in range(1, count):
        chosen[i] = int(dist.argmax())
        dist = np.minimum(dist, np.linalg.norm(points - points[chosen[i]], axis=1))
    return chosen


def _check_inputs(
    keypoints: np.ndarray, masks: np.ndarray | None, camera: Camera
) -> tuple[np.ndarray, np.ndarray | None]:
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[1:] != (len(KEYPOINT_NAMES), 3) or len(kp) == 0:
        raise UserError(
            f"body fit: keypoints must be [N, {len(KEYPOINT_NAMES)}, 3] with N >= 1 (got {kp.shape})."
        )
    kp = kp.copy()
    bad = ~np.isfinite(kp).all(-1)
    kp[bad] = 0.0  # a missing detection may come as NaN: it simply has no confidence
    kp[..., 2] = np.clip(kp[..., 2], 0.0, 1.0)
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim != 3 or len(masks) != len(kp):
            raise UserError(
                f"body fit: masks must be [N, H, W] for the {len(kp)} frames (got {masks.shape})."
            )
        aspect_cam = camera.width / camera.height
        aspect_mask = masks.shape[2] / masks.shape[1]
        if abs(aspect_cam - aspect_mask) > 0.02 * aspect_cam:
            raise UserError(
                f"body fit: masks are {masks.shape[2]}x{masks.shape[1]} but the camera image is "
                f"{camera.width}x{camera.height}."
            )
        masks = masks > (0.5 if masks.dtype.kind == "f" else 0)
    return kp, masks


# ---- the problem ------------------------------------------------------------------------------------


class _Fit:
    """Constants of one fit (tensors on the device) and the differentiable forward model."""

    def __init__(
        self, body: BodyModel, kp: np.ndarray, masks: np.ndarray | None, camera: Camera, cfg: BodyFitConfig
    ) -> None:
        self.body, self.cfg, self.camera = body, cfg, camera
        dev = self.dev = torch.device(cfg.device)
        f32 = dict(dtype=torch.float32, device=dev)
        self.n = len(kp)
        conf = kp[..., 2] * (kp[..., 2] >= cfg.min_confidence)
        self.uv = torch.as_tensor(kp[..., :2], **f32)  # [N, K, 2]
        self.conf = torch.as_tensor(conf, **f32)  # [N, K]
        self.valid = (conf > 0).sum(1) >= _MIN_KEYPOINTS  # [N] numpy
        if not self.valid.any():
            raise UserError(
                "body fit: no frame has enough confident keypoints (is there a person in the video?)."
            )
        self.K = torch.as_tensor(camera.K, **f32)
        self.Rc = torch.as_tensor(camera.R, **f32)
        self.tc = torch.as_tensor(camera.t, **f32)
        self.focal = float(math.sqrt(camera.K[0, 0] * camera.K[1, 1]))

        # Bones: every semantic bone but the root, as Y-up axis-angles converted by `local_rotvec`.
        names = [k for k in body.semantic_bones if k not in _FIXED_BONES]
        self.bone_names = names
        self.bone_idx = torch.tensor([body.semantic_bones[k] for k in names])  # CPU, like the body model
        self.max_angle = torch.tensor([_MAX_ANGLE.get(k, 1.0) for k in names], **f32)
        shoulder = [k.endswith("_shoulder") for k in names]
        self.prior_w = torch.tensor(
            [cfg.w_pose_prior_shoulders if s else cfg.w_pose_prior for s in shoulder], **f32
        )

        # Shape parametrisation: shape = default + std * z, prior on z.
        self.shape0 = body.default_shape().float().to(dev)
        self.shape_std = _SHAPE_STD.get(body.name, 1.0)
        self.shape_range = _SHAPE_RANGE.get(body.name)

        # Every point the losses need (keypoints, then a vertex subsample) is a fixed linear mix of
        # skinned vertices, so point_r = sum_j T_j @ G[r, j] with G = C @ [rest; 1] for a sparse
        # C[(r, j), v] (regressor or selection x skin weight): exact LBS + regression without posing
        # all vertices.
        W = body.skin_weights.float()
        reg = body.keypoint_regressor.float()
        rest0 = body.rest_vertices(body.default_shape().float()).detach()
        self.rest_kp0 = (reg @ rest0).to(dev)  # [K, 3] rest keypoints of the average body
        self.height = float(rest0[:, 1].max() - rest0[:, 1].min())
        sub = torch.as_tensor(_farthest_points(rest0.numpy(), cfg.silhouette_vertices, cfg.seed))
        self.sub = sub  # [P] vertex indices of the silhouette subsample
        mix = torch.cat(
            [
                reg,
                torch.zeros(len(sub), W.shape[0]).index_put_(
                    (torch.arange(len(sub)), sub), torch.tensor(1.0)
                ),
            ]
        )  # [R, V]
        w_top, j_top = W.topk(int((W > 0).sum(1).max()), dim=1)  # [V, k] each vertex's few bones
        r, v = torch.nonzero(mix, as_tuple=True)
        val = mix[r, v][:, None] * w_top[v]  # [nnz, k]
        keep = val != 0
        self.num_bones = body.num_bones
        self.num_rows, self.num_kp = mix.shape[0], reg.shape[0]
        index = torch.stack([(r[:, None] * self.num_bones + j_top[v])[keep], v[:, None].expand_as(val)[keep]])
        self.mix = torch.sparse_coo_tensor(
            index, val[keep], (self.num_rows * self.num_bones, W.shape[0]), check_invariants=True
        )
        self.mix = self.mix.coalesce().to(dev)
        self.hinges = self._hinge_axes(rest0, reg)
        self.theta0 = self._standing_pose(rest0, reg)  # [B, 3]
        self.depth0 = self._depth_guess(kp, conf)  # [N] metres
        # Pixels → centimetres at the person's depth (fixed per frame, so weights are scale-free).
        self.px_to_cm = torch.as_tensor(100.0 * self.depth0 / self.focal, **f32)  # [N]
        self._prepare_masks(masks)

    # ---- setup pieces ---------------------------------------------------------------------------
    def _hinge_axes(
        self, rest: torch.Tensor, reg: torch.Tensor
    ) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """(position in bone list, flexion axis, child-bone direction) for knees and elbows, from the rest pose."""
        kp = reg @ rest
        out = []
        for bone, (a, b, sign) in _HINGES.items():
            if bone not in self.bone_names:
                continue
            d = kp[_KP[b]] - kp[_KP[a]]
            d = d / d.norm()
            axis = torch.linalg.cross(d, torch.tensor([0.0, 0.0, sign]))
            axis = axis / axis.norm().clamp_min(1e-6)
            out.append((self.bone_names.index(bone), axis.to(self.dev), d.to(self.dev)))
        return out

    def _standing_pose(self, rest: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
        """Y-up bone rotations [B, 3] of a relaxed standing pose: the rest pose with the arms lowered."""
        kp = reg @ rest
        theta = torch.zeros(len(self.bone_names), 3)
        a = math.radians(_ARM_DEGREES)
        for side, sign in (("left", 1.0), ("right", -1.0)):
            bone = f"{side}_shoulder"
            if bone not in self.bone_names:
                continue
            d = kp[_KP[f"{side}_elbow"]] - kp[_KP[f"{side}_shoulder"]]
            d = d / d.norm()
            target = torch.tensor([sign * math.sin(a), -math.cos(a), 0.0])
            axis = torch.linalg.cross(d, target)
            angle = torch.atan2(axis.norm(), d @ target)
            theta[self.bone_names.index(bone)] = axis / axis.norm().clamp_min(1e-9) * angle
        return theta.to(self.dev)

    def _depth_guess(self, kp: np.ndarray, conf: np.ndarray) -> np.ndarray:
        """Per-frame depth (m): focal x rest-body length / pixel length over pose-stable keypoint pairs."""
        rest = self.rest_kp0.cpu().numpy()
        depth = np.full(self.n, np.nan)
        for i in range(self.n):
            cands = []
            for a, b in _DEPTH_PAIRS:
                ia, ib = _KP[a], _KP[b]
                if conf[i, ia] > 0 and conf[i, ib] > 0:
                    px = np.linalg.norm(kp[i, ia, :2] - kp[i, ib, :2])
                    if px > 1.0:
                        cands.append(self.focal * np.linalg.norm(rest[ia] - rest[ib]) / px)
            if cands:
                # Foreshortening only shortens a limb in the image: the nearest estimate is the least biased.
                depth[i] = min(cands)
        ok = np.isfinite(depth)
        if ok.any():
            return _interp_linear(depth, ok)
        # No limb pair anywhere (say, only a face): compare the keypoints' pixel spread with the rest body's.
        seen = conf > 0
        px = max(
            (np.ptp(kp[i, seen[i], :2], axis=0).max() for i in range(self.n) if seen[i].sum() >= 2),
            default=1.0,
        )
        metres = np.ptp(rest[seen.any(0)], axis=0).max() if seen.any() else self.height
        return np.full(self.n, self.focal * max(metres, 0.1) / max(px, 1.0))

    def _prepare_masks(self, masks: np.ndarray | None) -> None:
        self.has_masks = masks is not None
        self.masks = masks
        if masks is None:
            return
        cfg = self.cfg
        H, W = masks.shape[1:]
        scale = min(1.0, cfg.mask_size / max(H, W))
        h, w = max(1, round(H * scale)), max(1, round(W * scale))
        self.mask_scale = (w / self.camera.width, h / self.camera.height)  # camera px → small-mask px
        dts = np.zeros((self.n, h, w), np.float32)
        contour = np.zeros((self.n, cfg.contour_points, 2), np.float32)
        cweight = np.zeros((self.n, cfg.contour_points), np.float32)
        for i, m in enumerate(masks):
            small = cv2.resize(m.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_AREA) >= 128
            if not small.any():
                continue  # no person: the frame has no silhouette terms
            dts[i] = cv2.distanceTransform((~small).astype(np.uint8), cv2.DIST_L2, 5)
            cs, _ = cv2.findContours(small.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            pts = np.concatenate([c.reshape(-1, 2) for c in cs]).astype(np.float32) + 0.5
            pick = np.linspace(0, len(pts), cfg.contour_points, endpoint=False).astype(int)
            contour[i] = pts[pick] / np.array(self.mask_scale, np.float32)  # back to camera pixels
            cweight[i] = 1.0
        # Distances in small-mask px → camera px (isotropic enough: aspect is preserved).
        self.dt = torch.as_tensor(dts / self.mask_scale[1], device=self.dev)[:, None]  # [N, 1, h, w]
        self.contour = torch.as_tensor(contour, device=self.dev)
        self.contour_w = torch.as_tensor(cweight, device=self.dev)
        self._near = None

    # ---- forward model --------------------------------------------------------------------------
    def project(self, X: torch.Tensor) -> torch.Tensor:
        """World points [..., 3] → pixels [..., 2] (depth clamped in front of the camera)."""
        cam = X @ self.Rc.T + self.tc
        z = cam[..., 2:3].clamp_min(1e-3)
        pix = (cam[..., :2] / z) @ self.K[:2, :2].T + self.K[:2, 2]
        return pix

    def shape_of(self, z: torch.Tensor) -> torch.Tensor:
        s = self.shape0 + self.shape_std * z
        if self.shape_range is not None:
            s = s.clamp(*self.shape_range)
        return s

    def pose_of(self, theta: torch.Tensor) -> torch.Tensor:
        """Y-up rotations of the fitted bones [N, B, 3] → full model pose [N, J, 3]."""
        pose = torch.zeros(theta.shape[0], self.num_bones, 3, dtype=theta.dtype, device=theta.device)
        return pose.index_copy(1, self.bone_idx, self.body.local_rotvec(theta))

    def body_points(
        self, shape: torch.Tensor, theta: torch.Tensor, with_silhouette: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Body-frame keypoints [N, K, 3] and (optionally) subsampled vertices [N, P, 3]."""
        # The body models live on the CPU; only the losses run on `device`.
        pose = self.pose_of(theta.cpu())
        tf = self.body._bone_transforms(shape.cpu(), pose).to(self.dev)[..., :3, :]  # [N, J, 3, 4]
        rest = self.body._rest(shape.cpu()).to(self.dev)  # [V, 3]
        G = torch.sparse.mm(self.mix, torch.cat([rest, torch.ones_like(rest[:, :1])], 1))  # [R*J, 4]
        G = G.reshape(self.num_rows, self.num_bones * 4)
        n = tf.shape[0]
        pts = (tf.permute(0, 2, 1, 3).reshape(n * 3, -1) @ G.T).reshape(n, 3, -1).transpose(1, 2)  # [N, R, 3]
        kps = pts[:, : self.num_kp]
        return kps, (pts[:, self.num_kp :] if with_silhouette else None)

    def start_pose(self, R: torch.Tensor) -> torch.Tensor:
        """[N, B, 3] start of the pose fit: the standing pose, with each upper arm that the keypoints show
        clearly raised turned along its shoulder→elbow keypoint direction, in the plane through the
        shoulder parallel to the image (the depth is left to the fit). R: [N, 3, 3] body orientations."""
        theta = self.theta0.expand(self.n, -1, -1).clone()
        if not self.cfg.init_arms:
            return theta
        M = self.Rc @ R  # [N, 3, 3] body frame → camera frame
        for side in ("left", "right"):
            if f"{side}_shoulder" not in self.bone_names:
                continue
            b = self.bone_names.index(f"{side}_shoulder")
            s, e = _KP[f"{side}_shoulder"], _KP[f"{side}_elbow"]
            d_rest = self.rest_kp0[e] - self.rest_kp0[s]
            full_px = 100.0 * d_rest.norm() / self.px_to_cm  # [N] image length when parallel to the image
            d_rest = d_rest / d_rest.norm()
            seg = self.uv[:, e] - self.uv[:, s]  # [N, 2]
            seg_len = seg.norm(dim=-1)
            obs = seg / seg_len.clamp_min(1e-6)[:, None]
            stand = (M @ (axis_angle_to_matrix(self.theta0[b]) @ d_rest))[:, :2]
            stand = stand / stand.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            # Elevation: the angle from hanging straight down the image (image y points down).
            elev = torch.rad2deg(torch.acos(obs[:, 1].clamp(-1.0, 1.0)))
            elev_stand = torch.rad2deg(torch.acos(stand[:, 1].clamp(-1.0, 1.0)))
            # Across the chest is left to the fit: in the image plane it would run through the body.
            outward_or_up = (obs[:, 0] * stand[:, 0] > 0) | (elev >= 90.0)
            raised = (
                (self.conf[:, s] > 0)
                & (self.conf[:, e] > 0)
                & (seg_len > _ARM_MIN_LENGTH * full_px)
                & (elev >= _RAISED_DEGREES)
                & (elev >= elev_stand + _RAISED_MARGIN_DEGREES)
                & outward_or_up
            )
            # The image direction as a camera-frame vector with no depth, into the body frame.
            flat = torch.cat([obs, torch.zeros_like(obs[:, :1])], 1)
            target = (M.transpose(1, 2) @ flat[..., None])[..., 0]
            axis = torch.linalg.cross(d_rest.expand_as(target), target)
            angle = torch.atan2(axis.norm(dim=-1), target @ d_rest)
            ok = raised & (angle < self.max_angle[b])
            theta[ok, b] = (axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-9) * angle[:, None])[ok]
            if ok.any():
                log.debug("body fit: %s upper arm starts raised in %d frames", side, int(ok.sum()))
        return theta

    # ---- loss terms ---------------------------------------------------------------------------------
    def keypoint_term(self, pix: torch.Tensor, sigma: float) -> torch.Tensor:
        """[N] confidence-weighted robust reprojection (cm², averaged over the keypoint slots)."""
        r2 = ((pix - self.uv) * self.px_to_cm[:, None, None]).square().sum(-1)
        return (self.conf * _gm(r2, sigma)).mean(1)

    def silhouette_terms(
        self, pix: torch.Tensor, find_nearest: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[N] mean robust distance outside the mask of the projected vertices, and [N] mean robust
        distance from mask outline points to the nearest projected vertex (both cm²).

        With `find_nearest` False the outline points keep the vertices found last time (the search
        over all pairs costs more than the rest of the term, and the answer changes slowly)."""
        sx, sy = self.mask_scale
        h, w = self.dt.shape[-2:]
        grid = torch.stack([2.0 * pix[..., 0] * sx / w - 1.0, 2.0 * pix[..., 1] * sy / h - 1.0], -1)
        d_out = torch.nn.functional.grid_sample(
            self.dt, grid[:, None], mode="bilinear", padding_mode="border", align_corners=False
        )[:, 0, 0]  # [N, P] camera px
        sigma = self.cfg.robust_sigma
        cm = self.px_to_cm[:, None]
        outside = _gm((d_out * cm).square(), sigma).mean(1)
        if find_nearest or self._near is None:
            with torch.no_grad():
                self._near = torch.cdist(self.contour, pix).argmin(2)  # [N, M]
        d2 = (
            (self.contour - pix.gather(1, self._near[..., None].expand(-1, -1, 2))).square().sum(-1)
        )  # [N, M] px²
        cover = (self.contour_w * _gm(d2 * cm.square(), sigma)).mean(1)
        return outside, cover

    def prior_terms(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N] weighted L2 pose prior (rad² x its per-bone weight) and [N] joint-limit penalty (rad²)."""
        prior = ((theta - self.theta0).square().sum(2) * self.prior_w).sum(1)
        ang = theta.norm(dim=-1)  # [N, B]
        limits = torch.relu(ang - self.max_angle).square().sum(1)
        for b, axis, d in self.hinges:
            t = theta[:, b]
            flex = t @ axis
            side = t - flex[:, None] * axis - (t @ d)[:, None] * d  # neither flexion nor twist
            limits = limits + torch.relu(-flex - _HYPEREXTENSION).square()
            limits = limits + torch.relu(side.norm(dim=-1) - _HINGE_SIDEWAYS).square()
        return prior, limits

    @staticmethod
    def smooth_terms(
        theta: torch.Tensor, R: torch.Tensor, transl: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Over frames: first + second differences of the bone rotations (rad²; the first differences stop
        a limb drifting through the views where its depth is ambiguous), and second differences of
        orientation + translation (cm²; a steady turn or walk costs nothing)."""
        if theta.shape[0] < 3:
            z = theta.sum() * 0.0
            return z, z
        pose = (theta[:-2] - 2 * theta[1:-1] + theta[2:]).square().sum() + (
            theta[1:] - theta[:-1]
        ).square().sum()
        rel = R[:-1].transpose(1, 2) @ R[1:]  # frame-to-frame turn in the body frame
        # vee of the antisymmetric part = sin(angle) * axis: smooth everywhere, exact for small turns.
        w = (
            torch.stack(
                [rel[:, 2, 1] - rel[:, 1, 2], rel[:, 0, 2] - rel[:, 2, 0], rel[:, 1, 0] - rel[:, 0, 1]], -1
            )
            / 2
        )
        # Both in cm²: translation directly, turning as the motion of a point _LEVER_CM off the axis.
        glob = ((w[1:] - w[:-1]) * _LEVER_CM).square().sum()
        glob = glob + ((transl[:-2] - 2 * transl[1:-1] + transl[2:]) * 100.0).square().sum()
        return pose, glob


# ---- stages -----------------------------------------------------------------------------------------


def _gnc_sigma(cfg: BodyFitConfig, it: int, iters: int, refine: bool) -> float:
    """Keypoint robust scale at iteration `it` of a stage: during the pose fit it shrinks geometrically
    from gnc_sigma_scale x robust_sigma to robust_sigma over the first two thirds, then stays there."""
    if refine:
        return cfg.robust_sigma
    frac = min(1.0, it / max(1.0, 2.0 * iters / 3.0))
    return cfg.robust_sigma * cfg.gnc_sigma_scale ** (1.0 - frac)


def _initialise(fit: _Fit, cancel: CancelToken) -> Iterator[Event | tuple[np.ndarray, np.ndarray]]:
    """Rigid placement of the rest body from several facing hypotheses, then a Viterbi pick per frame.

    Yields Progress events, and finally (R [N, 3, 3], transl [N, 3]) as numpy arrays.
    """
    cfg = fit.cfg
    dev = fit.dev
    n, H = fit.n, cfg.orientations
    conf = fit.conf  # [N, K]
    P = fit.rest_kp0  # [K, 3]
    # Where the person is: back-project the confident keypoints' centroid at the guessed depth.
    wsum = conf.sum(1).clamp_min(1e-6)
    uv_c = (conf[..., None] * fit.uv).sum(1) / wsum[:, None]  # [N, 2]
    P_c = (conf[..., None] * P[None]).sum(1) / wsum[:, None]  # [N, 3] matching rest-body centroid
    depth = torch.as_tensor(fit.depth0, dtype=torch.float32, device=dev)
    ray = torch.cat([uv_c, torch.ones_like(uv_c[:, :1])], 1) @ torch.linalg.inv(fit.K).T  # camera z = 1
    X = (depth[:, None] * ray - fit.tc) @ fit.Rc  # [N, 3] world
    # Hypotheses: yaws around the direction that faces the camera.
    C = -fit.Rc.T @ fit.tc
    to_cam = C[None] - X
    yaw0 = torch.atan2(to_cam[:, 0], to_cam[:, 2])  # [N] yaw turning +Z towards the camera
    yaws = yaw0[:, None] + torch.arange(H, device=dev) * (2 * math.pi / H)
    R0 = _rot_y(yaws)  # [N, H, 3, 3]
    delta = torch.zeros(n, H, 3, device=dev, requires_grad=True)
    t = (X[:, None] - (R0 @ P_c[:, None, :, None])[..., 0]).detach().requires_grad_(True)  # [N, H, 3]
    opt = torch.optim.Adam([{"params": [delta], "lr": 3 * cfg.lr}, {"params": [t], "lr": 2 * cfg.lr}])
    sigma = 3.0 * cfg.robust_sigma  # wide basin while the pose is still the rest pose
    uv, px_cm = fit.uv[:, None], fit.px_to_cm[:, None, None, None]
    for it in range(cfg.init_iters):
        cancel.check()
        R = R0 @ axis_angle_to_matrix(delta)
        pix = fit.project((R[:, :, None] @ P[None, None, :, :, None])[..., 0] + t[:, :, None])  # [N, H, K, 2]
        r2 = ((pix - uv) * px_cm).square().sum(-1)
        per = (conf[:, None] * _gm(r2, sigma)).sum(-1) / wsum[:, None]  # [N, H]
        opt.zero_grad()
        per.sum().backward()
        opt.step()
        yield Progress("initialise", it + 1, cfg.init_iters)
    with torch.no_grad():
        R = (R0 @ axis_angle_to_matrix(delta)).cpu().numpy().astype(np.float64)
        pix = fit.project(
            (torch.as_tensor(R, dtype=torch.float32, device=dev)[:, :, None] @ P[None, None, :, :, None])[
                ..., 0
            ]
            + t[:, :, None]
        )
        r2 = ((pix - uv) * px_cm).square().sum(-1)
        unary = ((conf[:, None] * _gm(r2, sigma)).sum(-1) / wsum[:, None] / sigma**2).cpu().numpy()
        tr = t.detach().cpu().numpy().astype(np.float64)

    # Viterbi over the frames with keypoints: unary = normalised robust error (0 perfect .. 1 all
    # outliers), transition = turn_penalty x angle² between consecutive picks.
    frames = np.flatnonzero(fit.valid)
    cost = unary[frames[0]].copy()
    back = np.zeros((len(frames), H), dtype=np.int64)
    for a in range(1, len(frames)):
        i, j = frames[a - 1], frames[a]
        trans = cfg.turn_penalty * _angle_between(R[i][:, None], R[j][None, :]) ** 2  # [H_prev, H]
        total = cost[:, None] + trans
        back[a] = total.argmin(0)
        cost = total.min(0) + unary[j]
    pick = np.empty(len(frames), dtype=np.int64)
    pick[-1] = int(cost.argmin())
    for a in range(len(frames) - 1, 0, -1):
        pick[a - 1] = back[a, pick[a]]
    R_out = np.zeros((n, 3, 3))
    t_out = np.zeros((n, 3))
    R_out[frames] = R[frames, pick]
    t_out[frames] = tr[frames, pick]
    R_out = _interp_rotations(R_out, fit.valid)
    t_out = _interp_linear(t_out, fit.valid)
    yield R_out, t_out


def _optimise(
    fit: _Fit, R_init: np.ndarray, t_init: np.ndarray, cancel: CancelToken
) -> Iterator[Event | tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Joint optimisation over all frames: stage "fit poses" (keypoints only), then "refine" (+ shape,
    + silhouette). Yields Progress events, finally (shape [S], theta [N, B, 3], R [N, 3, 3], transl [N, 3])."""
    cfg = fit.cfg
    dev = fit.dev
    n = fit.n
    R_base = torch.as_tensor(R_init, dtype=torch.float32, device=dev)
    delta = torch.zeros(n, 3, device=dev, requires_grad=True)
    transl = torch.as_tensor(t_init, dtype=torch.float32, device=dev).clone().requires_grad_(True)
    theta = fit.start_pose(R_base).requires_grad_(True)
    z = torch.zeros(fit.body.shape_dim, device=dev, requires_grad=True)
    n_pose = max(1, cfg.iters // 3)
    stages = [("fit poses", n_pose, False), ("refine", cfg.iters - n_pose, True)]
    for stage, iters, full in stages:
        if iters <= 0:
            continue
        groups = [{"params": [delta, theta], "lr": cfg.lr}, {"params": [transl], "lr": 0.5 * cfg.lr}]
        if full:
            groups.append({"params": [z], "lr": 2 * cfg.lr})
        opt = torch.optim.Adam(groups)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k, m=iters: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / m))
        )
        use_sil = full and fit.has_masks and (cfg.w_silhouette > 0 or cfg.w_coverage > 0)
        for it in range(iters):
            cancel.check()
            shape = fit.shape_of(z) if full else fit.shape_of(z).detach()
            R = R_base @ axis_angle_to_matrix(delta)
            kps, verts = fit.body_points(shape, theta, use_sil)
            kw = kps @ R.transpose(1, 2) + transl[:, None]
            per_frame = cfg.w_keypoints * fit.keypoint_term(fit.project(kw), _gnc_sigma(cfg, it, iters, full))
            if use_sil:
                vw = verts @ R.transpose(1, 2) + transl[:, None]
                outside, cover = fit.silhouette_terms(fit.project(vw), find_nearest=it % _NEAREST_EVERY == 0)
                per_frame = per_frame + cfg.w_silhouette * outside + cfg.w_coverage * cover
            prior, limits = fit.prior_terms(theta)
            per_frame = per_frame + prior + cfg.w_joint_limits * limits
            smooth_pose, smooth_glob = fit.smooth_terms(theta, R, transl)
            loss = (per_frame.sum() + cfg.w_smooth_pose * smooth_pose + cfg.w_smooth_global * smooth_glob) / n
            if full:
                loss = loss + cfg.w_shape_prior * z.square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            yield Progress(stage, it + 1, iters)
    with torch.no_grad():
        R = R_base @ axis_angle_to_matrix(delta)
    yield fit.shape_of(z).detach(), theta.detach(), R, transl.detach()


def _evaluate(
    fit: _Fit, params: BodyParams, cancel: CancelToken
) -> Iterator[Event | tuple[np.ndarray, np.ndarray]]:
    """Per-frame keypoint error (px) and silhouette IoU (exact ray cast at the mask's resolution)."""
    body, n = fit.body, fit.n
    uv, conf = fit.uv.cpu().numpy(), fit.conf.cpu().numpy()
    kp_err = np.full(n, np.nan)
    ious = np.full(n, np.nan)
    if fit.has_masks:
        Hm, Wm = fit.masks.shape[1:]
        cam = fit.camera
        mask_cam = Camera(np.diag([Wm / cam.width, Hm / cam.height, 1.0]) @ cam.K, cam.R, cam.t, Wm, Hm)
        dirs = mask_cam.rays()[1].astype(np.float32)  # [Hm, Wm, 3]
    for i in range(n):
        cancel.check()
        with torch.no_grad():
            verts = body.posed_vertices(params.frame(i))  # [1, V, 3]
            pix = fit.project(body.keypoints(verts).to(fit.dev))[0].cpu().numpy()
        if conf[i].sum() > 0:
            kp_err[i] = (conf[i] * np.linalg.norm(pix - uv[i], axis=-1)).sum() / conf[i].sum()
        if fit.has_masks:
            # Rays outside the body's projected box cannot hit it: cast only inside.
            v = verts[0].numpy()
            box = project(v, mask_cam)
            x0, y0 = np.clip(np.floor(box.min(0)).astype(int), 0, [Wm, Hm])
            x1, y1 = np.clip(np.ceil(box.max(0)).astype(int) + 1, 0, [Wm, Hm])
            sil = np.zeros((Hm, Wm), bool)
            if x1 > x0 and y1 > y0:
                hit = raycasting_scene(v, body.faces).cast_rays(mask_cam.center, dirs[y0:y1, x0:x1])
                sil[y0:y1, x0:x1] = np.isfinite(hit["t_hit"])
            union = np.logical_or(sil, fit.masks[i]).sum()
            ious[i] = np.logical_and(sil, fit.masks[i]).sum() / union if union else 1.0
        yield Progress("evaluate", i + 1, n)
    yield kp_err, ious


def _with_threads(events: Iterator[Event], threads: int) -> Iterator[Event]:
    """Runs each step of `events` with torch limited to `threads` CPU threads, restoring the setting
    while the consumer has control (torch's thread count is process-wide)."""
    if threads <= 0:
        yield from events
        return
    while True:
        before = torch.get_num_threads()
        torch.set_num_threads(min(threads, before))
        try:
            ev = next(events)
        except StopIteration:
            return
        finally:
            torch.set_num_threads(before)
        yield ev


def fit_body_job(
    body: BodyModel,
    keypoints: np.ndarray,
    masks: np.ndarray | None,
    camera: Camera,
    config: BodyFitConfig = BodyFitConfig(),
    cancel: CancelToken | None = None,
) -> Iterator[Event]:
    """Fits the body to a sequence of one person.

    Args:
        body: the body model (Anny, SMPL or SMPL-X).
        keypoints: [N, 23, 3] (x, y, confidence) in pixels, KEYPOINT_NAMES order; confidence 0 (or
            NaN coordinates) = missing.
        masks: [N, H, W] bool person masks (any resolution with the camera's aspect), or None.
        camera: the static camera of every frame (OpenCV convention, world Y-up).
        config: fit settings.
        cancel: checked every iteration; raises `Cancelled`.

    Yields:
        Progress events (stages: initialise, fit poses, refine, evaluate), Log events, and finally
        Done(BodyFitResult).

    Raises:
        UserError: bad settings or inputs, or no frame with enough keypoints.
    """
    config.validate()
    kp, masks = _check_inputs(keypoints, masks, camera)
    yield from _with_threads(
        _fit_body(body, kp, masks, camera, config, cancel or CancelToken()), config.threads
    )


def _fit_body(
    body: BodyModel,
    kp: np.ndarray,
    masks: np.ndarray | None,
    camera: Camera,
    config: BodyFitConfig,
    cancel: CancelToken,
) -> Iterator[Event]:
    start = time.perf_counter()
    yield Progress("initialise", 0, config.init_iters)
    fit = _Fit(body, kp, masks, camera, config)
    missing = np.flatnonzero(~fit.valid)
    if len(missing):
        yield Log(
            f"body fit: {len(missing)} of {fit.n} frames have too few keypoints and are interpolated "
            f"(frames {', '.join(map(str, missing[:20]))}{' ...' if len(missing) > 20 else ''}).",
            "warning",
        )
    R = t = None
    for ev in _initialise(fit, cancel):
        if isinstance(ev, Event):
            yield ev
        else:
            R, t = ev
    for ev in _optimise(fit, R, t, cancel):
        if isinstance(ev, Event):
            yield ev
        else:
            shape, theta, Rf, transl = ev
    with torch.no_grad():
        params = BodyParams(
            shape=shape.cpu().float(),
            pose=fit.pose_of(theta.cpu()).float(),
            global_orient=_rotmat_to_rotvec(Rf).cpu().float(),
            transl=transl.cpu().float(),
        )
    for ev in _evaluate(fit, params, cancel):
        if isinstance(ev, Event):
            yield ev
        else:
            kp_err, ious = ev
    seconds = time.perf_counter() - start
    msg = (
        f"body fit: {fit.n} frames in {seconds:.1f} s, keypoint error {np.nanmean(kp_err):.1f} px"
        + (f", mask IoU {np.nanmean(ious):.3f}" if fit.has_masks else "")
        + f", shape [{', '.join(f'{x:.3f}' for x in params.shape.tolist())}]"
    )
    log.debug(msg)  # the Log event reaches the user; the CLI prints it
    yield Log(msg)
    yield Done(BodyFitResult(params=params, keypoint_error_px=kp_err, mask_iou=ious))
