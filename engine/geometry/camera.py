"""Pinhole cameras in OpenCV convention (x right, y down, z forward)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Camera:
    """A pinhole camera; world → camera is x_cam = R x_world + t."""

    K: np.ndarray  # [3, 3] intrinsics (pixels)
    R: np.ndarray  # [3, 3] world-to-camera rotation
    t: np.ndarray  # [3] world-to-camera translation
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates, [3]."""
        return -self.R.T @ self.t

    def to_dict(self) -> dict:
        return {
            "K": self.K.tolist(),
            "R": self.R.tolist(),
            "t": self.t.tolist(),
            "width": self.width,
            "height": self.height,
        }

    @staticmethod
    def from_dict(d: dict) -> Camera:
        return Camera(
            K=np.asarray(d["K"], dtype=np.float64),
            R=np.asarray(d["R"], dtype=np.float64),
            t=np.asarray(d["t"], dtype=np.float64),
            width=int(d["width"]),
            height=int(d["height"]),
        )

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel rays through pixel centres.

        Returns:
            origins [H, W, 3] and unit directions [H, W, 3] in world coordinates.
        """
        u, v = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        return rays_through(self, np.stack([u, v], axis=-1))


def rays_through(camera: Camera, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays through image points: xy [..., 2] in pixel units (a pixel's centre is its index + 0.5).

    Returns:
        origins [..., 3] and unit directions [..., 3] in world coordinates (float64).
    """
    p = np.concatenate([xy, np.ones((*xy.shape[:-1], 1))], axis=-1)
    d = p @ np.linalg.inv(camera.K).T @ camera.R  # R^T d for row vectors
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return np.broadcast_to(camera.center, d.shape).copy(), d


def pixel_rays(camera: Camera, pix: np.ndarray | torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through the centres of integer pixels pix [R, 2] (x, y): origins, unit dirs [R, 3] (world,
    float32 tensors on `device`). Pixels given as a tensor stay where they are (no host round trip)."""
    if isinstance(pix, torch.Tensor):
        to_world = torch.as_tensor(np.linalg.inv(camera.K).T @ camera.R, dtype=torch.float32, device=device)
        xy = pix.to(device=device, dtype=torch.float32) + 0.5
        d = torch.cat([xy, torch.ones_like(xy[:, :1])], 1) @ to_world
        d = d / d.norm(dim=1, keepdim=True)
        return torch.as_tensor(camera.center, dtype=torch.float32, device=device).expand_as(d), d
    o, d = rays_through(camera, np.asarray(pix, np.float64) + 0.5)
    return (torch.as_tensor(o, dtype=torch.float32, device=device),
            torch.as_tensor(d, dtype=torch.float32, device=device))


def project(points: torch.Tensor | np.ndarray, camera: Camera):
    """Projects world points [..., 3] to pixel coordinates [..., 2] (same array type)."""
    if isinstance(points, np.ndarray):
        cam = points @ camera.R.T + camera.t
        pix = cam @ camera.K.T
        return pix[..., :2] / pix[..., 2:3]
    R = torch.as_tensor(camera.R, dtype=points.dtype, device=points.device)
    t = torch.as_tensor(camera.t, dtype=points.dtype, device=points.device)
    K = torch.as_tensor(camera.K, dtype=points.dtype, device=points.device)
    cam = points @ R.T + t
    pix = cam @ K.T
    return pix[..., :2] / pix[..., 2:3]


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 1.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t) for a camera at `eye` looking at `target` (OpenCV axes)."""
    eye = np.asarray(eye, dtype=np.float64)
    f = np.asarray(target, dtype=np.float64) - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, np.asarray(up, dtype=np.float64))
    r /= np.linalg.norm(r)
    d = np.cross(f, r)  # image "down" axis
    R = np.stack([r, d, f])
    return R, -R @ eye
