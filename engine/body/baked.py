"""A body model reduced to one person's shape, as plain arrays: what a project carries so that fitting,
export, scoring and rendering run without the body model's own package.

Every model here (Anny, SMPL, SMPL-X) poses a bone the same way: its transform is its parent's times
`A · R(pose) · B`, where R is the bone's axis-angle as a rotation and A, B are fixed rigid transforms of
the shape. `bake_body` reads A and B off the real model by probing its forward kinematics and then
checks that the arrays reproduce it, so a model that poses differently is refused rather than mis-posed.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.body.base import BodyModel
from engine.geometry.rotations import axis_angle_to_matrix

#: Largest difference (m, or unit rotation entries) between the baked and the real forward kinematics.
BAKE_TOLERANCE = 1e-4
_PROBE_ANGLE = 1.0  # radians: large enough that the rotation axis is well defined


def _levels(parents: list[int]) -> list[torch.Tensor]:
    """Bones grouped by depth in the hierarchy: each group's parents are all in earlier groups."""
    depth: list[int] = []
    for p in parents:
        depth.append(0 if p < 0 else depth[p] + 1)
    d = np.asarray(depth)
    return [torch.as_tensor(np.flatnonzero(d == k)) for k in range(int(d.max()) + 1)]


def _local_transforms(model: BodyModel, shape: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """K_c = T_parent^-1 T_c for every bone [J, 4, 4] (the root's own transform for roots), one pose [J, 3]."""
    tf = model.body_transforms(shape, pose[None])[0].double()
    parents = torch.as_tensor(model.bone_parents)
    parent_tf = torch.where((parents < 0)[:, None, None], torch.eye(4, dtype=tf.dtype), tf[parents.clamp(min=0)])
    return torch.linalg.solve(parent_tf, tf)


def _rotation_axis(rot: torch.Tensor) -> torch.Tensor:
    """Unit axes [J, 3] of rotations [J, 3, 3] by a known angle in (0, π)."""
    axis = torch.stack([rot[:, 2, 1] - rot[:, 1, 2], rot[:, 0, 2] - rot[:, 2, 0], rot[:, 1, 0] - rot[:, 0, 1]], -1)
    return axis / axis.norm(dim=-1, keepdim=True)


def bake_body(model: BodyModel, shape: torch.Tensor) -> dict[str, np.ndarray]:
    """The arrays of `model` at `shape` that `BakedBody` poses with (numpy, ready for an .npz).

    Raises:
        ValueError: the model does not pose its bones as `A · R(pose) · B` (the check below fails).
    """
    shape = shape.detach().float().cpu()
    J = model.num_bones
    zero = model.zero_pose(1)[0]
    k0 = _local_transforms(model, shape, zero)
    # Every bone at once rotated by the probe angle about each model-native axis e.
    axes = torch.eye(3, dtype=torch.float64)
    probes = [_local_transforms(model, shape, (zero + e.float() * _PROBE_ANGLE)) for e in axes]
    # A's rotation: R(pose) about e turns into a rotation about A_r e.
    cols = [_rotation_axis(k[:, :3, :3] @ k0[:, :3, :3].transpose(1, 2)) for k in probes]
    u, _, vh = torch.linalg.svd(torch.stack(cols, -1))  # nearest rotation to the probed axes
    a_rot = u @ vh
    b_rot = a_rot.transpose(1, 2) @ k0[:, :3, :3]
    # Translations: t(R) = A_r R b + a, so t(R) - t(I) = A_r (R - I) b; the three probes fix b.
    rots = axis_angle_to_matrix(axes * _PROBE_ANGLE)
    lhs = [a_rot @ (rot - torch.eye(3, dtype=torch.float64)) for rot in rots]
    rhs = [k[:, :3, 3] - k0[:, :3, 3] for k in probes]
    b_t = torch.linalg.lstsq(torch.cat(lhs, 1), torch.cat(rhs, 1)[..., None]).solution[..., 0]
    a_t = k0[:, :3, 3] - (a_rot @ b_t[..., None])[..., 0]
    a = torch.eye(4, dtype=torch.float64).repeat(J, 1, 1)
    b = a.clone()
    a[:, :3, :3], a[:, :3, 3] = a_rot, a_t
    b[:, :3, :3], b[:, :3, 3] = b_rot, b_t
    native = model.local_rotvec(torch.eye(3))  # rows: the Y-up axes in the model's convention
    arrays = {
        "model": np.array(model.name),
        "shape": shape.numpy().astype(np.float32),
        "rest_vertices": model.rest_vertices(shape).detach().cpu().numpy().astype(np.float32),
        "faces": np.asarray(model.faces, np.int64),
        "skin_weights": model.skin_weights.detach().cpu().numpy().astype(np.float32),
        "keypoint_regressor": model.keypoint_regressor.detach().cpu().numpy().astype(np.float32),
        "bone_names": np.array(model.bone_names),
        "bone_parents": np.asarray(model.bone_parents, np.int64),
        "bone_heads": model.bone_heads(shape).detach().cpu().numpy().astype(np.float32),
        "pre": a.numpy().astype(np.float32),
        "post": b.numpy().astype(np.float32),
        "native_axes": native.detach().cpu().numpy().astype(np.float32),
        "semantic_names": np.array(list(model.semantic_bones)),
        "semantic_bones": np.asarray(list(model.semantic_bones.values()), np.int64),
        "head_bones": np.array(list(model.head_bones), dtype=str),
        "hand_bones": np.array(list(model.hand_bones), dtype=str),
    }
    check_baked(model, BakedBody(arrays))
    return arrays


def check_baked(model: BodyModel, baked: BakedBody, poses: int = 4, seed: int = 0) -> float:
    """Largest difference between the baked and the real transforms over random poses (≤ 0.8 rad per axis).

    Raises:
        ValueError: above BAKE_TOLERANCE.
    """
    dev = baked.shape.device  # the real model's arrays are on the CPU at bake time; the poses go where they are
    gen = torch.Generator(device=dev).manual_seed(seed)
    pose = (torch.rand(poses, model.num_bones, 3, generator=gen, device=dev) - 0.5) * 1.6
    err = float((model.body_transforms(baked.shape, pose) - baked.body_transforms(baked.shape, pose)).abs().max())
    if not err <= BAKE_TOLERANCE:
        raise ValueError(f"the {model.name} body model's bones do not pose as a rotation between two fixed "
                         f"transforms (difference {err:.2e}); it cannot be stored in the project")
    return err


class BakedBody(BodyModel):
    """The body model of a project, from the arrays `bake_body` wrote: one shape, any pose, on any device
    that torch supports, with nothing imported but torch and numpy."""

    def __init__(self, arrays) -> None:
        self.name = str(arrays["model"])
        self.shape = torch.as_tensor(np.asarray(arrays["shape"]), dtype=torch.float32)
        self.shape_dim = int(self.shape.numel())
        self._rest_vertices = torch.as_tensor(np.asarray(arrays["rest_vertices"]), dtype=torch.float32)
        self.faces = np.asarray(arrays["faces"], np.int64)
        self.skin_weights = torch.as_tensor(np.asarray(arrays["skin_weights"]), dtype=torch.float32)
        self.keypoint_regressor = torch.as_tensor(np.asarray(arrays["keypoint_regressor"]), dtype=torch.float32)
        self.bone_names = [str(n) for n in arrays["bone_names"]]
        self.bone_parents = [int(p) for p in arrays["bone_parents"]]
        self._heads = torch.as_tensor(np.asarray(arrays["bone_heads"]), dtype=torch.float32)
        self._pre = torch.as_tensor(np.asarray(arrays["pre"]), dtype=torch.float32)
        self._post = torch.as_tensor(np.asarray(arrays["post"]), dtype=torch.float32)
        self._native = torch.as_tensor(np.asarray(arrays["native_axes"]), dtype=torch.float32)
        self.semantic_bones = {str(k): int(v) for k, v in zip(arrays["semantic_names"], arrays["semantic_bones"])}
        self.head_bones = tuple(str(n) for n in arrays["head_bones"])
        self.hand_bones = tuple(str(n) for n in arrays["hand_bones"])
        self._checked: torch.Tensor | None = None
        self._levels = _levels(self.bone_parents)
        self._level_parents = [torch.as_tensor(self.bone_parents)[lv] for lv in self._levels]

    def default_shape(self) -> torch.Tensor:
        return self.shape.clone()

    def local_rotvec(self, rotvec_yup: torch.Tensor) -> torch.Tensor:
        return rotvec_yup @ self._native.to(rotvec_yup)

    def _check_shape(self, shape: torch.Tensor) -> None:
        if shape is self._checked:  # the same tensor again (every step): no comparison, no device sync
            return
        if shape.shape != self.shape.shape or not torch.allclose(shape.detach().to(self.shape).float(), self.shape,
                                                                 atol=1e-6):
            raise ValueError("this project's body was stored for another shape; run preprocessing again")
        self._checked = shape

    def _rest(self, shape: torch.Tensor) -> torch.Tensor:
        self._check_shape(shape)
        return self._rest_vertices.to(shape.device)

    def bone_heads(self, shape: torch.Tensor) -> torch.Tensor:
        self._check_shape(shape)
        return self._heads.to(shape.device)

    def _bone_transforms(self, shape: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        self._check_shape(shape)
        n = pose.shape[0]
        rot = torch.eye(4, dtype=pose.dtype, device=pose.device).repeat(n, self.num_bones, 1, 1)
        rot[..., :3, :3] = axis_angle_to_matrix(pose)
        local = self._pre.to(pose) @ rot @ self._post.to(pose)  # [N, J, 4, 4]
        tf = local
        for bones, parents in zip(self._levels[1:], self._level_parents[1:]):
            tf = tf.index_copy(1, bones.to(pose.device), tf[:, parents.to(pose.device)] @ local[:, bones.to(pose.device)])
        return tf
