"""Bilinear lookups in a texture image at UV coordinates.

Conventions (those of `engine/mesh/textured.py`): u runs left → right along columns; v runs bottom →
top (OBJ's convention) while row 0 of the image is the top. Texel (row r, column c) has its centre at
u = (c + 0.5) / W, v = 1 - (r + 0.5) / H, so continuous texel coordinates are
x = u·W − 0.5 (column) and y = (1 − v)·H − 0.5 (row), with texel centres at integers.
"""

from __future__ import annotations

import numpy as np


def uv_to_texel(uvs: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Continuous texel coordinates of UVs [N, 2]: (row y [N], column x [N]), centres at integers."""
    uvs = np.asarray(uvs, np.float64).reshape(-1, 2)
    x = uvs[:, 0] * width - 0.5
    y = (1.0 - uvs[:, 1]) * height - 0.5
    return y, x


def sample_texture(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Bilinear samples of `texture` at `uvs`, clamped at the image border.

    Args:
        texture: [H, W, C] (or [H, W]) image, row 0 at the top.
        uvs: [N, 2] UVs, v up.

    Returns:
        [N, C] (or [N]) float32 samples.
    """
    tex = np.asarray(texture)
    h, w = tex.shape[:2]
    y, x = uv_to_texel(uvs, h, w)
    x = np.clip(x, 0.0, w - 1.0)
    y = np.clip(y, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(len(x), np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(len(y), np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (x - x0).astype(np.float32)
    fy = (y - y0).astype(np.float32)
    if tex.ndim == 3:
        fx, fy = fx[:, None], fy[:, None]
    top = tex[y0, x0] * (1.0 - fx) + tex[y0, x1] * fx
    bottom = tex[y1, x0] * (1.0 - fx) + tex[y1, x1] * fx
    return (top * (1.0 - fy) + bottom * fy).astype(np.float32)
