"""The main window: control panel on the left, 2D | 3D views with the timeline, curves and log below.

The window holds the layout, the menus, the status bar, the open project and the wiring; what the
user does lives beside it, one module each:

- `app/refine_controller.py`: refine runs (start, pause, resume, stop, start over) and their live events;
- `app/view_sync.py`: the 2D and 3D panels following the timeline and the session worker;
- `app/preprocess_flow.py`: a new project from a video, and the built-in demo;
- `app/export_flow.py`: the export dialog and job;
- `app/bake_flow.py`: baking the texture (on request, or when a run ends);
- `app/capture.py`: screenshots and turntable videos.

Everything long runs as an engine job in a `JobRunner` thread (a refine run, and one short job at a
time: preprocessing, the demo scene, an export or a bake); on-demand views (posing the mesh at the current
frame, rendering a frame, the baked textured mesh posed or rendered, counting export triangles, scoring
held-out frames) go through the `SessionWorker`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import psutil
from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QFileDialog,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.bake_flow import BakeFlow
from app.capture import PANELS, Capture
from app.controls import ControlPanel
from app.export_flow import ExportFlow
from app.jobs import JobRunner, fmt_time
from app.logpanel import LogPanel
from app.preprocess_flow import PreprocessFlow
from app.refine_controller import RefineController
from app.session_worker import SessionWorker
from app.settings import Settings, data_dir
from app.view_sync import ViewSync
from app.views.frames import FramePanel
from app.views.losses import LossPlot
from app.views.mesh3d import MeshView
from app.views.timeline import Timeline
from engine.errors import UserError
from engine.project import Project

log = logging.getLogger(__name__)


class MainWindow(QMainWindow):
    """The app. `assume_yes` answers its own questions with yes (used by scripted runs and tests)."""

    def __init__(self, settings: Settings | None = None, user_dir: Path | None = None) -> None:
        super().__init__()
        self.settings = settings or Settings()
        self.user_dir = Path(user_dir) if user_dir else data_dir()
        self.assume_yes = False
        self.closing = False  # set by shutdown: nothing new may start
        self.project: Project | None = None
        self.job_runner: JobRunner | None = None  # preprocess, demo scene, export or bake (one at a time)
        self.last_error: str | None = None
        self.error_box: QMessageBox | None = None
        self._stage_name: str | None = None  # the short job's stage whose ETA the status bar shows
        self._stage_t0 = 0.0

        self.setWindowTitle("Avatar Studio")
        self.setAcceptDrops(True)
        self._build()
        self.session_worker = SessionWorker(self)
        self.refine = RefineController(self)
        self.views = ViewSync(self)
        self.preprocess = PreprocessFlow(self)
        self.export = ExportFlow(self)
        self.bake = BakeFlow(self)
        self.capture = Capture(self)
        self._build_menus()
        self._wire()
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

    def _wire(self) -> None:
        c, refine, views, worker = self.controls, self.refine, self.views, self.session_worker
        c.open_requested.connect(self.choose_project)
        c.new_requested.connect(lambda: self.preprocess.new_project_from_video())
        c.start_requested.connect(refine.start)
        c.pause_requested.connect(refine.pause)
        c.resume_requested.connect(refine.start)
        c.stop_requested.connect(refine.stop)
        c.cancel_button.clicked.connect(self.cancel_job)
        c.device.currentIndexChanged.connect(lambda _: self._update_device())
        self.timeline.frame_changed.connect(views.frame_changed)
        self.mesh_view.mode_changed.connect(lambda _: views.show_mesh())
        self.mesh_view.texture_toggled.connect(lambda _: views.show_mesh())
        self.frames.render_requested.connect(views.render_frame)
        self.frames.textured_requested.connect(views.render_textured)
        worker.opened.connect(self._session_opened)
        worker.unavailable.connect(lambda why: log.info("3D view: %s", why))
        worker.posed.connect(views.posed)
        worker.rendered.connect(lambda f, s, imgs: self.frames.add_render(f, s, imgs))
        worker.textured.connect(views.set_textured)
        worker.posed_textured.connect(views.posed)
        worker.rendered_textured.connect(self.frames.add_textured)
        worker.canonical.connect(lambda res, m: views.set_canonical(m))
        worker.counted.connect(self.export.counted)
        worker.scored.connect(refine.held_out_scored)
        worker.failed.connect(lambda msg, det: self.show_error("View", msg, det))

    def _build_menus(self) -> None:
        m = self.menuBar().addMenu("&File")
        self.act_new = self._action(m, "&New project from video…", self.preprocess.new_project_from_video,
                                    QKeySequence.StandardKey.New)
        self.act_open = self._action(m, "&Open project folder…", self.choose_project, QKeySequence.StandardKey.Open)
        self.recent_menu = m.addMenu("Open &recent")
        self.act_demo = self._action(m, "Open the built-in &demo", self.preprocess.open_demo)
        m.addSeparator()
        self.act_export = self._action(m, "&Export mesh…", self.export.show_dialog, "Ctrl+E")
        self.act_export_rig = self._action(m, "Export &animated avatar…", self.export.show_rig_dialog, "Ctrl+Shift+E")
        self.act_bake = self._action(m, "&Bake texture…", self.bake.show_dialog, "Ctrl+B")
        shots = m.addMenu("Save &screenshot")
        for name in PANELS:
            self._action(shots, name, lambda n=name: self.capture.choose_screenshot(n))
        self.act_turntable = self._action(m, "Save &turntable video…", self.capture.choose_turntable)
        m.addSeparator()
        self._action(m, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        r = self.menuBar().addMenu("&Refine")
        self._action(r, "&Start", self.refine.start, "Ctrl+R")
        self._action(r, "&Pause", self.refine.pause)
        self._action(r, "&Resume", self.refine.start)
        self._action(r, "S&top", self.refine.stop)
        r.addSeparator()
        self._action(r, "Start &over…", self.refine.start_over)
        v = self.menuBar().addMenu("&View")
        self._action(v, "&Reset 3D view", self.mesh_view.reset_view)
        self._action(v, "&Turntable", self.mesh_view.turn_button.toggle)
        self._action(v, "Render &current frame", lambda: self.views.render_frame(self.timeline.frame))
        h = self.menuBar().addMenu("&Help")
        self._action(h, "&About", lambda: QMessageBox.about(
            self, "Avatar Studio", "Turns a video of one person into a 3D avatar (Vid2Avatar-style).\n"
            "Drop a video on the window, or open a project folder."))
        self._refresh_recent()

    def _action(self, menu, text, slot, shortcut=None) -> QAction:
        """A menu entry calling `slot()` with no arguments (not QAction's `checked`)."""
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(shortcut)
        a.triggered.connect(lambda checked=False: slot())
        menu.addAction(a)
        return a

    def _refresh_recent(self) -> None:
        self.recent_menu.clear()
        for p in self.settings.recent:
            self._action(self.recent_menu, p, lambda p=p: self.open_project(p))
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
        return self.refine.running or (self.job_runner is not None and self.job_runner.isRunning())

    def choose_project(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Open project folder", self.settings.get("last_dir"))
        if d:
            self.open_project(d)

    def open_project(self, path: str | Path) -> bool:
        """Opens a project folder; a bad folder gets a message and changes nothing."""
        if self.refine.running:
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
        self.controls.project_label.setText(f"{project.root.name}  ({project.root.parent})\n{project.num_frames} "
                                            f"frames, {m['width']}×{m['height']} px, body model {project.body_model}")
        self.controls.project_label.setToolTip(str(project.root))
        self.frames.set_project(project)
        self.timeline.set_frames(project.num_frames, float(m.get("fps", 10.0)))
        self.refine.project_opened(project)
        self.views.reset()
        self.frames.render_button.setEnabled(False)
        self.open_session()
        log.info("opened project %s (%d frames)", project.root, project.num_frames)
        return True

    def open_path(self, path: str | Path) -> bool:
        """What a drop does: a folder opens as a project, a file is preprocessed as a video."""
        p = Path(path)
        if p.is_dir():
            return self.open_project(p)
        if not p.exists():
            self.show_error("Not found", f"{p} does not exist.")
            return False
        return self.preprocess.new_project_from_video(p)

    def open_session(self) -> None:
        """(Re)opens the session worker on the project's newest checkpoint."""
        if self.project is not None:
            self.session_worker.request("open", str(self.project.root), "cpu", self.controls.body_model_dir)

    def _session_opened(self, info: dict) -> None:
        self.frames.render_button.setEnabled(True)
        self.refine.session_opened(info["step"])
        self.views.session_opened(info["step"], self.refine.mesh_resolution)

    # ---- drag and drop ------------------------------------------------------------------------
    def dragEnterEvent(self, e) -> None:  # noqa: N802 - Qt override
        if e.mimeData().hasUrls():
            e.acceptProposedAction()

    def dropEvent(self, e) -> None:  # noqa: N802 - Qt override
        urls = [u.toLocalFile() for u in e.mimeData().urls() if u.isLocalFile()]
        if urls:
            e.acceptProposedAction()
            self.open_path(urls[0])

    # ---- short jobs (preprocess, demo scene, export, bake) ------------------------------------
    def start_job(self, name: str, factory, on_done) -> JobRunner:
        """Runs `factory(cancel_token)` as the one short job, with progress, log and errors shown."""
        r = JobRunner(name, factory, self)
        self.job_runner = r
        r.progress.connect(self.show_progress)
        r.message.connect(self.job_log)
        r.succeeded.connect(on_done)
        r.failed.connect(lambda msg, det, user: self.show_error(f"{name.capitalize()} failed", msg, det))
        r.cancelled.connect(lambda: log.info("%s cancelled; nothing was changed", name))
        r.finished.connect(lambda: self._job_finished(r))
        if not self.refine.running:
            self.controls.set_run_state("busy")
        self.controls.cancel_button.setVisible(True)
        r.start()
        return r

    def _job_finished(self, r: JobRunner) -> None:
        if self.job_runner is r:
            self.job_runner = None
        self.controls.cancel_button.setVisible(False)
        if not self.refine.running:
            self.refine.set_idle_state()
            self.st_stage.setText("idle")
            self.controls.stage.setText("Idle")
        r.deleteLater()

    def cancel_job(self) -> None:
        if self.job_runner is not None:
            self.job_runner.cancel()

    def job_log(self, ev) -> None:
        (log.warning if ev.level == "warning" else log.info)(ev.message)

    # ---- status -------------------------------------------------------------------------------
    def set_status(self, stage: str | None = None, step: str | None = None, rate: str | None = None,
                   eta: str | None = None) -> None:
        """Sets the status bar's texts that are given."""
        for label, text in ((self.st_stage, stage), (self.st_step, step), (self.st_rate, rate), (self.st_eta, eta)):
            if text is not None:
                label.setText(text)

    def show_progress(self, ev) -> None:
        """A job's Progress event: the control panel's bar and stage, the status bar (an ETA but for refine)."""
        c = self.controls
        c.stage.setText(f"{ev.stage}: {ev.done}/{ev.total}" if ev.total else ev.stage)
        c.bar.setRange(0, max(ev.total, 1))
        c.bar.setValue(min(ev.done, max(ev.total, 1)))
        self.st_stage.setText(ev.stage)
        if ev.stage != "refine":  # the refine controller computes the run's ETA from its budget
            if self._stage_name != ev.stage:
                self._stage_name, self._stage_t0 = ev.stage, time.monotonic()
            el = time.monotonic() - self._stage_t0
            if ev.total and ev.done:
                self.st_eta.setText(f"ETA {fmt_time(el * (ev.total - ev.done) / ev.done)}")

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
        running = [r for r in (self.refine.runner, self.job_runner) if r is not None and r.isRunning()]
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
        self.closing = True
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            for r in (self.refine.runner, self.job_runner):
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
