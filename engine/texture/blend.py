"""Blending many frames' colour samples per texel, robustly.

Each frame contributes (texel, colour, weight) samples. The blend is an iteratively reweighted mean
with a Cauchy loss: a frame whose colour disagrees with the others (a misregistered limb, a shadow,
a bit of background) loses weight instead of ghosting into the texture, the way a weighted median
would, while agreeing samples still average their noise away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

CAUCHY_SCALE = 0.06  # colour difference (of 1) at which a sample's weight halves
IRLS_ROUNDS = 2


@dataclass
class FrameSamples:
    """What one frame saw of the texture."""

    frame: int
    texels: np.ndarray  # [n] int64 indices into the texel list
    colors: np.ndarray  # [n, 3] float32
    weights: np.ndarray  # [n] float32 (per sample: angle, mask and silhouette margins, distance)
    frame_weight: float = 1.0  # the frame's own quality (pose fit, sharpness), set once all are seen
    extra: dict = field(default_factory=dict)  # what registration needs to sample the frame again


def robust_blend(samples: list[FrameSamples], num_texels: int, rounds: int = IRLS_ROUNDS,
                 scale: float = CAUCHY_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """Per-texel robust mean colour [T, 3] and total weight [T] (0: no frame saw the texel)."""
    if not samples:
        return np.zeros((num_texels, 3), np.float32), np.zeros(num_texels, np.float32)
    idx = torch.as_tensor(np.concatenate([s.texels for s in samples]))
    col = torch.as_tensor(np.concatenate([s.colors for s in samples]), dtype=torch.float32)
    w0 = torch.as_tensor(np.concatenate([s.weights * s.frame_weight for s in samples]), dtype=torch.float32)
    support = torch.zeros(num_texels).index_add_(0, idx, w0)
    w = w0
    for r in range(rounds + 1):
        total = torch.zeros(num_texels).index_add_(0, idx, w)
        mean = torch.zeros(num_texels, 3).index_add_(0, idx, w[:, None] * col) / total.clamp(min=1e-12)[:, None]
        if r == rounds:
            break
        res2 = ((col - mean[idx]) ** 2).sum(1)
        w = w0 / (1.0 + res2 / scale**2)
    return mean.numpy(), support.numpy()
