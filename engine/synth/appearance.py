"""Per-seed appearance: skin, cloth and hair colours with procedural patterns, and a textured
static background. Patterns are functions of canonical position, so they move with the body."""

from __future__ import annotations

import colorsys

import numpy as np

from engine.synth.garments import HAIR, PANTS, SHIRT, SHOES, SKIN, SKIRT

_SKIN_TONES = np.array([[0.96, 0.80, 0.69], [0.87, 0.67, 0.53], [0.76, 0.57, 0.43], [0.55, 0.38, 0.26], [0.38, 0.26, 0.18]])


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _noise(p: np.ndarray, rng: np.random.Generator, scale: float, octaves: int = 3) -> np.ndarray:
    """Smooth value noise in [-1, 1] from random sinusoids (deterministic per rng)."""
    out = np.zeros(len(p))
    for o in range(octaves):
        k = rng.normal(size=(4, 3)) * scale * (2**o)
        ph = rng.uniform(0, 2 * np.pi, 4)
        out += np.sin(p @ k.T + ph).sum(1) / (4 * 2**o)
    return np.clip(out, -1, 1)


def vertex_colors(vertices: np.ndarray, labels: np.ndarray, rng: np.random.Generator, keypoints: dict) -> np.ndarray:
    """Albedo [V, 3] for a clothed canonical mesh."""
    p = vertices
    col = np.zeros((len(p), 3))
    skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] * rng.uniform(0.95, 1.05)
    col[:] = skin * (1 + 0.04 * _noise(p, rng, 12.0))[:, None]
    # Eyes and mouth: small dark marks at the keypoints make the face readable.
    for name in ("left_eye", "right_eye"):
        d = np.linalg.norm(p - keypoints[name], axis=1)
        col[d < 0.011] = [0.15, 0.1, 0.08]
    mouth = 0.5 * (keypoints["left_eye"] + keypoints["right_eye"]) + np.array([0.0, -0.065, 0.0])
    dm = p - mouth
    col[(np.abs(dm[:, 0]) < 0.02) & (np.abs(dm[:, 1]) < 0.005) & (dm[:, 2] > -0.03)] = skin * 0.6

    shirt_a = _hsv(rng.uniform(), rng.uniform(0.4, 0.9), rng.uniform(0.5, 0.95))
    shirt_b = _hsv(rng.uniform(), rng.uniform(0.1, 0.6), rng.uniform(0.8, 1.0))
    pattern = rng.integers(3)
    if pattern == 0:  # horizontal stripes
        t = (np.sin(p[:, 1] * rng.uniform(40, 70)) > 0.3).astype(float)
    elif pattern == 1:  # checks
        f = rng.uniform(25, 45)
        t = ((np.sin(p[:, 1] * f) > 0) ^ (np.sin(p[:, 0] * f + p[:, 2] * f) > 0)).astype(float)
    else:  # plain with a print on the chest
        t = (np.linalg.norm((p - (keypoints["left_shoulder"] + keypoints["right_shoulder"]) / 2 - [0, -0.15, 0])[:, :2], axis=1) < 0.06).astype(float)
    shirt = shirt_a * (1 - t[:, None]) + shirt_b * t[:, None]
    m = labels == SHIRT
    col[m] = shirt[m] * (1 + 0.05 * _noise(p[m], rng, 30.0))[:, None]

    pants = _hsv(rng.uniform(0.55, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.55))
    m = labels == PANTS
    col[m] = pants * (1 + 0.12 * _noise(p[m], rng, 60.0))[:, None]

    dress_a = _hsv(rng.uniform(), rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.9))
    dots = (np.sin(p[:, 0] * 60) * np.sin(p[:, 1] * 60) * np.sin(p[:, 2] * 60 + 1) > 0.35).astype(float)
    m = labels == SKIRT
    col[m] = (dress_a * (1 - 0.6 * dots[:, None]) + 0.6 * dots[:, None])[m]
    m = (labels == SHIRT) & np.any(labels == SKIRT)  # the dress top matches the skirt
    col[m] = dress_a

    hair = _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.3, 0.8), rng.uniform(0.08, 0.45))
    m = labels == HAIR
    col[m] = hair * (1 + 0.25 * np.sin(p[m, 0] * 300 + p[m, 2] * 200)[:, None])
    col[labels == SHOES] = _hsv(rng.uniform(), rng.uniform(0, 0.3), rng.uniform(0.1, 0.9))
    col[labels == SKIN] = np.clip(col[labels == SKIN], 0, 1)
    return np.clip(col, 0.0, 1.0)


def background_image(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A static textured backdrop: a wall with tiles/wood grain above a floor, [H, W, 3] in [0, 1]."""
    u, v = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    wall = _hsv(rng.uniform(), rng.uniform(0.05, 0.35), rng.uniform(0.55, 0.9))
    floor = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.6))
    horizon = rng.uniform(0.72, 0.82)
    tiles = rng.uniform(6, 12)
    grout = (np.abs(np.sin(np.pi * u * tiles)) < 0.06) | (np.abs(np.sin(np.pi * v * tiles * 1.4)) < 0.06)
    img = np.where(grout[..., None], wall * 0.8, wall)
    pts = np.stack([u * 3, v * 3, np.zeros_like(u)], -1).reshape(-1, 3)
    img = img * (1 + 0.06 * _noise(pts, rng, 8.0).reshape(height, width))[..., None]
    grain = 0.5 + 0.5 * np.sin(60 * u + 8 * np.sin(9 * v))
    fl = floor * (0.85 + 0.25 * grain)[..., None]
    img = np.where((v > horizon)[..., None], fl, img)
    # A framed picture on the wall: strong edges help judge the background fit.
    x0, y0 = rng.uniform(0.05, 0.6), rng.uniform(0.08, 0.35)
    inside = (u > x0) & (u < x0 + 0.25) & (v > y0) & (v < y0 + 0.2)
    img = np.where(inside[..., None], _hsv(rng.uniform(), 0.7, 0.7) * (0.7 + 0.3 * np.sin(20 * u))[..., None], img)
    return np.clip(img, 0, 1).astype(np.float32)
