"""Rotation helpers (axis-angle ↔ matrices, rigid 4x4 transforms)."""

from __future__ import annotations

import torch


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, differentiable and stable at zero.

    Args:
        rotvec: [..., 3] axis * angle (radians).

    Returns:
        [..., 3, 3] rotation matrices.
    """
    angle = rotvec.norm(dim=-1, keepdim=True)  # [..., 1]
    # Taylor-safe sin(a)/a and (1-cos a)/a^2 so the gradient at 0 is finite.
    small = angle < 1e-6
    a2 = angle * angle
    safe = torch.where(small, torch.ones_like(angle), angle)
    sin_a = torch.where(small, 1.0 - a2 / 6.0, torch.sin(safe) / safe)
    cos_a = torch.where(small, 0.5 - a2 / 24.0, (1.0 - torch.cos(safe)) / (safe * safe))
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*rotvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(k)
    return eye + sin_a[..., None] * k + cos_a[..., None] * (k @ k)


def rigid(rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Builds [..., 4, 4] homogeneous transforms from [..., 3, 3] and [..., 3]."""
    out = torch.zeros(*rotation.shape[:-2], 4, 4, dtype=rotation.dtype, device=rotation.device)
    out[..., :3, :3] = rotation
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def apply_transform(transform: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Applies [..., 4, 4] transforms to [..., 3] points (broadcasting)."""
    return (transform[..., :3, :3] @ points[..., None])[..., 0] + transform[..., :3, 3]
