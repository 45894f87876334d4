"""Preview pictures of a mesh from a camera that frames it: one view, or a full turn around it (the app's
`Save turntable video` and the command line's `render` draw with these)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from engine.geometry.camera import Camera, look_at
from engine.render.raycast import render_mesh

FIELD_OF_VIEW_DEGREES = 30.0
FILL = 0.9  # of the picture's height the framed points' bounding sphere takes
BACKGROUND = (0.16, 0.16, 0.18)


def framing_camera(points: np.ndarray, size: int, forward: np.ndarray, up: np.ndarray) -> Camera:
    """A square `size`² pinhole camera looking along `forward` [3] (image up along `up` [3]) at the centre of
    the points' bounding box [P, 3], far enough that their bounding sphere fills `FILL` of the picture."""
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    lo, hi = pts.min(0), pts.max(0)
    centre = 0.5 * (lo + hi)
    radius = max(float(np.linalg.norm(pts - centre, axis=1).max()), 1e-3)
    half = math.radians(FIELD_OF_VIEW_DEGREES) / 2
    focal = 0.5 * size / math.tan(half)
    distance = radius / math.sin(half * FILL)
    f = np.asarray(forward, np.float64)
    f = f / np.linalg.norm(f)
    R, t = look_at(centre - distance * f, centre, up=tuple(np.asarray(up, np.float64)))
    K = np.array([[focal, 0.0, size / 2.0], [0.0, focal, size / 2.0], [0.0, 0.0, 1.0]])
    return Camera(K, R, t, size, size)


def picture(vertices: np.ndarray, faces: np.ndarray, camera: Camera, colors: np.ndarray | None = None,
            uvs: np.ndarray | None = None, texture: np.ndarray | None = None, supersample: int = 2) -> np.ndarray:
    """The mesh through `camera` over a plain background: RGB uint8 [H, W, 3]. A texture is drawn unlit (it
    holds the video's light); vertex colours get the renderer's fixed light."""
    bg = np.empty((camera.height, camera.width, 3), np.float32)
    bg[:] = BACKGROUND
    if texture is None and colors is None:
        colors = np.full((len(vertices), 3), 0.8, np.float32)
    r = render_mesh(np.asarray(vertices, np.float32), faces, colors, camera, bg, supersample=supersample,
                    shaded=texture is None, uvs=uvs, texture=texture)
    return (np.clip(r.rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def turntable_frames(vertices: np.ndarray, faces: np.ndarray, size: int = 512, frames: int = 72,
                     colors: np.ndarray | None = None, uvs: np.ndarray | None = None, texture: np.ndarray | None = None,
                     up: tuple[float, float, float] = (0.0, 1.0, 0.0), elevation_degrees: float = 10.0,
                     cancelled: Callable[[], bool] | None = None) -> Iterator[np.ndarray]:
    """One full turn around the mesh (about `up` through its centre, starting in front of it: the body faces
    +Z), as `frames` RGB uint8 pictures [size, size, 3]."""
    u = np.asarray(up, np.float64) / np.linalg.norm(up)
    front = np.array([0.0, 0.0, -1.0])  # looking at the body's front from +Z
    front = front - (front @ u) * u
    side = np.cross(u, front)
    e = math.radians(elevation_degrees)
    for k in range(frames):
        if cancelled is not None and cancelled():
            return
        a = 2.0 * math.pi * k / frames
        horizontal = math.cos(a) * front + math.sin(a) * side
        forward = math.cos(e) * horizontal - math.sin(e) * u  # looking slightly down
        cam = framing_camera(vertices, size, forward, u)
        yield picture(vertices, faces, cam, colors, uvs, texture)
