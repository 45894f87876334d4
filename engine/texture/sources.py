"""The pictures a texture is baked from: the source video's frames at their own resolution, cropped
around the person, or the project's working frames when the source is gone.

The working frames are the whole source frame scaled down, and a pixel's centre is its index + 0.5
(engine/geometry/camera.py), so the source camera is the working camera with K scaled by the size
ratio, exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine.errors import UserError
from engine.geometry.camera import Camera
from engine.jobs.events import CancelToken
from engine.preprocess.video import DecodeConfig, FrameReader
from engine.project import Project

log = logging.getLogger(__name__)


@dataclass
class SourceView:
    """One frame's picture for baking: a crop of the image and the camera of the whole image."""

    frame: int  # project frame
    image: np.ndarray  # [h, w, 3] float32 in [0, 1]: the crop
    mask: np.ndarray  # [h, w] bool: the person mask, scaled to the crop (nearest)
    camera: Camera  # camera of the full image the crop was cut from
    x0: int  # crop offset in that image (pixels)
    y0: int


def scaled_camera(camera: Camera, width: int, height: int) -> Camera:
    """The same camera for an image of `width` × `height` showing the same view."""
    sx, sy = width / camera.width, height / camera.height
    K = camera.K.copy()
    K[0] *= sx
    K[1] *= sy
    return replace(camera, K=K, width=int(width), height=int(height))


def source_video(project: Project) -> Path | None:
    """The project's source video, when it is a video that still exists (else None)."""
    src = project.meta.get("source") or {}
    if src.get("type") != "video" or not src.get("path") or "frame_indices" not in src:
        return None
    path = Path(src["path"])
    return path if path.is_file() else None


def _crop_box(box: tuple[np.ndarray, np.ndarray], sx: float, sy: float, w: int, h: int) -> tuple[int, int, int, int]:
    (x_lo, y_lo), (x_hi, y_hi) = box
    x0, y0 = max(0, int(np.floor(x_lo * sx))), max(0, int(np.floor(y_lo * sy)))
    x1, y1 = min(w, int(np.ceil((x_hi + 1) * sx))), min(h, int(np.ceil((y_hi + 1) * sy)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def _view(project: Project, cam: Camera, i: int, rgb: np.ndarray, box) -> SourceView:
    h, w = rgb.shape[:2]
    sx, sy = w / cam.width, h / cam.height
    x0, y0, x1, y1 = _crop_box(box, sx, sy, w, h)
    crop = rgb[y0:y1, x0:x1]
    image = crop.astype(np.float32) / 255.0 if crop.dtype == np.uint8 else crop.astype(np.float32)
    m = project.mask(i)
    ys = np.clip(((np.arange(y0, y1) + 0.5) / sy).astype(int), 0, cam.height - 1)
    xs = np.clip(((np.arange(x0, x1) + 0.5) / sx).astype(int), 0, cam.width - 1)
    return SourceView(i, np.ascontiguousarray(image), m[np.ix_(ys, xs)], scaled_camera(cam, w, h), x0, y0)


def read_views(project: Project, frames: list[int], boxes: dict[int, tuple[np.ndarray, np.ndarray]],
               use_source: bool, cancel: CancelToken | None = None) -> tuple[Iterator[SourceView], str]:
    """The views of `frames` (boxes: the person's box in working pixels per frame), and where they come
    from: "video" (the source at its own resolution) or "frames" (the working frames; also when the
    source is gone or unreadable, which is logged)."""
    path = source_video(project) if use_source else None
    src = project.meta.get("source") or {}
    if use_source and path is None:
        if src.get("type") == "video":
            log.warning("the source video %s is gone: baking from the working frames (less texture detail)",
                        src.get("path"))
        else:
            log.info("%s has no source video (%s): baking from its working frames", project.root,
                     src.get("type", "unknown source"))
    if path is not None:
        indices = [int(src["frame_indices"][i]) for i in frames]
        try:
            reader = FrameReader(path, DecodeConfig(size=4096, sharpness_window=0, max_frames=5000), indices=indices)
        except UserError as e:
            log.warning("cannot read the source video again (%s): baking from the working frames", e)
        else:
            return _from_video(project, reader, frames, indices, boxes, cancel), "video"
    cams = project.cameras()
    return (_view(project, cams[i], i, project.frame(i), boxes[i]) for i in frames), "frames"


def _from_video(project: Project, reader: FrameReader, frames: list[int], indices: list[int], boxes,
                cancel: CancelToken | None) -> Iterator[SourceView]:
    cams = project.cameras()
    by_index: dict[int, list[int]] = {}
    for f, k in zip(frames, indices):
        by_index.setdefault(k, []).append(f)
    for fr in reader.frames(cancel):
        for f in by_index.get(fr.index, []):
            yield _view(project, cams[f], f, fr.rgb, boxes[f])
