"""Baking the texture: a size, then the engine's `bake_job` (the CLI's `bake`) in the window's job slot.

A finished bake is saved in the project (PROJECT/texture/); the session worker then loads it, and the
3D panel offers it ("Texture") and the 2D panel renders it. The control panel's "Bake a texture when a
run ends" starts the same job when a refine run ends (not when it is paused), at the size chosen last.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QInputDialog

from app.jobs import JobRunner
from app.views.frames import COMPARE
from engine.mesh.uv import TEXTURE_MAX, TEXTURE_MIN
from engine.refine.checkpoint import checkpoint_path
from engine.texture import BakeConfig

log = logging.getLogger(__name__)

SIZES = tuple(2**k for k in range(TEXTURE_MIN.bit_length() - 1, TEXTURE_MAX.bit_length()))  # 1024, 2048, 4096


class BakeFlow(QObject):
    """The size dialog and the bake job of `window`'s project."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.w = window
        self.dialog: QInputDialog | None = None
        # Marching-cubes resolution of the baked mesh (the engine's default; tests lower it).
        self.resolution = BakeConfig().resolution

    def _refusal(self) -> str | None:
        """Why no bake can start now (None: it can)."""
        w = self.w
        if w.closing:
            return "The window is closing."
        if w.project is None or not checkpoint_path(w.project.root).exists():
            return "There is no fitted avatar to bake a texture for yet: refine the project first."
        if w.refine.running:
            return "Pause or stop the refinement first: a texture is baked from a checkpoint that no longer changes."
        if w.job_runner is not None and w.job_runner.isRunning():
            return "Another job is running; try again when it has finished."
        return None

    def show_dialog(self) -> QInputDialog | None:
        """Asks for the texture size (not modal: the window stays usable), then bakes."""
        w = self.w
        why = self._refusal()
        if why:
            w.show_error("Bake texture", why)
            return None
        dlg = QInputDialog(w)
        dlg.setWindowTitle("Bake texture")
        dlg.setLabelText("Texture size (pixels per side). Larger keeps more of the video's detail and takes "
                         "longer to bake and to load.")
        dlg.setComboBoxItems([str(s) for s in SIZES])
        dlg.setComboBoxEditable(False)
        size = w.settings.get("bake_size")
        dlg.setTextValue(str(size if size in SIZES else BakeConfig().size))
        dlg.textValueSelected.connect(lambda text: self.start(int(text)))
        self.dialog = dlg
        dlg.open()
        return dlg

    def start(self, size: int, after_run: bool = False) -> JobRunner | None:
        """Runs the engine's bake_job at `size`; `after_run`: started by a run's end (only logged if it cannot)."""
        from engine.texture import bake_job

        w = self.w
        why = self._refusal()
        if why:
            if after_run:
                log.warning("no texture baked after the run: %s", why)
            else:
                w.show_error("Bake texture", why)
            return None
        w.settings.set("bake_size", size)
        cfg = BakeConfig(size=size, resolution=self.resolution)
        root, device, body_dir = w.project.root, w.controls.device_name, w.controls.body_model_dir

        def done(result: dict) -> None:
            seconds = result.get("seconds", 0.0)
            seconds = seconds.get("total", 0.0) if isinstance(seconds, dict) else seconds
            log.info("baked a %d² texture of step %s from the %s in %.1f s (%s)", size, result.get("step"),
                     "source video" if result.get("source") == "video" else "working frames", seconds,
                     result.get("texture"))
            w.statusBar().showMessage(f"Baked a {size}² texture in {seconds:.0f} s", 10_000)
            if w.project is not None and str(w.project.root) == str(root):
                w.mesh_view.texture_button.setChecked(True)
                if not after_run:
                    w.frames.layout_mode.setCurrentText(COMPARE)
                w.session_worker.request("texture")  # the worker loads it when it is of its checkpoint

        return w.start_job("bake", lambda tok: bake_job(root, cfg, device, body_dir, tok), done)
