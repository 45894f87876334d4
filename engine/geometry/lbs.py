"""Linear blend skinning of arbitrary points, forward and inverse.

A point carries skinning weights over the J bones. Bone transforms map the body's rest pose to
some pose. Forward LBS blends the transforms with the weights and applies the blended matrix;
inverse LBS inverts that blended matrix per point (exact for the same weights). Moving a point
between two poses (canonical star pose ↔ a frame's pose) is inverse LBS then forward LBS.
"""

from __future__ import annotations

import torch


def blend_transforms(weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Per-point blended transforms.

    Args:
        weights: [P, J] skinning weights (rows sum to 1).
        transforms: [J, 4, 4] bone transforms.

    Returns:
        [P, 4, 4]
    """
    return torch.einsum("pj,jab->pab", weights.to(transforms.dtype), transforms)


def lbs(points: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Forward LBS: rest-space points [P, 3] → posed points [P, 3]."""
    m = blend_transforms(weights, transforms)
    return (m[:, :3, :3] @ points[:, :, None])[..., 0] + m[:, :3, 3]


def inverse_lbs(points: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Inverse LBS: posed points [P, 3] → rest-space points [P, 3] (same weights)."""
    m = blend_transforms(weights, transforms)
    rhs = (points - m[:, :3, 3])[:, :, None]
    return torch.linalg.solve(m[:, :3, :3], rhs)[..., 0]


def warp(
    points: torch.Tensor, weights: torch.Tensor, from_tf: torch.Tensor, to_tf: torch.Tensor
) -> torch.Tensor:
    """Moves points [P, 3] from the pose of `from_tf` [J,4,4] to the pose of `to_tf` [J,4,4]."""
    return lbs(inverse_lbs(points, weights, from_tf), weights, to_tf)
