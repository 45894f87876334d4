"""Refinement in the window: start, pause, resume, stop and start over, and what a run shows as it goes.

One `fit_job` at a time runs in a `JobRunner`. Its losses go to the loss plot and the status bar (it/s and
ETA), its previews to the 2D panel and its meshes to the 3D panel (through `ViewSync`). At a preview the
session worker is asked to score the held-out frames on the newest checkpoint (the fit loop writes a due
checkpoint before its preview), at most every `heldout_every` steps; the worker paces it further
(`SessionWorker.score_share`) and records the scores in the project's history. Opening a project draws
that history (`engine.refine.history`) again. A run that ends (not a pause) bakes the texture when the
control panel asks for it (`app/bake_flow.py`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path

from PySide6.QtCore import QObject

from app.jobs import JobRunner, fmt_time
from app.session_worker import MeshArrays
from engine.errors import UserError
from engine.project import Project
from engine.refine.checkpoint import checkpoint_path
from engine.refine.history import RunHistory

log = logging.getLogger(__name__)


class RefineController(QObject):
    """The refine runs of the window's project; `window` gives the panels, the status bar and messages."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.w = window
        self.runner: JobRunner | None = None
        self.step = 0  # newest step known (of the run, or of the checkpoint)
        # Live-view cadence of a run (steps); the fit loop paces previews and meshes further (FitBudget).
        self.preview_every = 50
        self.mesh_every = 50
        self.mesh_resolution = 96
        self.checkpoint_every = 50
        self.heldout_every = 100
        self.heldout_frames: list[int] = []
        self._heldout_next = 0
        self._pausing = False
        self._rate = deque(maxlen=30)  # (time, step) of recent steps, for it/s
        self._run_t0 = 0.0
        self._budget = None

    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.isRunning()

    # ---- a project opens ----------------------------------------------------------------------
    def project_opened(self, project: Project) -> None:
        """Resets the run state and draws the project's saved curves."""
        from engine.evaluation import live_frames

        self.step = 0
        history = RunHistory.load(project.root)
        self.w.losses.show_history(history.losses, history.scores)
        self.heldout_frames = live_frames(project)
        self.w.losses.set_held_out_frames(self.heldout_frames, self.heldout_every)
        has_ck = checkpoint_path(project.root).exists()
        c = self.w.controls
        c.resume_note.setText("This project has a checkpoint: press Resume to continue refining." if has_ck else "")
        c.set_run_state("resumable" if has_ck else "idle")

    def session_opened(self, step: int) -> None:
        """The session worker opened the checkpoint of `step`."""
        self.step = max(self.step, step)
        self.w.set_status(step=f"step {self.step}")
        c = self.w.controls
        if c.state == "resumable":
            c.resume_note.setText(f"This project has a checkpoint at step {step}: press Resume to continue refining.")
        self.score_held_out()

    def set_idle_state(self) -> None:
        """The control panel's state when nothing runs: whether there is a project, and a checkpoint."""
        project = self.w.project
        if project is None:
            self.w.controls.set_run_state("no project")
        elif checkpoint_path(project.root).exists():
            self.w.controls.set_run_state("resumable")
        else:
            self.w.controls.set_run_state("idle")

    # ---- user actions -------------------------------------------------------------------------
    def start(self) -> bool:
        """Start (or resume from the checkpoint) a refine run with the panel's settings."""
        from engine.refine.loop import FitBudget, fit_job

        w = self.w
        if w.project is None:
            w.show_error("Refine", "Open a project first (or File ▸ Open the built-in demo).")
            return False
        if self.running:
            return False
        c = w.controls
        try:
            cfg = c.refine_config()
        except UserError as e:
            w.show_error("Settings", str(e))
            return False
        c.save()
        resuming = checkpoint_path(w.project.root).exists()
        budget = FitBudget(iters=self.step + c.steps.value(), minutes=c.minutes.value() or None,
                           checkpoint_every=self.checkpoint_every, preview_every=self.preview_every,
                           mesh_every=self.mesh_every, mesh_resolution=self.mesh_resolution,
                           preview_frame=w.timeline.frame)
        root, device, body_dir = w.project.root, c.device_name, c.body_model_dir
        prior, mode = c.prior_path, c.prior_mode_name
        r = JobRunner("refine", lambda tok: fit_job(root, cfg, budget, device, body_dir, tok, prior=prior,
                                                    prior_mode=mode), w)
        r.losses.connect(self._losses)
        r.progress.connect(w.show_progress)
        r.preview.connect(self._preview)
        r.mesh.connect(self._mesh_ready)
        r.message.connect(w.job_log)
        r.failed.connect(lambda msg, det, user: w.show_error("Refinement stopped", msg + (
            "" if user else "\n\nThe project keeps its last checkpoint."), det))
        r.finished.connect(lambda: self._finished(r))
        self.runner, self._pausing, self._budget = r, False, budget
        self._rate.clear()
        self._run_t0 = time.monotonic()
        self._heldout_next = self.step + self.heldout_every
        if not resuming:
            w.losses.clear()
        c.resume_note.setText("")
        c.set_run_state("running")
        c.stage.setText("opening the project (the first run precomputes the body's SDF)…")
        w.set_status(stage="refine")
        log.info("%s refining (%s preset, up to step %d%s, %s)", "resumed" if resuming else "started", cfg.preset,
                 budget.iters, f", {budget.minutes:g} min" if budget.minutes else "", device)
        r.start()
        return True

    def pause(self) -> None:
        if self.running:
            self._pausing = True
            self.w.controls.stage.setText("pausing after this step…")
            self.runner.cancel()

    def stop(self) -> None:
        if self.running:
            self._pausing = False
            self.w.controls.stage.setText("stopping after this step…")
            self.runner.cancel()
        elif self.w.controls.state == "paused":
            self.set_idle_state()
            self.w.controls.stage.setText("Stopped; the checkpoint is kept.")

    def start_over(self) -> None:
        """Sets the checkpoint and its history aside (renamed, not deleted) so that the next Start begins afresh."""
        w = self.w
        if w.project is None or w.busy():
            return
        ck = checkpoint_path(w.project.root)
        if not ck.exists():
            return
        if not w.ask("Start over", "Set the current avatar aside and start from the body again?\n"
                     "(checkpoints/last.pt and its curves are renamed, not deleted.)"):
            return
        aside = ck.with_name(f"set-aside-{time.strftime('%Y%m%d-%H%M%S')}.pt")
        os.replace(ck, aside)
        history = Path(w.project.root) / RunHistory.FILE
        if history.exists():
            os.replace(history, aside.with_suffix(".history.json"))
        log.info("checkpoint set aside as %s", aside)
        w.open_project(w.project.root)

    # ---- the run's events ---------------------------------------------------------------------
    def _losses(self, events: list) -> None:
        self.w.losses.add(events)
        now = time.monotonic()
        for ev in events:
            self._rate.append((now, ev.step))
        self.step = events[-1].step
        rate = 0.0
        if len(self._rate) >= 2 and self._rate[-1][0] > self._rate[0][0]:
            rate = (self._rate[-1][1] - self._rate[0][1]) / (self._rate[-1][0] - self._rate[0][0])
        b = self._budget
        etas = []
        if b is not None and b.iters and rate:
            etas.append((b.iters - self.step) / rate)
        if b is not None and b.minutes:
            etas.append(60 * b.minutes - (now - self._run_t0))
        self.w.set_status(step=f"step {self.step}", rate=f"{rate:.2f} it/s" if rate else "– it/s",
                          eta=f"ETA {fmt_time(max(0.0, min(etas)))}" if etas else "ETA –")
        self.w.controls.stage.setText(f"refining: step {self.step}" + (f" of {b.iters}" if b and b.iters else ""))

    def _preview(self, ev) -> None:
        self.w.frames.add_render(ev.frame, ev.step, {"rgb": ev.rgb, "normals": ev.normals, "opacity": ev.opacity})
        self.score_held_out(ev.step)  # the fit loop writes a due checkpoint before its preview

    def score_held_out(self, step: int | None = None) -> None:
        """Asks the session worker to score the held-out frames on the newest checkpoint. During a run
        (`step` given) at most every `heldout_every` steps, and paced by the worker (one scoring at a time;
        a newer request replaces a waiting one)."""
        worker = self.w.session_worker
        if not self.heldout_frames or not worker.has_session:
            return
        if step is not None:
            if step < self._heldout_next:
                return
            self._heldout_next = step + self.heldout_every
        worker.request("score", self.heldout_frames, step is not None)

    def held_out_scored(self, step: int, scores: dict, seconds: float) -> None:
        self.w.losses.add_held_out(step, scores)
        log.debug("held-out frames %s at step %d: %s (%.2f s)", self.heldout_frames, step, scores, seconds)

    def _mesh_ready(self, ev) -> None:
        w = self.w
        w.views.set_canonical(MeshArrays(ev.vertices, ev.faces, ev.colors, ev.step))
        if not w.session_worker.has_session and w.project and checkpoint_path(w.project.root).exists():
            w.open_session()  # the first checkpoint exists now: posing becomes possible

    def _finished(self, r: JobRunner) -> None:
        w, c = self.w, self.w.controls
        if self.runner is r:
            self.runner = None
        outcome = r.outcome
        if outcome == "cancelled" and self._pausing:
            c.set_run_state("paused")
            c.stage.setText(f"Paused at step {self.step}; the checkpoint is saved.")
            w.set_status(stage="paused")
        else:
            self.set_idle_state()
            w.set_status(stage="idle")
            if outcome == "done":
                c.stage.setText(f"Finished this run at step {self.step}.")
            elif outcome == "cancelled":
                c.stage.setText(f"Stopped at step {self.step}; the checkpoint is kept.")
            else:
                c.stage.setText("Stopped by an error (see the message).")
        w.set_status(eta="ETA –", rate="– it/s")
        r.deleteLater()
        w.open_session()  # views now use the newest checkpoint
        ended = outcome == "done" or (outcome == "cancelled" and not self._pausing)
        if ended and c.bake_after.isChecked():
            w.bake.start(int(w.settings.get("bake_size")), after_run=True)
