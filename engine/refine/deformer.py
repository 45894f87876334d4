"""Observation space ↔ canonical space for one frame: Vid2Avatar's inverse-LBS deformer with the
skinning weights of the nearest posed body vertex (K=1); points far from the body are empty."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from engine.body.base import BodyModel, BodyParams
from engine.geometry.camera import Camera
from engine.geometry.lbs import warp
from engine.geometry.nearest import FAR, nearest_point


@dataclass
class FramePose:
    """The (refined) body of one frame."""

    index: int
    transforms: torch.Tensor  # [J, 4, 4] rest → world (differentiable in the refinements)
    vertices: torch.Tensor  # [V, 3] posed body vertices on the session's device (no grad)
    tree: cKDTree | None  # over the lookup vertices (CPU sessions; None on another device)
    features: torch.Tensor | None = None  # [1, C, H, W] geometry-encoder features of the frame (optional)
    camera: Camera | None = None  # the frame's camera (with `features`)
    lookup_vertices: torch.Tensor | None = None  # [L, 3] posed lookup vertices on the device (non-CPU sessions)


LOOKUP_VOXEL = 0.015  # metres


def _voxel_subset(vertices: np.ndarray, voxel: float) -> np.ndarray:
    """Indices of one vertex per occupied voxel (the first in index order), sorted."""
    keys = np.floor(vertices / voxel).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    return np.sort(first)


class Deformer:
    """Holds the body model, its shape and star-pose transforms, and the base per-frame params."""

    def __init__(self, body: BodyModel, params: BodyParams, device: torch.device) -> None:
        self.body = body
        self.params = params
        self.device = device
        self.shape = params.shape
        self.rest = body.rest_vertices(params.shape)  # [V, 3]
        self.star_tf = body.star_transforms(params.shape).to(device)  # [J, 4, 4]
        self.weights = body.skin_weights.to(device)
        self.canonical_vertices = body.canonical_vertices(params.shape)  # [V, 3]
        self.pose_bones = sorted(set(body.semantic_bones.values()))
        # Posing every step runs on the device (no host round trip); `body`, `rest` and `params` stay on the
        # CPU for the callers that pose meshes there.
        self._posing = body.to(device)
        self._rest_dev = self.rest.to(device)
        self._shape_dev = self.shape.to(device)
        self._base_dev = tuple(t.to(device) for t in (params.pose, params.global_orient, params.transl))
        self.pose_bone_index = torch.tensor(self.pose_bones, device=device)  # the same, as an index on the device
        self.canonical_vertices_dev = self.canonical_vertices.to(device)
        # Nearest-vertex lookups (the costliest part of a step) use one vertex per 1.5 cm voxel of the
        # canonical body: skinning weights vary smoothly, and Anny's 13.7k vertices crowd the face and hands.
        self.semantic_pose = params.pose[:, self.pose_bones].to(device)  # [N, B, 3] stored poses
        self.lookup = _voxel_subset(self.canonical_vertices.numpy(), LOOKUP_VOXEL)
        self._lookup_dev = torch.as_tensor(self.lookup, device=device)
        self.lookup_weights = self.weights[self._lookup_dev]
        # How much each canonical vertex is face or hand (the fit keeps the body's shape there).
        self.detail_weights = body.detail_weights(self.canonical_vertices).to(device)

    def base(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stored pose [J, 3], global orientation [3] and translation [3] of frame i (on the device)."""
        return tuple(t[i] for t in self._base_dev)

    def frame(self, i: int, pose_delta: torch.Tensor | None = None, transl_delta: torch.Tensor | None = None,
              base: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> FramePose:
        """Body of frame i with refinements (deltas on the semantic bones and the translation) on top of
        `base` (pose, orientation, translation; default: the stored body of frame i)."""
        pose, orient, transl = (t.to(self.device) for t in (base if base is not None else self.base(i)))
        if pose_delta is not None:
            pose = pose.index_add(0, self.pose_bone_index, pose_delta.to(self.device))
            transl = transl + transl_delta.to(self.device)
        p = BodyParams(self._shape_dev, pose[None], orient[None], transl[None])
        tfs, verts = self._posing.posed(p, rest=self._rest_dev)
        verts = verts[0].detach()
        if self.device.type == "cpu":
            return FramePose(i, tfs[0], verts, cKDTree(verts.numpy()[self.lookup]))
        return FramePose(i, tfs[0], verts, None, lookup_vertices=verts[self._lookup_dev])

    def to_canonical(self, x: torch.Tensor, fp: FramePose, bound: float = np.inf) -> tuple[torch.Tensor, torch.Tensor]:
        """World points [P, 3] → canonical points [P, 3] and distance to the body [P]. Points farther than
        `bound` from the body get distance inf and a meaningless canonical point (a faster search)."""
        d, idx = self.lookup_nearest(x, fp, bound)
        idx = idx.clamp(max=self.lookup_weights.shape[0] - 1)
        xc = warp(x, self.lookup_weights[idx], fp.transforms, self.star_tf)
        return xc, d

    def lookup_nearest(self, x: torch.Tensor, fp: FramePose, bound: float = np.inf
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance [P] and index [P] of the nearest lookup vertex of frame `fp` for world points [P, 3],
        as `cKDTree.query(k=1, distance_upper_bound=bound)`: beyond `bound`, inf and the vertex count.
        Non-finite points (a diverged step) are sent far away: empty space, and the loss says the rest.

        CPU sessions query the frame's KD-tree (much faster there than the brute force); other devices
        search on the device (engine/geometry/nearest.py), without a round trip to the host."""
        if fp.tree is None:
            d, idx = nearest_point(x, fp.lookup_vertices, bound)
            return d.to(x.dtype), idx
        q = np.nan_to_num(x.detach().cpu().numpy(), nan=FAR, posinf=FAR, neginf=-FAR)
        d, idx = fp.tree.query(q, k=1, workers=-1, distance_upper_bound=bound)
        return (torch.as_tensor(d, dtype=x.dtype, device=self.device),
                torch.as_tensor(idx, dtype=torch.int64, device=self.device))

    def to_posed(self, xc: torch.Tensor, fp: FramePose) -> torch.Tensor:
        """Canonical points [P, 3] → world points of frame `fp` (weights of the nearest canonical vertex)."""
        w, _ = self.body.nearest_vertex_weights(xc.detach().cpu(), self.canonical_vertices)
        return warp(xc, w.to(self.device), self.star_tf, fp.transforms)
