"""A rigged avatar: the mesh in a bind pose, its skeleton, skin weights and the skinning matrices of every
frame of the motion, and the glTF skinning equation that poses it.

Spaces and matrices (all 4×4, metres, our Y-up world):
- body transforms T_j: the body model's rest → posed bone transforms (engine/body/base.py);
- the bind pose has transforms A_j (the canonical star pose, an A- or T-pose: `rest_transforms`);
- joint j's node sits at its bone's head in the bind pose with no rotation: bind matrix G_j = translate(head);
  the glTF inverse bind matrix is G_j⁻¹;
- frame k moves joint j's node to G_j(k) = M_j(k) G_j with the skinning matrix M_j(k) = T_j(k) A_j⁻¹, so that
  glTF's joint matrix G_j(k) G_j⁻¹ is M_j(k), and a vertex v of the bind mesh goes to Σ_i w_i M_(j_i)(k) v.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.body.base import BodyModel
from engine.geometry.lbs import warp
from engine.mesh.extract import vertex_normals
from engine.rig.skeleton import RestPose, Skeleton, build_skeleton, rest_transforms
from engine.rig.weights import WeightConfig, dense_weights, transfer_weights


@dataclass
class RiggedAvatar:
    """Everything a rigged file holds (arrays in our Y-up world, metres)."""

    skeleton: Skeleton
    vertices: np.ndarray  # [V, 3] float32, the bind pose
    normals: np.ndarray  # [V, 3] float32
    faces: np.ndarray  # [F, 3] int64
    joints: np.ndarray  # [V, 4] int64, indices into the skeleton's bones
    weights: np.ndarray  # [V, 4] float32, rows summing to 1
    bind: np.ndarray  # [B, 4, 4] float64: each joint's node in the bind pose (translation to its head)
    skin: np.ndarray | None  # [K, B, 4, 4] float64: skinning matrices of the K frames of the motion
    fps: float  # frames per second of the motion
    rest: RestPose = "canonical"
    colors: np.ndarray | None = None  # [V, 3] in [0, 1] (without a texture)
    uvs: np.ndarray | None = None  # [V, 2] v up (with a texture)
    texture: np.ndarray | None = None  # [S, S, 3] float32 in [0, 1], row 0 at the top

    @property
    def num_frames(self) -> int:
        return 0 if self.skin is None else int(self.skin.shape[0])

    def node_matrices(self, k: int) -> np.ndarray:
        """Global matrices [B, 4, 4] of the joints' nodes at frame k (the bind pose's when there is no motion)."""
        return self.bind if self.skin is None else self.skin[k] @ self.bind

    def local_matrices(self, k: int | None) -> np.ndarray:
        """Each joint node's matrix relative to its parent [B, 4, 4] at frame k (None: the bind pose)."""
        g = self.bind if k is None else self.node_matrices(k)
        out = g.copy()
        for b, p in enumerate(self.skeleton.parents):
            if p >= 0:
                out[b] = np.linalg.inv(g[p]) @ g[b]
        return out

    def posed(self, k: int) -> np.ndarray:
        """The mesh's vertices [V, 3] at frame k by the glTF skinning equation (`skin_vertices`)."""
        if self.skin is None:
            return self.vertices.copy()
        return skin_vertices(self.vertices, self.joints, self.weights, self.skin[k])

    def posed_with(self, matrices: np.ndarray) -> np.ndarray:
        """The mesh posed by skinning matrices [B, 4, 4] (bind → pose) of the skeleton's bones."""
        return skin_vertices(self.vertices, self.joints, self.weights, matrices)


def skin_vertices(vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Linear blend skinning as glTF defines it: v' = Σ_i w_i M_(j_i) v.

    Args:
        vertices: [V, 3]; joints: [V, 4] int; weights: [V, 4]; matrices: [B, 4, 4] bind → posed.

    Returns:
        [V, 3] float32.
    """
    m = np.einsum("vi,viab->vab", np.asarray(weights, np.float64), np.asarray(matrices, np.float64)[joints])
    v = np.asarray(vertices, np.float64)
    return (np.einsum("vab,vb->va", m[:, :3, :3], v) + m[:, :3, 3]).astype(np.float32)


def loose_bones(body: BodyModel, skeleton: Skeleton) -> np.ndarray:
    """[B] bool: the skeleton's bones loose clothing may follow: all but the arms (the upper arms and below)."""
    arms = {b for b, j in enumerate(skeleton.bones)
            if j in (body.semantic_bones.get("left_shoulder"), body.semantic_bones.get("right_shoulder"))}
    for b, p in enumerate(skeleton.parents):  # parents come first: a child of an arm bone is an arm bone
        if p in arms:
            arms.add(b)
    return np.array([b not in arms for b in range(skeleton.num_bones)])


def build_rig(body: BodyModel, shape: torch.Tensor, vertices: np.ndarray, faces: np.ndarray, weld: np.ndarray | None,
              canonical_body: torch.Tensor, frames: torch.Tensor | None, fps: float, rest: RestPose = "canonical",
              weight_cfg: WeightConfig | None = None) -> RiggedAvatar:
    """Rigs a canonical (star-pose) mesh with the body's skeleton.

    Args:
        body: the body model; shape: [S] its shape.
        vertices: [V, 3] the canonical mesh; faces: [F, 3]; weld: [V] ids of copies of one point (seams), or None.
        canonical_body: [Vb, 3] the body's vertices in the canonical pose.
        frames: [K, J, 4, 4] rest → world body transforms of the motion's frames, or None (no motion).
        fps: frames per second of the motion.
        rest: the bind pose.
        weight_cfg: how weights are transferred (None: the defaults).

    Returns:
        The rigged avatar (colours, uvs and texture left for the caller to set).
    """
    star = body.star_transforms(shape).double()  # [J, 4, 4]
    bind_tf = rest_transforms(body, shape, rest).double()
    poses = [star[None], bind_tf[None]] + ([frames.double()] if frames is not None else [])
    skeleton = build_skeleton(body, torch.cat(poses))
    body_weights = skeleton.merged_weights(body.skin_weights.numpy())
    joints, weights = transfer_weights(vertices, faces, weld, np.asarray(canonical_body), body.faces, body_weights,
                                       weight_cfg or WeightConfig(), loose_bones(body, skeleton))
    bones = torch.as_tensor(skeleton.bones)
    star_k, bind_k = star[bones], bind_tf[bones]  # [B, 4, 4]
    if rest == "canonical":
        bind_vertices = np.asarray(vertices, np.float32)
    else:  # each vertex moved from the star pose to the bind pose with its own four weights
        dense = dense_weights(joints, weights, skeleton.num_bones)
        with torch.no_grad():
            bind_vertices = warp(torch.as_tensor(np.asarray(vertices, np.float64)), torch.as_tensor(dense), star_k,
                                 bind_k).float().numpy()
    heads = body.bone_heads(shape).double()[bones]  # [B, 3] rest space
    heads_bind = (bind_k[:, :3, :3] @ heads[:, :, None])[..., 0] + bind_k[:, :3, 3]
    bind = np.tile(np.eye(4), (skeleton.num_bones, 1, 1))
    bind[:, :3, 3] = heads_bind.numpy()
    skin = None
    if frames is not None:
        skin = (frames.double()[:, bones] @ torch.linalg.inv(bind_k)[None]).numpy()  # [K, B, 4, 4]
    return RiggedAvatar(skeleton, bind_vertices, vertex_normals(bind_vertices, faces), np.asarray(faces, np.int64),
                        joints, weights, bind, skin, float(fps), rest)
