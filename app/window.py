"""The main window: control panel on the left, 2D | 3D views with the timeline, curves and log below.

Everything long runs as an engine job in a `JobRunner` thread; on-demand views (posing the mesh at
the current frame, rendering a frame, counting export triangles) go through the `SessionWorker`.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path

import psutil
from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QDialog,
    QFileDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressDialog,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.controls import ControlPanel
from app.export_dialog import ExportDialog, ExportRequest
from app.jobs import JobRunner
from app.logpanel import LogPanel
from app.session_worker import MeshArrays, SessionWorker
from app.settings import Settings, data_dir
from app.views.frames import FramePanel
from app.views.losses import LossPlot
from app.views.mesh3d import MeshView
from app.views.timeline import Timeline
from engine.errors import UserError
from engine.project import Project
from engine.refine.checkpoint import checkpoint_path

log = logging.getLogger(__name__)

try:  # the preprocessing engine may be absent from a partial build; the rest of the app does not need it
    from engine.preprocess.video import VIDEO_EXTENSIONS
except ImportError:  # pragma: no cover - depends on the build
    VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")

DEMO = {"frames": 20, "size": 256, "motion": "turn", "garment": "shirt", "seed": 0}


class MainWindow(QMainWindow):
    """The app. `assume_yes` answers its own questions with yes (used by scripted runs and tests)."""

    def __init__(self, settings: Settings | None = None, user_dir: Path | None = None) -> None:
        super().__init__()
        self.settings = settings or Settings()
        self.user_dir = Path(user_dir) if user_dir else data_dir()
        self.assume_yes = False
        self.project: Project | None = None
        self.fit_runner: JobRunner | None = None
        self.job_runner: JobRunner | None = None  # preprocess, demo scene or export (one at a time)
        self.last_error: str | None = None
        self.error_box: QMessageBox | None = None
        self.export_dialog: ExportDialog | None = None
        self.overlay_dialog: QDialog | None = None
        self.canonical: MeshArrays | None = None
        self.mesh_token = 0
        self.posed_frame: int | None = None
        self.shown_token = 0  # mesh_token of the mesh in the 3D view
        self.step = 0
        self._pausing = False
        self._rate = deque(maxlen=30)  # (time, step) of recent steps, for it/s
        self._run_t0 = 0.0
        self._budget = None
        self._autostart = False
        # Live-view cadence of a refine run (steps); a preview render costs about as much as 20-30 steps.
        self.preview_every = 50
        self.mesh_every = 50
        self.mesh_resolution = 96
        self.checkpoint_every = 50
        # Held-out PSNR while training: at most every this many steps (at a preview, when the checkpoint of
        # that step exists), and the session worker paces it further (SessionWorker.score_duty).
        self.heldout_every = 100
        self.heldout_frames: list[int] = []
        self._heldout_next = 0

        self.setWindowTitle("Avatar Studio")
        self.setAcceptDrops(True)
        self._build()
        self._build_menus()
        self.session_worker = SessionWorker(self)
        self.session_worker.opened.connect(self._session_opened)
        self.session_worker.unavailable.connect(lambda why: log.info("3D view: %s", why))
        self.session_worker.posed.connect(self._posed)
        self.session_worker.rendered.connect(lambda f, s, imgs: self.frames.add_render(f, s, imgs))
        self.session_worker.canonical.connect(lambda res, m: self.set_canonical(m))
        self.session_worker.counted.connect(self._counted)
        self.session_worker.scored.connect(self._held_out_scored)
        self.session_worker.failed.connect(lambda msg, det: self.show_error("View", msg, det))
        self.session_worker.start()
        self._status_timer = QTimer(self)
        self._status_timer.timeout.connect(self._update_memory)
        self._status_timer.start(1000)
        QApplication.instance().installEventFilter(self)
        geo = self.settings.q.value("geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        else:
            self.resize(1280, 800)

    # ---- layout -------------------------------------------------------------------------------
    def _build(self) -> None:
        self.controls = ControlPanel(self.settings)
        scroll = QScrollArea()
        scroll.setWidget(self.controls)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(self.controls.minimumSizeHint().width() + 20)
        scroll.setMaximumWidth(420)
        self.frames = FramePanel()
        self.mesh_view = MeshView()
        self.timeline = Timeline()
        self.losses = LossPlot()
        self.log_panel = LogPanel()
        self.log_panel.attach()

        views = QSplitter(Qt.Orientation.Horizontal)
        views.addWidget(self.frames)
        views.addWidget(self.mesh_view)
        views.setSizes([500, 500])
        top = QWidget()
        v = QVBoxLayout(top)
        v.setContentsMargins(0, 0, 0, 0)
        v.addWidget(views, 1)
        v.addWidget(self.timeline)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.losses, "Loss curves")
        self.tabs.addTab(self.log_panel, "Log")
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(top)
        right.addWidget(self.tabs)
        right.setSizes([520, 230])
        main = QSplitter(Qt.Orientation.Horizontal)
        main.addWidget(scroll)
        main.addWidget(right)
        main.setStretchFactor(1, 1)
        main.setSizes([300, 980])
        self.setCentralWidget(main)

        sb = self.statusBar()
        self.st_stage, self.st_step, self.st_rate = QLabel("idle"), QLabel("step –"), QLabel("– it/s")
        self.st_eta, self.st_device, self.st_mem = QLabel("ETA –"), QLabel(""), QLabel("")
        for w in (self.st_stage, self.st_step, self.st_rate, self.st_eta, self.st_device, self.st_mem):
            w.setContentsMargins(6, 0, 6, 0)
            sb.addPermanentWidget(w)
        self._update_device()

        c = self.controls
        c.open_requested.connect(self.choose_project)
        c.new_requested.connect(self.new_project_from_video)
        c.start_requested.connect(lambda: self.start_refine())
        c.pause_requested.connect(self.pause_refine)
        c.resume_requested.connect(lambda: self.start_refine())
        c.stop_requested.connect(self.stop_refine)
        c.cancel_button.clicked.connect(self.cancel_job)
        c.device.currentIndexChanged.connect(lambda _: self._update_device())
        self.timeline.frame_changed.connect(self._frame_changed)
        self.mesh_view.mode_changed.connect(lambda _: self._show_mesh())
        self.frames.render_requested.connect(self._render_frame)

    def _build_menus(self) -> None:
        m = self.menuBar().addMenu("&File")
        self.act_new = self._action(m, "&New project from video…", self.new_project_from_video, QKeySequence.StandardKey.New)
        self.act_open = self._action(m, "&Open project folder…", self.choose_project, QKeySequence.StandardKey.Open)
        self.recent_menu = m.addMenu("Open &recent")
        self.act_demo = self._action(m, "Open the built-in &demo", lambda: self.open_demo())
        m.addSeparator()
        self.act_export = self._action(m, "&Export mesh…", self.show_export_dialog, "Ctrl+E")
        shots = m.addMenu("Save &screenshot")
        for name in ("2D panel", "3D panel", "loss curves", "window"):
            self._action(shots, name, lambda checked=False, n=name: self.choose_screenshot(n))
        self.act_turntable = self._action(m, "Save &turntable video…", self.choose_turntable)
        m.addSeparator()
        self._action(m, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        r = self.menuBar().addMenu("&Refine")
        self._action(r, "&Start", lambda: self.start_refine(), "Ctrl+R")
        self._action(r, "&Pause", self.pause_refine)
        self._action(r, "&Resume", lambda: self.start_refine())
        self._action(r, "S&top", self.stop_refine)
        r.addSeparator()
        self._action(r, "Start &over…", self.start_over)
        v = self.menuBar().addMenu("&View")
        self._action(v, "&Reset 3D view", self.mesh_view.reset_view)
        self._action(v, "&Turntable", self.mesh_view.turn_button.toggle)
        self._action(v, "Render &current frame", lambda: self._render_frame(self.timeline.frame))
        h = self.menuBar().addMenu("&Help")
        self._action(h, "&About", lambda: QMessageBox.about(
            self, "Avatar Studio", "Turns a video of one person into a 3D avatar (Vid2Avatar-style).\n"
            "Drop a video on the window, or open a project folder."))
        self._refresh_recent()

    def _action(self, menu, text, slot, shortcut=None) -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(shortcut)
        a.triggered.connect(lambda checked=False: slot())
        menu.addAction(a)
        return a

    def _refresh_recent(self) -> None:
        self.recent_menu.clear()
        for p in self.settings.recent:
            self._action(self.recent_menu, p, lambda checked=False, p=p: self.open_project(p))
        self.recent_menu.setEnabled(bool(self.settings.recent))

    # ---- keyboard: left/right frame, space play (unless typing in a field) -------------------
    def eventFilter(self, obj: QObject, e: QEvent) -> bool:  # noqa: N802 - Qt override
        if e.type() == QEvent.Type.KeyPress and isinstance(obj, QWidget) and obj.window() is self:
            focus = QApplication.focusWidget()
            if isinstance(focus, (QLineEdit, QAbstractSpinBox, QPlainTextEdit, QComboBox)):
                return False
            key = e.key()
            if key == Qt.Key.Key_Left:
                self.timeline.step_back()
                return True
            if key == Qt.Key.Key_Right:
                self.timeline.step_forward()
                return True
            if key == Qt.Key.Key_Space:
                self.timeline.toggle_play()
                return True
        return False

    # ---- messages -----------------------------------------------------------------------------
    def show_error(self, title: str, message: str, details: str = "") -> None:
        """A readable, non-blocking message; the app stays usable behind it."""
        self.last_error = message
        log.warning("%s: %s", title, message)
        if self.error_box is not None:
            self.error_box.close()
        box = QMessageBox(QMessageBox.Icon.Critical if details else QMessageBox.Icon.Warning, title, message,
                          QMessageBox.StandardButton.Ok, self)
        if details:
            box.setDetailedText(details)
        box.open()
        self.error_box = box

    def ask(self, title: str, text: str) -> bool:
        if self.assume_yes:
            return True
        r = QMessageBox.question(self, title, text)
        return r == QMessageBox.StandardButton.Yes

    # ---- projects -----------------------------------------------------------------------------
    def busy(self) -> bool:
        return any(r is not None and r.isRunning() for r in (self.fit_runner, self.job_runner))

    def choose_project(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Open project folder", self.settings.get("last_dir"))
        if d:
            self.open_project(d)

    def open_project(self, path: str | Path) -> bool:
        """Opens a project folder; a bad folder gets a message and changes nothing."""
        if self.fit_runner is not None and self.fit_runner.isRunning():
            self.show_error("Open project", "Pause or stop the refinement before opening another project.")
            return False
        try:
            project = Project.open(path)
        except UserError as e:
            self.show_error("Cannot open project", str(e))
            if str(path) in self.settings.recent and not Path(path).exists():
                self.settings.remove_recent(str(path))
                self._refresh_recent()
            return False
        self.project = project
        self.settings.add_recent(project.root)
        self.settings.set("last_dir", str(project.root.parent))
        self._refresh_recent()
        self.setWindowTitle(f"Avatar Studio — {project.root.name}")
        m = project.meta
        self.controls.project_label.setText(f"{project.root.name}  ({project.root.parent})\n{project.num_frames} frames, {m['width']}×{m['height']}"
                                            f" px, body model {project.body_model}")
        self.controls.project_label.setToolTip(str(project.root))
        self.frames.set_project(project)
        self.timeline.set_frames(project.num_frames, float(m.get("fps", 10.0)))
        from engine.evaluation import live_frames

        self.losses.clear()
        self.heldout_frames = live_frames(project)
        self.losses.set_held_out_frames(self.heldout_frames, self.heldout_every)
        self.mesh_view.clear()
        self.canonical, self.posed_frame, self.step = None, None, 0
        self.mesh_token += 1
        has_ck = checkpoint_path(project.root).exists()
        self.controls.resume_note.setText("This project has a checkpoint: press Resume to continue refining."
                                          if has_ck else "")
        self.controls.set_run_state("resumable" if has_ck else "idle")
        self.frames.render_button.setEnabled(False)
        self._open_session()
        log.info("opened project %s (%d frames)", project.root, project.num_frames)
        return True

    def _open_session(self) -> None:
        if self.project is not None:
            self.session_worker.request("open", str(self.project.root), "cpu", self.controls.body_model_dir)

    def _session_opened(self, info: dict) -> None:
        self.step = max(self.step, info["step"])
        self.frames.render_button.setEnabled(True)
        self.st_step.setText(f"step {self.step}")
        if self.controls.state == "resumable":
            self.controls.resume_note.setText(f"This project has a checkpoint at step {info['step']}: press Resume "
                                              "to continue refining.")
        if self.canonical is None or self.canonical.step < info["step"]:
            self.session_worker.request("canonical", self.mesh_resolution)
        else:
            self._show_mesh()
        self._score_held_out()

    # ---- new project from a video -------------------------------------------------------------
    def new_project_from_video(self, video: str | Path | None = None, target: str | Path | None = None) -> bool:
        if self.busy():
            self.show_error("New project", "Wait for the running job to finish (or cancel it) first.")
            return False
        if video is None:
            exts = " ".join(f"*{e}" for e in VIDEO_EXTENSIONS)
            video, _ = QFileDialog.getOpenFileName(self, "Video of one person", self.settings.get("last_dir"),
                                                   f"Videos ({exts});;All files (*)")
            if not video:
                return False
        video = Path(video)
        if not video.is_file():
            self.show_error("Not a video", f"{video} is not a file.")
            return False
        if video.suffix.lower() not in VIDEO_EXTENSIONS:
            self.show_error("Not a video", f"{video.name} is not a video this app reads "
                            f"({', '.join(e[1:] for e in VIDEO_EXTENSIONS)}).")
            return False
        try:
            from engine.preprocess.job import PreprocessConfig, preprocess_job
        except ImportError as e:
            self.show_error("Preprocessing unavailable", f"video preprocessing is not available in this build ({e}).")
            return False
        if target is None:
            parent = QFileDialog.getExistingDirectory(self, "Create the project in…",
                                                      str(self.user_dir / "projects"))
            if not parent:
                return False
            target = _free_name(Path(parent) / video.stem)
        c = self.controls
        try:
            cfg = PreprocessConfig(size=c.resolution.value(), body=c.body.currentText(),
                                   body_model_dir=c.body_model_dir, device=c.device_name)
            cfg.validate()
        except UserError as e:
            self.show_error("Preprocessing settings", str(e))
            return False
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("preprocessing %s into %s", video, target)
        self._start_job("preprocess", lambda tok: preprocess_job(video, target, cfg, tok), self._preprocessed)
        return True

    def _preprocessed(self, result: dict) -> None:
        for w in result.get("warnings", []):
            log.warning("preprocess: %s", w)
        secs = result.get("seconds", {})
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in secs.items() if k != "total")
        log.info("preprocessed %d frames in %.1f s (%s); fitted body: keypoint error %.1f px, mask IoU %.2f",
                 result.get("frames", 0), secs.get("total", 0.0), stages, result.get("keypoint_error_px", float("nan")),
                 result.get("mask_iou", float("nan")))
        if self.open_project(result["project"]):
            self.show_overlay_sheet()

    def show_overlay_sheet(self) -> None:
        """The fitted body drawn over a few frames (written by preprocessing): judge the fit first."""
        from PySide6.QtGui import QPixmap
        from PySide6.QtWidgets import QDialogButtonBox

        sheet = self.project.root / "overlay_sheet.png" if self.project else None
        if sheet is None or not sheet.exists():
            return
        dlg = QDialog(self)
        dlg.setWindowTitle("Body fit: check it before refining")
        lay = QVBoxLayout(dlg)
        dlg.sheet = lbl = QLabel()
        lbl.setAlignment(Qt.AlignmentFlag.AlignCenter)
        # As large as the sheet itself, within most of the screen (sizes in device-independent pixels; the
        # picture is resampled to the screen's own pixels so that it stays sharp at any scale factor).
        pm = QPixmap(str(sheet))
        avail = (self.screen() or QApplication.primaryScreen()).availableGeometry()
        fit = pm.size().scaled(int(avail.width() * 0.85), int(avail.height() * 0.7), Qt.AspectRatioMode.KeepAspectRatio)
        if fit.width() > pm.width():
            fit = pm.size()
        dpr = self.devicePixelRatioF()
        shown = pm.scaled(fit * dpr, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        shown.setDevicePixelRatio(dpr)
        lbl.setPixmap(shown)
        lay.addWidget(lbl)
        note = QLabel(f"The fitted body over some frames (the last ones are the worst fitted). "
                      f"Full video: {self.project.root / 'overlay.mp4'}")
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

        out = self.user_dir / "demo"
        try:
            Project.open(out / "project")
            if self.open_project(out / "project") and autostart:
                self.start_refine()
            return
        except UserError:
            pass  # not there yet (or incomplete): make it
        if self.busy():
            self.show_error("Demo", "Wait for the running job to finish first.")
            return
        log.info("generating the demo scene into %s (once, about half a minute)", out)
        out.parent.mkdir(parents=True, exist_ok=True)
        self._autostart = autostart

        def done(_result) -> None:
            if self.open_project(out / "project") and self._autostart:
                self.start_refine()

        self._start_job("demo scene", lambda tok: synth_job(SynthConfig(**DEMO), out, overwrite=True, cancel=tok), done)

    # ---- short jobs (preprocess, demo scene, export) ------------------------------------------
    def _start_job(self, name: str, factory, on_done) -> JobRunner:
        r = JobRunner(name, factory, self)
        self.job_runner = r
        r.progress.connect(self._progress)
        r.message.connect(self._job_log)
        r.succeeded.connect(on_done)
        r.failed.connect(lambda msg, det, user: self.show_error(f"{name.capitalize()} failed", msg, det))
        r.cancelled.connect(lambda: log.info("%s cancelled; nothing was changed", name))
        r.finished.connect(lambda: self._job_finished(r))
        self._job_t0 = time.monotonic()
        self._prev_state = self.controls.state
        if self.fit_runner is None or not self.fit_runner.isRunning():
            self.controls.set_run_state("busy")
        self.controls.cancel_button.setVisible(True)
        r.start()
        return r

    def _job_finished(self, r: JobRunner) -> None:
        if self.job_runner is r:
            self.job_runner = None
        self.controls.cancel_button.setVisible(False)
        if self.fit_runner is None or not self.fit_runner.isRunning():
            self._set_idle_state()
            self.st_stage.setText("idle")
            self.controls.stage.setText("Idle")
        r.deleteLater()

    def cancel_job(self) -> None:
        if self.job_runner is not None:
            self.job_runner.cancel()

    def _job_log(self, ev) -> None:
        (log.warning if ev.level == "warning" else log.info)(ev.message)

    def _progress(self, ev) -> None:
        c = self.controls
        c.stage.setText(f"{ev.stage}: {ev.done}/{ev.total}" if ev.total else ev.stage)
        c.bar.setRange(0, max(ev.total, 1))
        c.bar.setValue(min(ev.done, max(ev.total, 1)))
        self.st_stage.setText(ev.stage)
        if ev.stage != "refine":
            if getattr(self, "_stage_name", None) != ev.stage:
                self._stage_name, self._stage_t0 = ev.stage, time.monotonic()
            el = time.monotonic() - self._stage_t0
            if ev.total and ev.done:
                self.st_eta.setText(f"ETA {_fmt_time(el * (ev.total - ev.done) / ev.done)}")

    # ---- refinement ---------------------------------------------------------------------------
    def _set_idle_state(self) -> None:
        if self.project is None:
            self.controls.set_run_state("no project")
        elif checkpoint_path(self.project.root).exists():
            self.controls.set_run_state("resumable")
        else:
            self.controls.set_run_state("idle")

    def start_refine(self) -> bool:
        """Start (or resume from the checkpoint) a refine run with the panel's settings."""
        from engine.refine.loop import FitBudget, fit_job

        if self.project is None:
            self.show_error("Refine", "Open a project first (or File ▸ Open the built-in demo).")
            return False
        if self.fit_runner is not None and self.fit_runner.isRunning():
            return False
        c = self.controls
        try:
            cfg = c.refine_config()
        except UserError as e:
            self.show_error("Settings", str(e))
            return False
        c.save()
        resuming = checkpoint_path(self.project.root).exists()
        budget = FitBudget(iters=self.step + c.steps.value(), minutes=c.minutes.value() or None,
                           checkpoint_every=self.checkpoint_every, preview_every=self.preview_every,
                           mesh_every=self.mesh_every, mesh_resolution=self.mesh_resolution,
                           preview_frame=self.timeline.frame)
        root, device, body_dir = self.project.root, c.device_name, c.body_model_dir
        prior, mode = c.prior_path, c.prior_mode_name
        r = JobRunner("refine", lambda tok: fit_job(root, cfg, budget, device, body_dir, tok, prior=prior,
                                                    prior_mode=mode), self)
        r.losses.connect(self._losses)
        r.progress.connect(self._progress)
        r.preview.connect(self._preview)
        r.mesh.connect(self._mesh_ready)
        r.message.connect(self._job_log)
        r.failed.connect(lambda msg, det, user: self.show_error("Refinement stopped", msg + (
            "" if user else "\n\nThe project keeps its last checkpoint."), det))
        r.finished.connect(lambda: self._refine_finished(r))
        self.fit_runner, self._pausing, self._budget = r, False, budget
        self._rate.clear()
        self._run_t0 = time.monotonic()
        self._heldout_next = self.step + self.heldout_every
        if not resuming:
            self.losses.clear()
        c.resume_note.setText("")
        c.set_run_state("running")
        c.stage.setText("opening the project (the first run precomputes the body's SDF)…")
        self.st_stage.setText("refine")
        log.info("%s refining (%s preset, up to step %d%s, %s)", "resumed" if resuming else "started", cfg.preset,
                 budget.iters, f", {budget.minutes:g} min" if budget.minutes else "", device)
        r.start()
        return True

    def pause_refine(self) -> None:
        if self.fit_runner is not None and self.fit_runner.isRunning():
            self._pausing = True
            self.controls.stage.setText("pausing after this step…")
            self.fit_runner.cancel()

    def stop_refine(self) -> None:
        if self.fit_runner is not None and self.fit_runner.isRunning():
            self._pausing = False
            self.controls.stage.setText("stopping after this step…")
            self.fit_runner.cancel()
        elif self.controls.state == "paused":
            self._set_idle_state()
            self.controls.stage.setText("Stopped; the checkpoint is kept.")

    def start_over(self) -> None:
        """Sets the checkpoint aside (renamed, not deleted) so that the next Start begins afresh."""
        if self.project is None or self.busy():
            return
        ck = checkpoint_path(self.project.root)
        if not ck.exists():
            return
        if not self.ask("Start over", "Set the current avatar aside and start from the body again?\n"
                        "(checkpoints/last.pt is renamed, not deleted.)"):
            return
        aside = ck.with_name(f"set-aside-{time.strftime('%Y%m%d-%H%M%S')}.pt")
        os.replace(ck, aside)
        log.info("checkpoint set aside as %s", aside)
        self.open_project(self.project.root)

    def _losses(self, events: list) -> None:
        self.losses.add(events)
        now = time.monotonic()
        for ev in events:
            self._rate.append((now, ev.step))
        self.step = events[-1].step
        self.st_step.setText(f"step {self.step}")
        rate = 0.0
        if len(self._rate) >= 2 and self._rate[-1][0] > self._rate[0][0]:
            rate = (self._rate[-1][1] - self._rate[0][1]) / (self._rate[-1][0] - self._rate[0][0])
        self.st_rate.setText(f"{rate:.2f} it/s" if rate else "– it/s")
        b = self._budget
        etas = []
        if b is not None and b.iters and rate:
            etas.append((b.iters - self.step) / rate)
        if b is not None and b.minutes:
            etas.append(60 * b.minutes - (now - self._run_t0))
        self.st_eta.setText(f"ETA {_fmt_time(max(0.0, min(etas)))}" if etas else "ETA –")
        self.controls.stage.setText(f"refining: step {self.step}" + (f" of {b.iters}" if b and b.iters else ""))

    def _preview(self, ev) -> None:
        self.frames.add_render(ev.frame, ev.step, {"rgb": ev.rgb, "normals": ev.normals, "opacity": ev.opacity})
        self._score_held_out(ev.step)  # the fit loop writes a due checkpoint before its preview

    def _score_held_out(self, step: int | None = None) -> None:
        """Asks the session worker to score the held-out frames on the newest checkpoint. During a run
        (`step` given) at most every `heldout_every` steps, paced by the worker so that it is busy scoring at
        most a fifth of the time (one scoring at a time; a newer request replaces a waiting one)."""
        if not self.heldout_frames or not self.session_worker.has_session:
            return
        if step is not None:
            if step < self._heldout_next:
                return
            self._heldout_next = step + self.heldout_every
        self.session_worker.request("score", self.heldout_frames, step is not None)

    def _held_out_scored(self, step: int, scores: dict, seconds: float) -> None:
        self.losses.add_held_out(step, scores)
        log.debug("held-out frames %s at step %d: %s (%.2f s)", self.heldout_frames, step, scores, seconds)

    def _mesh_ready(self, ev) -> None:
        self.set_canonical(MeshArrays(ev.vertices, ev.faces, ev.colors, ev.step))
        if not self.session_worker.has_session and self.project and checkpoint_path(self.project.root).exists():
            self._open_session()  # the first checkpoint exists now: posing becomes possible

    def _refine_finished(self, r: JobRunner) -> None:
        if self.fit_runner is r:
            self.fit_runner = None
        outcome = r.outcome
        if outcome == "cancelled" and self._pausing:
            self.controls.set_run_state("paused")
            self.controls.stage.setText(f"Paused at step {self.step}; the checkpoint is saved.")
            self.st_stage.setText("paused")
        else:
            self._set_idle_state()
            self.st_stage.setText("idle")
            if outcome == "done":
                self.controls.stage.setText(f"Finished this run at step {self.step}.")
            elif outcome == "cancelled":
                self.controls.stage.setText(f"Stopped at step {self.step}; the checkpoint is kept.")
            else:
                self.controls.stage.setText("Stopped by an error (see the message).")
        self.st_eta.setText("ETA –")
        self.st_rate.setText("– it/s")
        r.deleteLater()
        self._open_session()  # views now use the newest checkpoint

    # ---- views --------------------------------------------------------------------------------
    def set_canonical(self, mesh: MeshArrays) -> None:
        self.canonical = mesh
        self.mesh_token += 1
        self._show_mesh()

    def _show_mesh(self) -> None:
        m = self.canonical
        if m is None:
            return
        if self.mesh_view.mode.currentText() == "canonical" or not self.session_worker.has_session:
            note = "" if self.mesh_view.mode.currentText() == "canonical" else " (posed after the first checkpoint)"
            self.mesh_view.set_mesh(m, f"canonical, step {m.step}{note}")
            self.posed_frame, self.shown_token = None, self.mesh_token
            return
        self.session_worker.request("pose", self.timeline.frame, self.mesh_token, m)

    def _posed(self, frame: int, token: int, mesh: MeshArrays) -> None:
        if token != self.mesh_token or self.mesh_view.mode.currentText() != "posed":
            return  # a newer mesh or another mode came meanwhile
        self.mesh_view.set_mesh(mesh, f"frame {frame}, step {mesh.step}")
        self.posed_frame, self.shown_token = frame, token

    def _frame_changed(self, i: int) -> None:
        self.frames.show_frame(i)
        if self.canonical is not None and self.mesh_view.mode.currentText() == "posed":
            self._show_mesh()

    def _render_frame(self, i: int) -> None:
        if not self.session_worker.has_session:
            self.show_error("Render", "There is no fitted avatar to render yet: start refining first.")
            return
        self.frames.info.setText(f"rendering frame {i}…")
        self.session_worker.request("render", i)

    # ---- export and pictures ------------------------------------------------------------------
    def show_export_dialog(self) -> ExportDialog | None:
        if self.project is None or not checkpoint_path(self.project.root).exists():
            self.show_error("Export", "There is no fitted avatar to export yet: refine the project first.")
            return None
        dlg = ExportDialog(self.timeline.frame, self.project.num_frames, str(self.project.root / "exports"), self)
        dlg.count_requested.connect(lambda res, faces: self.session_worker.request("count", res, faces))
        dlg.accepted.connect(lambda: self.start_export(dlg.request()))
        self.export_dialog = dlg
        dlg.open()
        return dlg

    def _counted(self, res: int, faces, n: int) -> None:
        if self.export_dialog is not None:
            self.export_dialog.show_count(res, faces, n)

    def start_export(self, req: ExportRequest) -> JobRunner | None:
        """Runs the engine's export_job (the CLI's `export`) with the dialog's choices."""
        from engine.refine.export import export_job

        if self.project is None:
            return None
        if self.job_runner is not None and self.job_runner.isRunning():
            self.show_error("Export", "Another job is running; try again when it has finished.")
            return None
        out = Path(req.out)
        try:
            (out if req.sequence else out.parent).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.show_error("Export failed", f"cannot create {out if req.sequence else out.parent}: {e.strerror or e}")
            return None
        root, device, body_dir = self.project.root, self.controls.device_name, self.controls.body_model_dir

        def done(result: dict) -> None:
            files = result["files"]
            log.info("exported %d file(s), %d triangles each: %s", len(files), result["faces"],
                     files[0] if len(files) == 1 else Path(files[0]).parent)
            self.statusBar().showMessage(f"Exported {len(files)} file(s) to {Path(files[0]).parent}", 10_000)

        return self._start_job("export", lambda tok: export_job(root, out, req.config, sequence=req.sequence,
                                                               fmt=req.fmt, overwrite=req.overwrite, device=device,
                                                               body_model_dir=body_dir, cancel=tok), done)

    def panel(self, name: str) -> QWidget:
        return {"2D panel": self.frames, "3D panel": self.mesh_view, "loss curves": self.losses,
                "window": self}[name]

    def choose_screenshot(self, name: str) -> None:
        p, _ = QFileDialog.getSaveFileName(self, f"Save screenshot of the {name}",
                                           str(self.user_dir / f"{name.replace(' ', '_')}.png"), "PNG image (*.png)")
        if p:
            self.save_screenshot(name, p)

    def save_screenshot(self, name: str, path: str | Path) -> bool:
        """A PNG of one panel (the 3D view from its GL framebuffer, the rest with QWidget.grab)."""
        if name == "3D panel":
            img = self.mesh_view.view.grabFramebuffer()
            ok = img.save(str(path))
        else:
            ok = self.panel(name).grab().save(str(path))
        if not ok:
            self.show_error("Screenshot", f"cannot write {path}.")
        else:
            log.info("screenshot of the %s saved to %s", name, path)
        return ok

    def choose_turntable(self) -> None:
        if self.mesh_view.mesh is None:
            self.show_error("Turntable", "There is no mesh to turn yet.")
            return
        p, _ = QFileDialog.getSaveFileName(self, "Save turntable video", str(self.user_dir / "turntable.mp4"),
                                           "MP4 video (*.mp4)")
        if p:
            self.save_turntable(p)

    def save_turntable(self, path: str | Path, frames: int = 72, size: int = 512, fps: float = 24.0) -> bool:
        """One full turn of the shown mesh as an H.264 mp4 (GL renders here, encoding by the engine)."""
        from engine.io.video import Mp4Writer

        if self.mesh_view.mesh is None:
            return False
        path = Path(path)
        tmp = path.with_name(f".{path.name}.part.mp4")
        dlg = QProgressDialog("Rendering the turntable…", "Cancel", 0, frames, self)
        dlg.setWindowModality(Qt.WindowModality.WindowModal)
        view = self.mesh_view.view
        start = dict(view.opts)
        try:
            with Mp4Writer(tmp, fps) as w:
                for k in range(frames):
                    if dlg.wasCanceled():
                        raise InterruptedError
                    view.setCameraParams(azimuth=start["azimuth"] + 360.0 * k / frames)
                    w.write(self.mesh_view.grab_array(size, size))
                    dlg.setValue(k + 1)
            os.replace(tmp, path)
        except InterruptedError:
            tmp.unlink(missing_ok=True)
            return False
        except OSError as e:
            tmp.unlink(missing_ok=True)
            self.show_error("Turntable", f"cannot write {path}: {e.strerror or e}")
            return False
        finally:
            view.setCameraParams(azimuth=start["azimuth"])
            dlg.close()
        log.info("turntable video saved to %s", path)
        return True

    # ---- drag and drop ------------------------------------------------------------------------
    def dragEnterEvent(self, e) -> None:  # noqa: N802 - Qt override
        if e.mimeData().hasUrls():
            e.acceptProposedAction()

    def dropEvent(self, e) -> None:  # noqa: N802 - Qt override
        urls = [u.toLocalFile() for u in e.mimeData().urls() if u.isLocalFile()]
        if urls:
            e.acceptProposedAction()
            self.open_path(urls[0])

    def open_path(self, path: str | Path) -> bool:
        """What a drop does: a folder opens as a project, a file is preprocessed as a video."""
        p = Path(path)
        if p.is_dir():
            return self.open_project(p)
        if not p.exists():
            self.show_error("Not found", f"{p} does not exist.")
            return False
        return self.new_project_from_video(p)

    # ---- status -------------------------------------------------------------------------------
    def _update_device(self) -> None:
        self.st_device.setText(f"device {self.controls.device_name.upper()}")

    def _update_memory(self) -> None:
        rss = psutil.Process().memory_info().rss / 2**30
        text = f"RAM {rss:.1f} GB"
        if self.controls.device_name == "cuda":
            import torch

            text += f" · GPU {torch.cuda.memory_allocated() / 2**30:.1f} GB"
        self.st_mem.setText(text)

    # ---- closing ------------------------------------------------------------------------------
    def closeEvent(self, e) -> None:  # noqa: N802 - Qt override
        running = [r for r in (self.fit_runner, self.job_runner) if r is not None and r.isRunning()]
        if running:
            names = ", ".join(r.name for r in running)
            if not self.ask("Quit", f"A job is running ({names}). Stop it and quit?\n"
                            "Refinement keeps its last checkpoint; an unfinished export or preprocessing leaves "
                            "nothing behind."):
                e.ignore()
                return
        self.shutdown()
        e.accept()

    def shutdown(self) -> None:
        """Cancels every job, joins every thread, saves the settings."""
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            for r in (self.fit_runner, self.job_runner):
                if r is not None:
                    r.stop()
            self.session_worker.stop()
        finally:
            QApplication.restoreOverrideCursor()
        self.mesh_view.turn_timer.stop()
        self.timeline.stop()
        self._status_timer.stop()
        QApplication.instance().removeEventFilter(self)
        self.log_panel.detach()
        self.controls.save()
        self.settings.q.setValue("geometry", self.saveGeometry())
        self.settings.q.sync()


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _free_name(p: Path) -> Path:
    """p, or p_2, p_3, ... — the first that does not exist (never overwrite a user's project)."""
    if not p.exists():
        return p
    k = 2
    while p.with_name(f"{p.name}_{k}").exists():
        k += 1
    return p.with_name(f"{p.name}_{k}")
