"""The body-model interface every model (Anny, SMPL, SMPL-X) implements.

Conventions (all models): metres; world and body frames are Y-up with the body facing +Z at
rest; the person's left is +X. Skinning drops model-specific pose correctives so that LBS is
invertible for arbitrary points (Vid2Avatar's deformer does the same).

Poses are per-bone axis-angles [J, 3] in the model's own local convention; `global_orient`
(axis-angle about the world origin) and `transl` place the body in the world. The canonical
space is the star pose (legs apart), as in Vid2Avatar.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.geometry.lbs import inverse_lbs, lbs, warp
from engine.geometry.rotations import axis_angle_to_matrix, rigid

# COCO-17 followed by the six foot points (OpenPose/COCO-WholeBody order).
KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_big_toe", "right_big_toe", "left_small_toe", "right_small_toe", "left_heel", "right_heel",
)  # fmt: skip

STAR_LEG_DEGREES = 30.0  # Vid2Avatar's canonical star pose


@dataclass
class BodyParams:
    """Body parameters for N frames of one person (tensors, float32)."""

    shape: torch.Tensor  # [S] shared shape coefficients
    pose: torch.Tensor  # [N, J, 3] per-bone axis-angle (model-native local convention)
    global_orient: torch.Tensor  # [N, 3] axis-angle about the world origin
    transl: torch.Tensor  # [N, 3]

    @property
    def num_frames(self) -> int:
        return int(self.pose.shape[0])

    def frame(self, i: int) -> BodyParams:
        return BodyParams(self.shape, self.pose[i : i + 1], self.global_orient[i : i + 1], self.transl[i : i + 1])

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).detach().cpu().numpy().astype(np.float32) for k in ("shape", "pose", "global_orient", "transl")}

    @staticmethod
    def from_numpy(d) -> BodyParams:
        return BodyParams(*(torch.as_tensor(np.asarray(d[k]), dtype=torch.float32) for k in ("shape", "pose", "global_orient", "transl")))


class BodyModel:
    """Interface; subclasses set the attributes below and implement `_rest` and `_bone_transforms`."""

    name: str
    bone_names: list[str]
    bone_parents: list[int]  # [J] index of each bone's parent (-1: a root); parents come before children
    faces: np.ndarray  # [F, 3] int64
    skin_weights: torch.Tensor  # [V, J] dense, rows sum to 1
    keypoint_regressor: torch.Tensor  # [K, V] keypoints = regressor @ vertices
    shape_dim: int
    # Semantic joints used by motion generators / fitting (name → bone index).
    semantic_bones: dict[str, int]
    # Bones of the parts a full-body video rarely resolves: the head (its front is the face) and the hands.
    head_bones: tuple[str, ...] = ()
    hand_bones: tuple[str, ...] = ()

    # ---- model-specific -------------------------------------------------------------------
    def _rest(self, shape: torch.Tensor) -> torch.Tensor:
        """Rest-pose vertices [V, 3] (body frame) for shape [S]."""
        raise NotImplementedError

    def _bone_transforms(self, shape: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Rest → posed bone transforms [N, J, 4, 4] (body frame, no global placement)."""
        raise NotImplementedError

    def bone_heads(self, shape: torch.Tensor) -> torch.Tensor:
        """Rest-space position of every bone's joint (its head) [J, 3], for shape [S]."""
        raise NotImplementedError

    def local_rotvec(self, rotvec_yup: torch.Tensor) -> torch.Tensor:
        """Converts an axis-angle [.., 3] in the Y-up body frame into the model's pose convention."""
        return rotvec_yup

    # ---- shared -----------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> BodyModel:
        """A copy whose arrays live on `device` (the same model when they already do), so that posing runs
        there. Only for models whose posing is plain torch on their own arrays (`BakedBody`)."""
        device = torch.device(device)
        if self.skin_weights.device == device:
            return self
        moved = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(moved, name, value.to(device))
            elif isinstance(value, list) and value and all(isinstance(v, torch.Tensor) for v in value):
                setattr(moved, name, [v.to(device) for v in value])
        return moved

    @property
    def num_bones(self) -> int:
        return len(self.bone_names)

    @property
    def num_vertices(self) -> int:
        return int(self.skin_weights.shape[0])

    def default_shape(self) -> torch.Tensor:
        return torch.zeros(self.shape_dim)

    def zero_pose(self, n: int = 1) -> torch.Tensor:
        return torch.zeros(n, self.num_bones, 3)

    def star_pose(self) -> torch.Tensor:
        """Canonical star pose [J, 3]: legs spread ±30° in the frontal plane."""
        pose = self.zero_pose(1)[0]
        a = math.radians(STAR_LEG_DEGREES)
        # +a about the forward axis (+Z) swings a downward leg toward +X, the body's left side.
        pose[self.semantic_bones["left_hip"]] = self.local_rotvec(torch.tensor([0.0, 0.0, a]))
        pose[self.semantic_bones["right_hip"]] = self.local_rotvec(torch.tensor([0.0, 0.0, -a]))
        return pose

    def rest_vertices(self, shape: torch.Tensor) -> torch.Tensor:
        return self._rest(shape)

    def global_transform(self, global_orient: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        """[N, 4, 4] world placement."""
        return rigid(axis_angle_to_matrix(global_orient), transl)

    def bone_transforms(self, params: BodyParams) -> torch.Tensor:
        """Rest → world transforms [N, J, 4, 4] for every frame."""
        tf = self._bone_transforms(params.shape, params.pose)
        g = self.global_transform(params.global_orient, params.transl)
        return g[:, None] @ tf

    def body_transforms(self, shape: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Rest → posed bone transforms [N, J, 4, 4] of poses [N, J, 3] in the body frame (no global placement)."""
        return self._bone_transforms(shape, pose)

    def star_transforms(self, shape: torch.Tensor) -> torch.Tensor:
        """Rest → canonical (star pose) transforms [J, 4, 4]."""
        return self._bone_transforms(shape, self.star_pose()[None])[0]

    def detail_weights(self, vertices: torch.Tensor) -> torch.Tensor:
        """How much each vertex [V] belongs to the face or a hand, in [0, 1], for vertices [V, 3] of this body
        in a pose facing +z (the canonical one): skinning weight on the hand bones, plus skinning weight on
        the head bones ramped from the middle of the head (0) to its front (1), so hair at the back and
        top stays free."""
        def mass(names: tuple[str, ...]) -> torch.Tensor:
            idx = [self.bone_names.index(n) for n in names if n in self.bone_names]
            return self.skin_weights[:, idx].sum(1) if idx else torch.zeros(len(self.skin_weights))

        head, hands = mass(self.head_bones), mass(self.hand_bones)
        z = vertices[:, 2].float()
        on_head = head > 0.5
        if on_head.any():
            zc = float(z[on_head].mean())
            depth = float(z[on_head].max()) - zc
            head = head * ((z - zc) / max(0.5 * depth, 1e-3)).clamp(0, 1)
        return (head + hands).clamp(0, 1)

    def canonical_vertices(self, shape: torch.Tensor) -> torch.Tensor:
        """Body vertices in the canonical star pose [V, 3]."""
        return lbs(self._rest(shape), self.skin_weights, self.star_transforms(shape))

    def posed(self, params: BodyParams, rest: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The body posed into every frame of `params`: the one way a body is posed.

        Args:
            params: shape and N frames of pose, orientation and translation.
            rest: the rest vertices of `params.shape` when the caller already has them (the shape
                blend is the costly part; per-frame skinning is cheap).

        Returns:
            rest → world bone transforms [N, J, 4, 4] and world vertices [N, V, 3].
        """
        rest = self._rest(params.shape) if rest is None else rest
        tfs = self.bone_transforms(params)
        return tfs, torch.stack([lbs(rest, self.skin_weights, tf) for tf in tfs])

    def posed_vertices(self, params: BodyParams) -> torch.Tensor:
        """World vertices for every frame [N, V, 3]."""
        return self.posed(params)[1]

    def keypoints(self, vertices: torch.Tensor) -> torch.Tensor:
        """[N, V, 3] vertices → [N, K, 3] keypoints (KEYPOINT_NAMES order)."""
        return torch.einsum("kv,nvd->nkd", self.keypoint_regressor.to(vertices.dtype), vertices)

    def canonical_to_posed(
        self, points: torch.Tensor, weights: torch.Tensor, shape: torch.Tensor, frame_tf: torch.Tensor
    ) -> torch.Tensor:
        """Canonical points [P, 3] with weights [P, J] → world points for one frame (tf [J, 4, 4])."""
        return warp(points, weights, self.star_transforms(shape), frame_tf)

    def posed_to_canonical(
        self, points: torch.Tensor, weights: torch.Tensor, shape: torch.Tensor, frame_tf: torch.Tensor
    ) -> torch.Tensor:
        """Inverse of `canonical_to_posed`."""
        return warp(points, weights, frame_tf, self.star_transforms(shape))

    def nearest_vertex_weights(self, points: torch.Tensor, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Skinning weights of the nearest body vertex (Vid2Avatar's K=1 deformer).

        Args:
            points: [P, 3]; vertices: [V, 3] body vertices in the same space.

        Returns:
            weights [P, J] and distance to that vertex [P].
        """
        d, idx = _nearest(points, vertices)
        return self.skin_weights[idx], d

    def inverse_lbs_points(self, points: torch.Tensor, params: BodyParams) -> torch.Tensor:
        """World points of frame 0 of `params` → rest-space points (weights of nearest posed vertex)."""
        tf = self.bone_transforms(params)[0]
        rest = self._rest(params.shape)
        posed = lbs(rest, self.skin_weights, tf)
        w, _ = self.nearest_vertex_weights(points, posed)
        return inverse_lbs(points, w, tf)


def _nearest(points: torch.Tensor, vertices: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force nearest vertex in chunks (exact); [P] distances and indices."""
    ds, ids = [], []
    for s in range(0, points.shape[0], chunk):
        # The matrix-product shortcut cdist takes by default loses ~1 mm to cancellation (it then
        # picks a neighbouring vertex, often on another bone); the direct form is exact and as fast.
        d = torch.cdist(
            points[s : s + chunk].float(), vertices.float(), compute_mode="donot_use_mm_for_euclid_dist"
        )
        m, i = d.min(dim=1)
        ds.append(m)
        ids.append(i)
    return torch.cat(ds), torch.cat(ids)
