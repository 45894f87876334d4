"""New projects: from a video (where it goes, the engine's preprocess job, then its body-fit sheet) and
the built-in demo (a synthetic scene generated into the user data folder on first use)."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import QApplication, QDialog, QFileDialog, QLabel, QVBoxLayout

from engine.errors import UserError
from engine.preprocess.video import VIDEO_EXTENSIONS
from engine.project import Project

log = logging.getLogger(__name__)

DEMO = {"frames": 20, "size": 256, "motion": "turn", "garment": "shirt", "seed": 0}


class PreprocessFlow(QObject):
    """New project from a video, its overlay sheet dialog, and the demo; jobs run in `window`'s job slot."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.w = window
        self.overlay_dialog: QDialog | None = None
        self._autostart = False

    # ---- new project from a video -------------------------------------------------------------
    def new_project_from_video(self, video: str | Path | None = None, target: str | Path | None = None) -> bool:
        w = self.w
        if w.busy():
            w.show_error("New project", "Wait for the running job to finish (or cancel it) first.")
            return False
        if video is None:
            exts = " ".join(f"*{e}" for e in VIDEO_EXTENSIONS)
            video, _ = QFileDialog.getOpenFileName(w, "Video of one person", w.settings.get("last_dir"),
                                                   f"Videos ({exts});;All files (*)")
            if not video:
                return False
        video = Path(video)
        if not video.is_file():
            w.show_error("Not a video", f"{video} is not a file.")
            return False
        if video.suffix.lower() not in VIDEO_EXTENSIONS:
            w.show_error("Not a video", f"{video.name} is not a video this app reads "
                         f"({', '.join(e[1:] for e in VIDEO_EXTENSIONS)}).")
            return False
        try:
            from engine.preprocess.job import PreprocessConfig, preprocess_job
        except ImportError as e:  # e.g. mediapipe missing from a build
            w.show_error("Preprocessing unavailable", f"video preprocessing is not available in this build ({e}).")
            return False
        if target is None:
            parent = QFileDialog.getExistingDirectory(w, "Create the project in…", str(w.user_dir / "projects"))
            if not parent:
                return False
            target = free_name(Path(parent) / video.stem)
        c = w.controls
        try:
            cfg = PreprocessConfig(size=c.resolution.value(), body=c.body.currentText(),
                                   body_model_dir=c.body_model_dir, device=c.device_name)
            cfg.validate()
        except UserError as e:
            w.show_error("Preprocessing settings", str(e))
            return False
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("preprocessing %s into %s", video, target)
        w.start_job("preprocess", lambda tok: preprocess_job(video, target, cfg, tok), self._preprocessed)
        return True

    def _preprocessed(self, result: dict) -> None:
        for warning in result.get("warnings", []):
            log.warning("preprocess: %s", warning)
        secs = result.get("seconds", {})
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in secs.items() if k != "total")
        log.info("preprocessed %d frames in %.1f s (%s); fitted body: keypoint error %.1f px, mask IoU %.2f",
                 result.get("frames", 0), secs.get("total", 0.0), stages, result.get("keypoint_error_px", float("nan")),
                 result.get("mask_iou", float("nan")))
        if self.w.open_project(result["project"]):
            self.show_overlay_sheet()

    def show_overlay_sheet(self) -> None:
        """The fitted body drawn over a few frames (written by preprocessing): judge the fit first."""
        from PySide6.QtGui import QPixmap
        from PySide6.QtWidgets import QDialogButtonBox

        w = self.w
        sheet = w.project.root / "overlay_sheet.png" if w.project else None
        if sheet is None or not sheet.exists():
            return
        dlg = QDialog(w)
        dlg.setWindowTitle("Body fit: check it before refining")
        lay = QVBoxLayout(dlg)
        dlg.sheet = lbl = QLabel()
        lbl.setAlignment(Qt.AlignmentFlag.AlignCenter)
        # As large as the sheet itself, within most of the screen (sizes in device-independent pixels; the
        # picture is resampled to the screen's own pixels so that it stays sharp at any scale factor).
        pm = QPixmap(str(sheet))
        avail = (w.screen() or QApplication.primaryScreen()).availableGeometry()
        fit = pm.size().scaled(int(avail.width() * 0.85), int(avail.height() * 0.7), Qt.AspectRatioMode.KeepAspectRatio)
        if fit.width() > pm.width():
            fit = pm.size()
        dpr = w.devicePixelRatioF()
        shown = pm.scaled(fit * dpr, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        shown.setDevicePixelRatio(dpr)
        lbl.setPixmap(shown)
        lay.addWidget(lbl)
        note = QLabel(f"The fitted body over some frames (the last ones are the worst fitted). "
                      f"Full video: {w.project.root / 'overlay.mp4'}")
        note.setWordWrap(True)
        note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(note)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(dlg.reject)
        lay.addWidget(buttons)
        dlg.open()
        self.overlay_dialog = dlg

    # ---- the built-in demo --------------------------------------------------------------------
    def open_demo(self, autostart: bool = False) -> None:
        """Opens the synthetic demo scene, generating it into the user data folder the first time."""
        from engine.synth.scene import SynthConfig, synth_job

        w = self.w
        out = w.user_dir / "demo"
        try:
            Project.open(out / "project")
            if w.open_project(out / "project") and autostart:
                w.refine.start()
            return
        except UserError:
            pass  # not there yet (or incomplete): make it
        if w.busy():
            w.show_error("Demo", "Wait for the running job to finish first.")
            return
        log.info("generating the demo scene into %s (once)", out)
        out.parent.mkdir(parents=True, exist_ok=True)
        self._autostart = autostart

        def done(_result) -> None:
            if w.open_project(out / "project") and self._autostart:
                w.refine.start()

        w.start_job("demo scene", lambda tok: synth_job(SynthConfig(**DEMO), out, overwrite=True, cancel=tok), done)


def free_name(p: Path) -> Path:
    """p, or p_2, p_3, ... — the first that does not exist (never overwrite a user's project)."""
    if not p.exists():
        return p
    k = 2
    while p.with_name(f"{p.name}_{k}").exists():
        k += 1
    return p.with_name(f"{p.name}_{k}")
