"""Pictures of the window: a PNG of any panel, and a turntable video of the shown mesh (drawn by the engine,
engine/render/turntable.py, as `render --turntable` draws the rigged avatar)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import QFileDialog, QProgressDialog, QWidget

log = logging.getLogger(__name__)

PANELS = ("2D panel", "3D panel", "loss curves", "window")


class Capture(QObject):
    """Screenshots and turntable videos of `window`'s panels."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.w = window

    def panel(self, name: str) -> QWidget:
        w = self.w
        return {"2D panel": w.frames, "3D panel": w.mesh_view, "loss curves": w.losses, "window": w}[name]

    def choose_screenshot(self, name: str) -> None:
        p, _ = QFileDialog.getSaveFileName(self.w, f"Save screenshot of the {name}",
                                           str(self.w.user_dir / f"{name.replace(' ', '_')}.png"), "PNG image (*.png)")
        if p:
            self.save_screenshot(name, p)

    def save_screenshot(self, name: str, path: str | Path) -> bool:
        """A PNG of one panel (the 3D view from its GL framebuffer, the rest with QWidget.grab)."""
        if name == "3D panel":
            ok = self.w.mesh_view.view.grabFramebuffer().save(str(path))
        else:
            ok = self.panel(name).grab().save(str(path))
        if not ok:
            self.w.show_error("Screenshot", f"cannot write {path}.")
        else:
            log.info("screenshot of the %s saved to %s", name, path)
        return ok

    def choose_turntable(self) -> None:
        if self.w.mesh_view.mesh is None:
            self.w.show_error("Turntable", "There is no mesh to turn yet.")
            return
        p, _ = QFileDialog.getSaveFileName(self.w, "Save turntable video", str(self.w.user_dir / "turntable.mp4"),
                                           "MP4 video (*.mp4)")
        if p:
            self.save_turntable(p)

    def save_turntable(self, path: str | Path, frames: int = 72, size: int = 512, fps: float = 24.0) -> bool:
        """One full turn around the shown mesh as an H.264 mp4, drawn by the engine's turntable renderer (the
        one `render --turntable` uses: engine/render/turntable.py), encoded by the engine's mp4 writer."""
        import numpy as np

        from engine.io.video import Mp4Writer
        from engine.render.turntable import turntable_frames

        mesh = self.w.mesh_view.mesh
        if mesh is None:
            return False
        texture = getattr(mesh, "texture", None)
        look = {"colors": None if mesh.colors is None else np.asarray(mesh.colors, np.float32)}
        if texture is not None:
            tex = np.asarray(texture)
            look = {"uvs": np.asarray(mesh.uvs, np.float32),
                    "texture": tex.astype(np.float32) / 255.0 if tex.dtype == np.uint8 else tex.astype(np.float32)}
        path = Path(path)
        tmp = path.with_name(f".{path.name}.part.mp4")
        dlg = QProgressDialog("Rendering the turntable…", "Cancel", 0, frames, self.w)
        dlg.setWindowModality(Qt.WindowModality.WindowModal)
        try:
            with Mp4Writer(tmp, fps) as writer:
                pictures = turntable_frames(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces), size, frames,
                                            cancelled=dlg.wasCanceled, **look)
                for k, image in enumerate(pictures):
                    writer.write(image)
                    dlg.setValue(k + 1)
            if dlg.wasCanceled():
                raise InterruptedError
            os.replace(tmp, path)
        except InterruptedError:
            tmp.unlink(missing_ok=True)
            return False
        except OSError as e:
            tmp.unlink(missing_ok=True)
            self.w.show_error("Turntable", f"cannot write {path}: {e.strerror or e}")
            return False
        finally:
            dlg.close()
        log.info("turntable video saved to %s", path)
        return True
