"""Anny (NAVER, Apache-2.0; CC0 MakeHuman assets): the default body model, data ships in its wheel."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from engine.body.base import KEYPOINT_NAMES, BodyModel
from engine.geometry.rotations import axis_angle_to_matrix

log = logging.getLogger(__name__)

# Anny is Z-up facing -Y; ours is Y-up facing +Z: (x, y, z) → (x, z, -y), a proper rotation.
_TO_YUP = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions")

_SEMANTIC = {
    "pelvis": "root",
    "spine": "spine03",
    "chest": "spine01",
    "neck": "neck01",
    "head": "head",
    "left_hip": "upperleg01.L",
    "right_hip": "upperleg01.R",
    "left_knee": "lowerleg01.L",
    "right_knee": "lowerleg01.R",
    "left_ankle": "foot.L",
    "right_ankle": "foot.R",
    "left_shoulder": "upperarm01.L",
    "right_shoulder": "upperarm01.R",
    "left_elbow": "lowerarm01.L",
    "right_elbow": "lowerarm01.R",
}


def _anny_cache_ready() -> bool:
    from anny.paths import get_anny_cache_path

    path = get_anny_cache_path()
    return path.exists() and any(path.rglob("*.safetensors"))


class AnnyBody(BodyModel):
    """Anny full body, 13,718 vertices, 104 bones; shape = 6 phenotypes in [0, 1] (0.5 = average)."""

    name = "anny"

    def __init__(self) -> None:
        import anny

        logging.getLogger("anny").setLevel(logging.WARNING)  # its per-load INFO lines are noise here
        if not _anny_cache_ready():
            log.info("Building the Anny body-model cache (one time only, about 2 minutes)...")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "fallback to lbs" without NVIDIA Warp: expected on CPU
            self._m = anny.Anny(skinning_method="lbs").to(torch.float32)
        self._m.requires_grad_(False)
        self.bone_names = list(self._m.bone_labels)
        self.bone_parents = [int(j) for j in self._m.bone_parents]
        self.faces = self._m.get_triangular_faces().cpu().numpy().astype(np.int64)
        self.skin_weights = self._m.dense_vertex_bone_weights.float()
        reg = anny.KeypointsRegressor.coco(self._m)
        assert tuple(reg.labels) == KEYPOINT_NAMES, reg.labels
        self.keypoint_regressor = reg.regression_weights.float()
        self.shape_dim = len(PHENOTYPES)
        self.semantic_bones = {k: self.bone_names.index(v) for k, v in _SEMANTIC.items()}
        self.head_bones = ("head", "eye.L", "eye.R")
        self.hand_bones = tuple(n for n in self.bone_names if n.startswith(("wrist", "finger", "metacarpal")))
        self._c = _TO_YUP
        self._c4 = torch.eye(4)
        self._c4[:3, :3] = _TO_YUP

    def default_shape(self) -> torch.Tensor:
        return torch.full((self.shape_dim,), 0.5)

    def local_rotvec(self, rotvec_yup: torch.Tensor) -> torch.Tensor:
        # Anny's 'local-ref' deltas use world-aligned (native Z-up) axes.
        return rotvec_yup @ self._c  # C^T v for row vectors

    def _rest_model(self, shape: torch.Tensor) -> dict:
        coeffs = self._m._get_phenotype_blendshape_coefficients(
            shape.reshape(1, -1).float(), torch.zeros(1, 0), torch.zeros(1, 0)
        )
        return self._m.get_rest_model(coeffs)

    def _rest(self, shape: torch.Tensor) -> torch.Tensor:
        return self._rest_model(shape)["rest_vertices"][0] @ self._c.T

    def bone_heads(self, shape: torch.Tensor) -> torch.Tensor:
        return self._rest_model(shape)["rest_bone_heads"][0] @ self._c.T

    def _bone_transforms(self, shape: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        n = pose.shape[0]
        deltas = torch.eye(4).repeat(n, self.num_bones, 1, 1)
        deltas[..., :3, :3] = axis_angle_to_matrix(pose)
        tf, _ = self._m.get_bone_transforms(deltas, self._rest_model(shape)["rest_bone_poses"])
        return self._c4 @ tf @ self._c4.T  # conjugate into the Y-up frame
