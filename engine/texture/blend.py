"""Blending many frames' colour samples per texel, robustly.

Each frame contributes (texel, colour, weight) samples. The blend is an iteratively reweighted mean
with a Cauchy loss: a frame whose colour disagrees with the others (a misregistered limb, a shadow,
a bit of background) loses weight instead of ghosting into the texture, the way a weighted median
would, while agreeing samples still average their noise away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CAUCHY_SCALE = 0.06  # colour difference (of 1) at which a sample's weight halves
IRLS_ROUNDS = 3


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
    idx = np.concatenate([s.texels for s in samples])
    col = np.concatenate([s.colors for s in samples]).astype(np.float64)
    w0 = np.concatenate([s.weights * s.frame_weight for s in samples]).astype(np.float64)
    w = w0
    mean = np.zeros((num_texels, 3))
    for r in range(rounds + 1):
        total = np.bincount(idx, w, minlength=num_texels)
        safe = np.where(total > 0, total, 1.0)
        mean = np.stack([np.bincount(idx, w * col[:, c], minlength=num_texels) for c in range(3)], 1) / safe[:, None]
        if r == rounds:
            break
        res2 = ((col - mean[idx]) ** 2).sum(1)
        w = w0 / (1.0 + res2 / scale**2)
    return mean.astype(np.float32), np.bincount(idx, w0, minlength=num_texels).astype(np.float32)
