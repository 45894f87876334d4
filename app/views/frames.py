"""The 2D panel: input | render | textured | normals | opacity of the current frame, in a few layouts or one
at a time. "textured" is the baked textured mesh rendered into the frame (`engine.texture.render_textured`,
asked for whenever its tile shows a frame it lacks: it takes a fraction of a second)."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.views.elided import ElidedLabel

VIEWS = ("input", "render", "textured", "normals", "opacity")
# Layouts of several tiles: (tiles, columns).
LAYOUTS = {
    "2×2": (("input", "render", "normals", "opacity"), 2),
    "input | render | textured": (("input", "render", "textured"), 3),
    "side by side": (VIEWS, len(VIEWS)),
}
COMPARE = "input | render | textured"


def to_qimage(a: np.ndarray) -> QImage:
    """[H, W, 3] or [H, W] floats in [0, 1] (or uint8) → a QImage that owns its pixels."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    a = np.ascontiguousarray(a[..., :3])
    h, w = a.shape[:2]
    return QImage(a.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class ImageTile(QWidget):
    """A titled image that scales to its space, keeping its aspect ratio."""

    def __init__(self, title: str, parent=None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(1, 1, 1, 1)
        lay.setSpacing(1)
        self.title = QLabel(title)
        self.title.setStyleSheet("font-weight: bold;")
        self.view = QLabel("—")
        self.view.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.view.setMinimumSize(60, 60)
        self.view.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)  # pixmaps never grow it
        self.view.setStyleSheet("background: #222; color: #aaa;")
        lay.addWidget(self.title)
        lay.addWidget(self.view, 1)
        self.image: np.ndarray | None = None
        self._pixmap: QPixmap | None = None

    def set_image(self, a: np.ndarray | None, note: str = "") -> None:
        self.image = None if a is None else np.asarray(a)
        self._pixmap = None if a is None else QPixmap.fromImage(to_qimage(a))
        self.view.setText("" if a is not None else (note or "—"))
        self.view.setToolTip(note)
        self._rescale()

    def resizeEvent(self, e) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(e)
        self._rescale()

    def _rescale(self) -> None:
        if self._pixmap is None:
            self.view.setPixmap(QPixmap())
            return
        # Scaled to the label's device pixels, not its logical size: sharp on high-DPI screens too.
        dpr = self.view.devicePixelRatioF()
        pm = self._pixmap.scaled(self.view.size() * dpr, Qt.AspectRatioMode.KeepAspectRatio,
                                 Qt.TransformationMode.SmoothTransformation)
        pm.setDevicePixelRatio(dpr)
        self.view.setPixmap(pm)


class FramePanel(QWidget):
    """The tiles of one frame; renders come from training previews or on request."""

    render_requested = Signal(int)
    textured_requested = Signal(int)  # a shown frame has no textured render yet

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.layout_mode = QComboBox()
        self.layout_mode.addItems([*LAYOUTS, *VIEWS])
        self.layout_mode.setToolTip("Show several views side by side, or one of them large (textured: the baked "
                                    "texture on the mesh, File ▸ Bake texture…)")
        self.render_button = QPushButton("Render this frame")
        self.render_button.setToolTip("Render the current frame with the latest checkpoint of the avatar")
        self.render_button.setEnabled(False)
        self.info = ElidedLabel("")  # never widens the window
        row.addWidget(QLabel("View"))
        row.addWidget(self.layout_mode)
        row.addWidget(self.render_button)
        row.addWidget(self.info, 1)
        lay.addLayout(row)
        self.grid = QGridLayout()
        self.grid.setSpacing(2)
        lay.addLayout(self.grid, 1)
        self.tiles = {v: ImageTile(v) for v in VIEWS}
        self.project = None
        self.frame = 0
        self.renders: dict[int, tuple[int, dict]] = {}  # frame → (step, {"rgb", "normals", "opacity"})
        self.has_textured = False  # a bake of the current checkpoint is loaded
        self.textured_renders: dict[int, tuple[int, object]] = {}  # frame → (step baked from, rgb)
        self._asked: int | None = None  # frame whose textured render was asked for last
        self.shown: tuple[str, ...] = ()
        self.layout_mode.currentTextChanged.connect(self._arrange)
        self.render_button.clicked.connect(lambda: self.render_requested.emit(self.frame))
        self._arrange("2×2")

    def _arrange(self, mode: str) -> None:
        for t in self.tiles.values():
            self.grid.removeWidget(t)
            t.setVisible(False)
        tiles, cols = LAYOUTS.get(mode, ((mode,), 1))
        for k, v in enumerate(tiles):
            self.grid.addWidget(self.tiles[v], k // cols, k % cols)
            self.tiles[v].setVisible(True)
        self.shown = tiles
        if self.project is not None:
            self.show_frame(self.frame)  # a newly shown textured tile asks for its render

    def set_project(self, project) -> None:
        self.project = project
        self.renders.clear()
        self.show_frame(0)

    def set_textured(self, on: bool) -> None:
        """A bake of the current checkpoint is (or is no longer) there: earlier textured renders are gone."""
        self.has_textured = on
        self.textured_renders.clear()
        self._asked = None
        if self.project is not None:
            self.show_frame(self.frame)

    def add_textured(self, frame: int, step: int, rgb) -> None:
        if not self.has_textured:
            return  # the bake went away meanwhile
        self.textured_renders[frame] = (step, rgb)
        if frame == self.frame:
            self.show_frame(frame)

    def add_render(self, frame: int, step: int, images: dict) -> None:
        """Keeps the newest render of a frame (training previews and on-demand renders)."""
        old = self.renders.get(frame)
        if old is None or step >= old[0]:
            self.renders[frame] = (step, images)
        if frame == self.frame:
            self.show_frame(frame)

    def show_frame(self, i: int) -> None:
        self.frame = i
        if self.project is None:
            for t in self.tiles.values():
                t.set_image(None)
            return
        self.tiles["input"].set_image(self.project.frame(i))
        r = self.renders.get(i)
        note = "not rendered yet: start refining, or press Render this frame"
        for k in ("render", "normals", "opacity"):
            self.tiles[k].set_image(None if r is None else r[1]["rgb" if k == "render" else k], note)
        self._show_textured(i)
        held = i in self.project.held_out
        self.info.setText(f"frame {i}{' (held out)' if held else ''}"
                          + (f" · render from step {r[0]}" if r is not None else ""))

    def _show_textured(self, i: int) -> None:
        tile, t = self.tiles["textured"], self.textured_renders.get(i)
        if t is not None:
            tile.set_image(t[1], f"the textured mesh baked from step {t[0]}")
            return
        if not self.has_textured:
            tile.set_image(None, "no texture baked from this checkpoint: File ▸ Bake texture…")
            return
        tile.set_image(None, "rendering the textured mesh…")
        if "textured" in self.shown and self._asked != i:
            self._asked = i
            self.textured_requested.emit(i)
