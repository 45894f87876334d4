"""Video writing with PyAV (H.264; OpenCV wheels cannot write it)."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


class Mp4Writer:
    """Writes RGB uint8 frames [H, W, 3] (even sizes, all the same) one at a time as an H.264 mp4.

    Usage: `with Mp4Writer(path, fps) as w: w.write(frame)`; frames are encoded as they come, so
    a long clip never sits in memory.
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 18) -> None:
        self._container = av.open(str(path), mode="w", format="mp4")
        self._fps, self._crf = fps, crf
        self._stream = None

    def write(self, frame: np.ndarray) -> None:
        if self._stream is None:
            h, w = frame.shape[:2]
            self._stream = self._container.add_stream("libx264", rate=Fraction(self._fps).limit_denominator(1000))
            self._stream.width, self._stream.height = w, h
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self._crf), "preset": "medium"}
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        try:
            if self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
            self._container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float, crf: int = 18) -> None:
    """Writes RGB uint8 frames [H, W, 3] (even sizes) as an H.264 mp4."""
    with Mp4Writer(path, fps, crf) as writer:
        for frame in frames:
            writer.write(frame)
