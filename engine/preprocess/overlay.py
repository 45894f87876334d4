"""The fitted body drawn over the frames, so a person can judge the fit at a glance.

Each overlay frame shows the body mesh, shaded by a headlight and blended over the video frame,
the outline of the person mask (the silhouette the fit aimed at) and a label with the frame's
fit quality. Rendering is an exact ray cast (engine/render/raycast.py), as for the synthetic ground
truth.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from engine.geometry.camera import Camera
from engine.render.raycast import raycasting_scene

BODY_RGB = np.array([110, 170, 255], np.float32)  # light blue: stands out on skin and most clothes
OUTLINE_RGB = (255, 220, 0)  # yellow mask outline
ALPHA = 0.6  # body opacity over the frame


class OverlayRenderer:
    """Draws posed body meshes of one static camera over frames (rays computed once)."""

    def __init__(self, faces: np.ndarray, camera: Camera) -> None:
        self.faces = np.asarray(faces)
        self.camera = camera
        self._dirs = camera.rays()[1].reshape(-1, 3).astype(np.float32)  # [H*W, 3]

    def silhouette_shading(self, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[V, 3] world vertices → (hit mask [H, W] bool, headlight shading [H, W] float32 in [0, 1])."""
        cam = self.camera
        hit = raycasting_scene(vertices, self.faces).cast_rays(cam.center, self._dirs)
        ok = np.isfinite(hit["t_hit"])
        n = hit["primitive_normals"]
        # |n·d|: both windings look lit, and surfaces seen edge-on darken, which outlines the limbs.
        lam = np.abs((n * self._dirs).sum(1))
        shade = np.where(ok, 0.35 + 0.65 * lam, 0.0).astype(np.float32)
        return ok.reshape(cam.height, cam.width), shade.reshape(cam.height, cam.width)

    def draw(self, frame: np.ndarray, vertices: np.ndarray, mask: np.ndarray | None = None,
             label: str | None = None) -> np.ndarray:
        """The overlay of one frame.

        Args:
            frame: [H, W, 3] uint8 RGB at the camera's resolution.
            vertices: [V, 3] posed body vertices (world).
            mask: [H, W] bool person mask whose outline is drawn, or None.
            label: text for the top-left corner, or None.

        Returns:
            [H, W, 3] uint8 RGB.
        """
        ok, shade = self.silhouette_shading(vertices)
        out = frame.astype(np.float32)
        body = BODY_RGB[None] * shade[ok][:, None]
        out[ok] = (1 - ALPHA) * out[ok] + ALPHA * body
        out = np.clip(out, 0, 255).astype(np.uint8)
        thick = max(1, round(max(frame.shape[:2]) / 400))
        if mask is not None and mask.any():
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, OUTLINE_RGB, thick, cv2.LINE_AA)
        if label:
            put_label(out, label)
        return out


def put_label(image: np.ndarray, text: str) -> None:
    """Writes `text` in the top-left corner, white on a dark box (in place)."""
    scale = max(0.35, image.shape[0] / 1100)
    thick = max(1, round(scale * 1.5))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = max(2, th // 3)
    cv2.rectangle(image, (0, 0), (tw + 2 * pad, th + base + 2 * pad), (0, 0, 0), -1)
    cv2.putText(image, text, (pad, th + pad), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)


def contact_sheet(tiles: list[np.ndarray], columns: int = 4, max_tile_side: int = 400) -> np.ndarray:
    """Tiles [H, W, 3] uint8 images (same size) into one grid image, each shrunk to `max_tile_side`."""
    h, w = tiles[0].shape[:2]
    s = min(1.0, max_tile_side / max(h, w))
    th, tw = max(1, round(h * s)), max(1, round(w * s))
    cols = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    gap = 4
    sheet = np.full((rows * th + (rows - 1) * gap, cols * tw + (cols - 1) * gap, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        small = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_AREA) if s < 1 else tile
        sheet[r * (th + gap): r * (th + gap) + th, c * (tw + gap): c * (tw + gap) + tw] = small
    return sheet


def sheet_frames(n: int, quality: np.ndarray, count: int = 8, worst: int = 2) -> list[int]:
    """Frames for the contact sheet: evenly spread ones, then the `worst` of lowest `quality` (NaN ignored)."""
    if n <= count:
        return list(range(n))
    worst = min(worst, max(0, count - 1))
    even = [int(round(x)) for x in np.linspace(0, n - 1, count - worst)] if count - worst > 0 else []
    picked = list(dict.fromkeys(even))
    q = np.where(np.isfinite(quality), quality, np.inf)
    for i in np.argsort(q, kind="stable"):
        if len(picked) >= count or not np.isfinite(q[i]):
            break
        if int(i) not in picked:
            picked.append(int(i))
    return picked
