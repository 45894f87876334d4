"""Export: the dialog (with the triangle count from the session worker), then the engine's `export_job`,
the same job as the CLI's `export`, in the window's job slot; and the animated avatar: its dialog, then
`rigged_job` (the CLI's `export --rigged`)."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QObject

from app.export_dialog import ExportDialog, ExportRequest, RigDialog, RigRequest
from app.jobs import JobRunner
from engine.refine.checkpoint import checkpoint_path

log = logging.getLogger(__name__)


class ExportFlow(QObject):
    """The export dialog of `window`'s project and the export job it starts."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.w = window
        self.dialog: ExportDialog | None = None
        self.rig_dialog: RigDialog | None = None

    def show_dialog(self) -> ExportDialog | None:
        w = self.w
        if w.project is None or not checkpoint_path(w.project.root).exists():
            w.show_error("Export", "There is no fitted avatar to export yet: refine the project first.")
            return None
        dlg = ExportDialog(w.timeline.frame, w.project.num_frames, str(w.project.root / "exports"), w)
        dlg.count_requested.connect(lambda res, faces: w.session_worker.request("count", res, faces))
        dlg.accepted.connect(lambda: self.start(dlg.request()))
        self.dialog = dlg
        dlg.open()
        return dlg

    def counted(self, res: int, faces, n: int) -> None:
        if self.dialog is not None:
            self.dialog.show_count(res, faces, n)

    def start(self, req: ExportRequest) -> JobRunner | None:
        """Runs the engine's export_job (the CLI's `export`) with the dialog's choices."""
        from engine.export import export_job

        w = self.w
        if w.project is None:
            return None
        if w.job_runner is not None and w.job_runner.isRunning():
            w.show_error("Export", "Another job is running; try again when it has finished.")
            return None
        out = Path(req.out)
        try:
            (out if req.sequence else out.parent).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            w.show_error("Export failed", f"cannot create {out if req.sequence else out.parent}: {e.strerror or e}")
            return None
        root, device, body_dir = w.project.root, w.controls.device_name, w.controls.body_model_dir

        def done(result: dict) -> None:
            files = result["files"]
            log.info("exported %d file(s), %d triangles each: %s", len(files), result["faces"],
                     files[0] if len(files) == 1 else Path(files[0]).parent)
            w.statusBar().showMessage(f"Exported {len(files)} file(s) to {Path(files[0]).parent}", 10_000)
            if "texture" in result:  # a textured export saves its bake in the project: the views show it
                w.session_worker.request("texture")

        return w.start_job("export", lambda tok: export_job(root, out, req.config, sequence=req.sequence, fmt=req.fmt,
                                                             overwrite=req.overwrite, device=device,
                                                             body_model_dir=body_dir, cancel=tok), done)

    def show_rig_dialog(self) -> RigDialog | None:
        """Export animated avatar…: the rigged glTF's choices, then `rigged_job`."""
        from engine.texture import load_bake

        w = self.w
        if w.project is None or not checkpoint_path(w.project.root).exists():
            w.show_error("Export animated avatar", "There is no fitted avatar to export yet: refine the project first.")
            return None
        step = w.refine.step if w.refine.step else None
        has_bake = load_bake(w.project.root, step=step) is not None if step else False
        dlg = RigDialog(str(w.project.root / "exports"), float(w.project.meta.get("fps") or 25.0), has_bake, w)
        dlg.accepted.connect(lambda: self.start_rig(dlg.request()))
        self.rig_dialog = dlg
        dlg.open()
        return dlg

    def start_rig(self, req: RigRequest) -> JobRunner | None:
        """Runs the engine's rigged_job (the CLI's `export --rigged`) with the dialog's choices."""
        from engine.export import rigged_job

        w = self.w
        if w.project is None:
            return None
        if w.job_runner is not None and w.job_runner.isRunning():
            w.show_error("Export animated avatar", "Another job is running; try again when it has finished.")
            return None
        out = Path(req.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            w.show_error("Export failed", f"cannot create {out.parent}: {e.strerror or e}")
            return None
        root, device, body_dir = w.project.root, w.controls.device_name, w.controls.body_model_dir

        def done(result: dict) -> None:
            log.info("exported the animated avatar: %s (%d bones, %d frames)", result["files"][0], result["bones"],
                     result["frames"])
            w.statusBar().showMessage(f"Exported the animated avatar to {result['files'][0]}", 10_000)
            if req.config.texture is not None:  # a new bake is saved in the project: the views show it
                w.session_worker.request("texture")

        return w.start_job("export", lambda tok: rigged_job(root, out, req.config, overwrite=req.overwrite,
                                                             device=device, body_model_dir=body_dir, cancel=tok), done)
