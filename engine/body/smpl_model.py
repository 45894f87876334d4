"""SMPL / SMPL-X through `smplx`, from model files the user supplies (licence-gated, never shipped)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from engine.body.base import KEYPOINT_NAMES, BodyModel
from engine.errors import UserError
from engine.geometry.rotations import axis_angle_to_matrix

log = logging.getLogger(__name__)

_FILES = {"smpl": ("SMPL_NEUTRAL.pkl",), "smplx": ("SMPLX_NEUTRAL.npz", "SMPLX_NEUTRAL.pkl")}
_HOWTO = {
    "smpl": "register at https://smpl.is.tue.mpg.de and download the neutral model",
    "smplx": "register at https://smpl-x.is.tue.mpg.de and download the neutral model",
}

# Body joints shared by SMPL and SMPL-X (first 22 joints).
_JOINTS = {
    "pelvis": 0, "left_hip": 1, "right_hip": 2, "spine": 3, "left_knee": 4, "right_knee": 5,
    "chest": 9, "left_ankle": 7, "right_ankle": 8, "neck": 12, "head": 15,
    "left_shoulder": 16, "right_shoulder": 17, "left_elbow": 18, "right_elbow": 19,
    "left_wrist": 20, "right_wrist": 21,
}  # fmt: skip
_KEYPOINT_JOINTS = {k: _JOINTS[k] for k in (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")}  # fmt: skip
_KEYPOINT_VERTICES = {  # smplx.vertex_ids names
    "nose": "nose", "left_eye": "leye", "right_eye": "reye", "left_ear": "lear", "right_ear": "rear",
    "left_big_toe": "LBigToe", "right_big_toe": "RBigToe", "left_small_toe": "LSmallToe",
    "right_small_toe": "RSmallToe", "left_heel": "LHeel", "right_heel": "RHeel",
}  # fmt: skip


def find_model_file(kind: str, model_dir: str | Path | None) -> Path:
    """Finds SMPL_NEUTRAL.pkl / SMPLX_NEUTRAL.npz in `model_dir` or `model_dir/<kind>/`.

    Raises:
        UserError: naming the exact file expected and where to get it.
    """
    names = _FILES[kind]
    if model_dir is None:
        raise UserError(f"--body {kind} needs --body-model-dir DIR containing {names[0]} ({_HOWTO[kind]}).")
    root = Path(model_dir).expanduser()
    for folder in (root, root / kind):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    raise UserError(
        f"{kind.upper()} model file not found: expected {root / names[0]} "
        f"(or {root / kind / names[0]}); {_HOWTO[kind]}."
    )


class SmplBody(BodyModel):
    """SMPL (6,890 vertices, 24 joints) or SMPL-X (10,475 vertices, 55 joints), neutral gender."""

    def __init__(self, kind: str = "smpl", model_dir: str | Path | None = None, num_betas: int = 10) -> None:
        import smplx
        from smplx.vertex_ids import vertex_ids

        path = find_model_file(kind, model_dir)
        try:
            if kind == "smpl":
                m = smplx.SMPL(model_path=str(path), num_betas=num_betas)
            else:
                m = smplx.SMPLX(model_path=str(path), num_betas=num_betas, use_pca=False, ext=path.suffix[1:])
        except ModuleNotFoundError as e:
            raise UserError(f"{path} needs the Python module '{e.name}' to load (old SMPL pickles store chumpy arrays); "
                            "convert it to plain numpy arrays first.") from e
        except Exception as e:  # noqa: BLE001 - any malformed file gets one clear message
            raise UserError(f"{path} is not a valid {kind.upper()} model file: {e}") from e
        self.name = kind
        self._m = m
        self.v_template = m.v_template.float()  # [V, 3]
        self.shapedirs = m.shapedirs.float()  # [V, 3, S]
        self.J_regressor = m.J_regressor.float()  # [J, V]
        self.parents = m.parents.long()
        self.bone_parents = [int(j) for j in self.parents]
        self.skin_weights = m.lbs_weights.float()
        self.faces = np.asarray(m.faces, dtype=np.int64)
        self.shape_dim = int(self.shapedirs.shape[-1])
        nj = int(self.J_regressor.shape[0])
        self.bone_names = [f"joint{i:02d}" for i in range(nj)]
        # SMPL's kinematic tree: 15 head, 20/21 wrists, 22/23 hands (SMPL-X: 22-24 jaw and eyes, 25+ fingers).
        self.head_bones = tuple(self.bone_names[i] for i in (15, 22, 23, 24)) if nj > 24 else ("joint15",)
        self.hand_bones = tuple(self.bone_names[i] for i in ((20, 21, *range(25, nj)) if nj > 24 else (20, 21, 22, 23)))
        self.semantic_bones = dict(_JOINTS)
        V = self.v_template.shape[0]
        ids = vertex_ids["smplh" if kind == "smpl" else "smplx"]
        reg = torch.zeros(len(KEYPOINT_NAMES), V)
        for k, name in enumerate(KEYPOINT_NAMES):
            if name in _KEYPOINT_JOINTS:
                reg[k] = self.J_regressor[_KEYPOINT_JOINTS[name]]
            else:
                vid = ids[_KEYPOINT_VERTICES[name]]
                if vid >= V:
                    raise UserError(f"{path} has {V} vertices; a {kind.upper()} model needs the standard topology.")
                reg[k, vid] = 1.0
        self.keypoint_regressor = reg

    def _rest(self, shape: torch.Tensor) -> torch.Tensor:
        return self.v_template + torch.einsum("vds,s->vd", self.shapedirs, shape.float())

    def bone_heads(self, shape: torch.Tensor) -> torch.Tensor:
        return self.J_regressor @ self._rest(shape)

    def _bone_transforms(self, shape: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        from smplx.lbs import batch_rigid_transform

        joints = self.J_regressor @ self._rest(shape)  # [J, 3]
        n = pose.shape[0]
        rot = axis_angle_to_matrix(pose)  # [N, J, 3, 3]
        _, rel = batch_rigid_transform(rot, joints[None].expand(n, -1, -1), self.parents)
        return rel
