"""Procedural motions (body poses over time) built from semantic joints, so any body model works."""

from __future__ import annotations

import math

import numpy as np
import torch

from engine.body.base import BodyModel

MOTIONS = ("turn", "walk")


def _set(pose: torch.Tensor, body: BodyModel, joint: str, rotvec_yup) -> None:
    pose[body.semantic_bones[joint]] = body.local_rotvec(torch.tensor(rotvec_yup, dtype=torch.float32))


def motion(body: BodyModel, kind: str, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Poses for `n` frames.

    Returns:
        pose [N, J, 3], global_orient [N, 3], transl [N, 3]; the body stays near the origin
        (the camera is fitted to it afterwards).
    """
    pose = body.zero_pose(n)
    orient = torch.zeros(n, 3)
    transl = torch.zeros(n, 3)
    phase0 = rng.uniform(0, 2 * math.pi)
    # Arms lowered a little from the rest pose, but kept away from the torso (clothes stay apart).
    arm = rng.uniform(0.15, 0.3)
    start_yaw = rng.uniform(-0.3, 0.3)
    for i in range(n):
        s = i / max(n - 1, 1)
        ph = phase0 + 2 * math.pi * 2 * s  # two gait / sway cycles per clip
        if kind == "turn":
            yaw = start_yaw + 2 * math.pi * s  # one full turn in place
            orient[i] = torch.tensor([0.0, yaw, 0.0])
            _set(pose[i], body, "left_shoulder", [0.0, 0.0, -arm + 0.08 * math.sin(ph)])
            _set(pose[i], body, "right_shoulder", [0.0, 0.0, arm - 0.08 * math.sin(ph)])
            _set(pose[i], body, "left_elbow", [-0.15 - 0.1 * math.sin(ph), 0.0, 0.0])
            _set(pose[i], body, "right_elbow", [-0.15 + 0.1 * math.sin(ph), 0.0, 0.0])
            _set(pose[i], body, "neck", [0.05 * math.sin(ph), 0.1 * math.sin(ph / 2), 0.0])
        elif kind == "walk":
            # Walk once around a circle of radius 0.7 m, facing along the path.
            ang = 2 * math.pi * s + start_yaw
            transl[i] = torch.tensor([0.7 * math.sin(ang), 0.0, -0.7 + 0.7 * math.cos(ang)])
            orient[i] = torch.tensor([0.0, ang + math.pi / 2, 0.0])
            g = math.sin(2 * math.pi * 4 * s)  # four strides
            _set(pose[i], body, "left_hip", [-0.35 * g, 0.0, 0.0])
            _set(pose[i], body, "right_hip", [0.35 * g, 0.0, 0.0])
            _set(pose[i], body, "left_knee", [0.5 * max(0.0, g), 0.0, 0.0])
            _set(pose[i], body, "right_knee", [0.5 * max(0.0, -g), 0.0, 0.0])
            _set(pose[i], body, "left_shoulder", [0.3 * g, 0.0, -arm])
            _set(pose[i], body, "right_shoulder", [-0.3 * g, 0.0, arm])
            _set(pose[i], body, "left_elbow", [-0.3, 0.0, 0.0])
            _set(pose[i], body, "right_elbow", [-0.3, 0.0, 0.0])
        else:
            raise ValueError(f"unknown motion {kind!r}")
    return pose, orient, transl
