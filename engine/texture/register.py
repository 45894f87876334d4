"""Registering one frame to the texture before it is blended in.

A frame whose refined pose is a few pixels off would smear every texel it touches. Each body part of
the frame gets a small image-space shift that best explains the current blend (Lucas–Kanade:
Gauss–Newton on the colour difference, on a slightly blurred image so that shifts of a few pixels are
still found); the frame's colours are then read again at the shifted places.
"""

from __future__ import annotations

import cv2
import numpy as np

from engine.geometry.texture_sampling import sample_texture
from engine.texture.blend import CAUCHY_SCALE, FrameSamples

MAX_SHIFT_PX = 4.0  # working pixels: larger errors are a pose problem, not a registration one
ITERATIONS = 8
SOLVE_SAMPLES = 60_000
BLUR_PX = 1.0  # working pixels
DAMPING = 0.05  # of the mean curvature: parts with little texture stay where the pose put them


def _uv(xy: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.stack([xy[:, 0] / w, 1.0 - xy[:, 1] / h], 1)


def register_frame(s: FrameSamples, mean: np.ndarray, parts: np.ndarray, working_focal: float) -> np.ndarray:
    """Shifts frame `s`'s samples per body part (labels `parts` [T]) to agree with the blend `mean`
    [T, 3]; updates `s.colors` in place and returns the shifts [P, 2] in working pixels."""
    view, px = s.extra["view"], s.extra["px"]
    h, w = view.image.shape[:2]
    scale = float(view.camera.K[0, 0]) / working_focal
    blurred = cv2.GaussianBlur(view.image, (0, 0), BLUR_PX * scale)
    gy, gx = np.gradient(blurred, axis=(0, 1))
    stack = np.ascontiguousarray(np.concatenate([blurred, gx, gy], axis=2))  # one lookup per iteration
    num = int(parts.max()) + 1
    shift = np.zeros((num, 2))
    limit = MAX_SHIFT_PX * scale
    if len(s.texels) == 0:
        return shift
    # The shifts are solved on a regular subsample of the frame's samples (a few per texel row of the
    # image is plenty for two unknowns per part); all samples are read again at the end.
    sub = slice(None, None, max(1, len(s.texels) // SOLVE_SAMPLES))
    target, lab, p, wt = mean[s.texels[sub]], parts[s.texels[sub]], px[sub], s.weights[sub]
    for _ in range(ITERATIONS):
        got = sample_texture(stack, _uv(p + shift[lab], h, w))
        r, jx, jy = got[:, :3] - target, got[:, 3:6], got[:, 6:]  # residual [n, 3] and its x, y gradients
        wr = wt / (1.0 + (r**2).sum(1) / CAUCHY_SCALE**2)
        hxx = np.bincount(lab, wr * (jx * jx).sum(1), minlength=num)
        hxy = np.bincount(lab, wr * (jx * jy).sum(1), minlength=num)
        hyy = np.bincount(lab, wr * (jy * jy).sum(1), minlength=num)
        bx = np.bincount(lab, wr * (jx * r).sum(1), minlength=num)
        by = np.bincount(lab, wr * (jy * r).sum(1), minlength=num)
        damp = DAMPING * (hxx + hyy) / 2 + 1e-9
        a, b, d = hxx + damp, hxy, hyy + damp
        det = a * d - b * b
        step = -np.stack([(d * bx - b * by) / det, (a * by - b * bx) / det], 1)
        shift = np.clip(shift + step, -limit, limit)
        if np.abs(step).max() < 0.01 * scale:
            break
    moved = px + shift[parts[s.texels]]
    s.colors = sample_texture(view.image, _uv(moved, h, w))
    s.extra["px"] = moved
    return shift / scale
