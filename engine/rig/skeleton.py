"""The skeleton of a rigged avatar: the body model's bones pruned to those that move, with readable names,
and the bind pose an artist asks for (the canonical star pose, an A-pose or a T-pose).

A body model poses its vertices with rest → posed bone transforms T_j (engine/body/base.py). A bone whose
transform relative to its parent, T_parent⁻¹ T_j, is the same in every pose the rig must reproduce moves
rigidly with its parent: its skinning weights can go to the parent with no change to any of those poses.
Anny has 104 bones, of which a fit moves 15; the fingers, toes, eyes and the spine and neck segments
between the fitted ones merge into their nearest kept ancestor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from engine.body.base import BodyModel

RestPose = Literal["canonical", "a-pose", "t-pose"]
REST_POSES: tuple[str, ...] = get_args(RestPose)

# Readable names (the humanoid names game engines' retargeting expects) of the body's semantic bones.
READABLE = {
    "pelvis": "Hips", "spine": "Spine", "chest": "Chest", "neck": "Neck", "head": "Head",
    "left_hip": "LeftUpperLeg", "right_hip": "RightUpperLeg", "left_knee": "LeftLowerLeg",
    "right_knee": "RightLowerLeg", "left_ankle": "LeftFoot", "right_ankle": "RightFoot",
    "left_shoulder": "LeftUpperArm", "right_shoulder": "RightUpperArm", "left_elbow": "LeftLowerArm",
    "right_elbow": "RightLowerArm", "left_wrist": "LeftHand", "right_wrist": "RightHand",
}  # fmt: skip
# Hands are kept for artists even when the fit does not move them; models without a `left_wrist` semantic
# bone name theirs here (Anny).
HAND_BONES = {"left_wrist": ("wrist.L",), "right_wrist": ("wrist.R",)}
# Arm elevation of the bind poses, degrees below horizontal.
ARM_DROP_DEGREES = {"a-pose": 45.0, "t-pose": 0.0}
SAME_MOTION_TOLERANCE = 1e-5  # metres / radians: a bone whose motion relative to its parent varies less is merged


@dataclass(frozen=True)
class Skeleton:
    """Kept bones in hierarchy order (every parent before its children)."""

    bones: list[int]  # [B] the body model's index of each kept bone
    names: list[str]  # [B] readable names
    parents: list[int]  # [B] index into `bones` of the parent (-1: the root)
    merge: np.ndarray  # [J] int64: for every body bone, the kept bone (index into `bones`) it moves with

    @property
    def num_bones(self) -> int:
        return len(self.bones)

    def merged_weights(self, weights: np.ndarray) -> np.ndarray:
        """Body skinning weights [V, J] → weights over the kept bones [V, B] (each bone's weight to the kept
        bone it moves with)."""
        out = np.zeros((weights.shape[0], self.num_bones), np.float64)
        np.add.at(out.T, self.merge, np.asarray(weights, np.float64).T)
        return out


def hand_bones(body: BodyModel) -> dict[str, int]:
    """The body's hand (wrist) bones, semantic name → bone index; empty for a model without them."""
    out = {}
    for key, names in HAND_BONES.items():
        if key in body.semantic_bones:
            out[key] = body.semantic_bones[key]
        else:
            found = [body.bone_names.index(n) for n in names if n in body.bone_names]
            if found:
                out[key] = found[0]
    return out


def build_skeleton(body: BodyModel, transforms: torch.Tensor, tolerance: float = SAME_MOTION_TOLERANCE) -> Skeleton:
    """The bones a rig needs to reproduce every pose in `transforms`.

    Kept: the roots, the semantic bones (hips, spine, limbs, neck, head), the hands, and every bone whose
    motion relative to its parent varies over `transforms`; the others merge into their nearest kept
    ancestor.

    Args:
        body: the body model.
        transforms: [N, J, 4, 4] rest → posed bone transforms of every pose the rig must reproduce (the
            frames, the canonical pose and the bind pose).
        tolerance: largest variation of a merged bone's parent-relative transform.

    Returns:
        The skeleton.
    """
    parents = body.bone_parents
    tf = transforms.double()
    keep = set(body.semantic_bones.values()) | set(hand_bones(body).values())
    for j, p in enumerate(parents):
        if p < 0:
            keep.add(j)
            continue
        rel = torch.linalg.inv(tf[:, p]) @ tf[:, j]  # [N, 4, 4]
        if float((rel - rel[:1]).abs().max()) > tolerance:
            keep.add(j)
    order = _hierarchy_order(parents)
    bones = [j for j in order if j in keep]
    index = {j: b for b, j in enumerate(bones)}

    def kept_ancestor(j: int) -> int:
        while j >= 0 and j not in index:
            j = parents[j]
        return j

    merge = np.array([index[kept_ancestor(j)] if kept_ancestor(j) >= 0 else 0 for j in range(len(parents))], np.int64)
    rig_parents = [index[a] if (a := kept_ancestor(parents[j])) >= 0 else -1 for j in bones]
    return Skeleton(bones, _readable_names(body, bones), rig_parents, merge)


def _hierarchy_order(parents: list[int]) -> list[int]:
    """Bone indices with every parent before its children (breadth first from the roots)."""
    children: dict[int, list[int]] = {}
    for j, p in enumerate(parents):
        children.setdefault(p, []).append(j)
    order, queue = [], list(children.get(-1, []))
    while queue:
        j = queue.pop(0)
        order.append(j)
        queue += children.get(j, [])
    return order


def _readable_names(body: BodyModel, bones: list[int]) -> list[str]:
    semantic = {**{j: k for k, j in body.semantic_bones.items()}, **{j: k for k, j in hand_bones(body).items()}}
    names = []
    for j in bones:
        name = READABLE.get(semantic.get(j, ""), body.bone_names[j])
        names.append(name if name not in names else f"{name}_{j}")
    return names


def rest_pose(body: BodyModel, shape: torch.Tensor, rest: RestPose) -> torch.Tensor:
    """Body pose [J, 3] of a bind pose: the canonical star pose, or legs straight with the upper arms raised
    or lowered in the frontal plane to 45° below horizontal (A-pose) or horizontal (T-pose)."""
    if rest == "canonical":
        return body.star_pose()
    pose = body.zero_pose(1)[0]
    heads = body.bone_heads(shape)
    drop = math.radians(ARM_DROP_DEGREES[rest])
    for side, sign in (("left", 1.0), ("right", -1.0)):
        shoulder, elbow = body.semantic_bones[f"{side}_shoulder"], body.semantic_bones[f"{side}_elbow"]
        # The upper arm's direction at zero pose (the model's rest may not be its zero pose).
        zero = body.body_transforms(shape, pose[None])[0]
        a = zero[shoulder, :3, :3] @ heads[shoulder] + zero[shoulder, :3, 3]
        b = zero[elbow, :3, :3] @ heads[elbow] + zero[elbow, :3, 3]
        d = (b - a).double()
        now = math.atan2(float(d[1]), abs(float(d[0])))  # elevation above horizontal, in the frontal plane
        # +angle about +Z raises the left arm (pointing +X); the right arm (pointing -X) mirrors it.
        pose[shoulder] = body.local_rotvec(torch.tensor([0.0, 0.0, sign * (-drop - now)]))
    return pose


def rest_transforms(body: BodyModel, shape: torch.Tensor, rest: RestPose) -> torch.Tensor:
    """Rest → bind-pose bone transforms [J, 4, 4] (body frame)."""
    if rest == "canonical":
        return body.star_transforms(shape)
    return body.body_transforms(shape, rest_pose(body, shape, rest)[None])[0]
