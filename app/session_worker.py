"""A thread holding an engine `Session` of the open project, for on-demand views.

Posing a mesh into a frame, rendering a frame and counting the triangles of an export are engine
calls on a session (`Session.posed_mesh`, `Session.render_frame`, `canonical_mesh`); they can take seconds, so
they run here, one at a time, only the newest request of each kind (a slider dragged over many frames
asks for as many poses; only the last one still matters). Scoring the held-out frames while a run trains
loads each newer checkpoint into the session first, so it comes last; during a run it is also paced
(`engine.jobs.pacing.TimeShare`), so that scoring keeps this thread busy at most `score_share` of the
time (on a 2-core machine it shares a core with the window while training has the other). Each score
is recorded in the project's history (`engine.refine.history`), which the loss plot draws when the
project is opened again.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass

from PySide6.QtCore import QThread, Signal

from app.jobs import LIVE_RUNNERS, frozen
from engine.errors import UserError
from engine.jobs.pacing import TimeShare

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeshArrays:
    """An immutable mesh for the views: read-only numpy arrays."""

    vertices: object  # [V, 3] float32
    faces: object  # [F, 3] int
    colors: object | None  # [V, 3] float32 in [0, 1]
    step: int = 0

    @property
    def num_faces(self) -> int:
        return len(self.faces)

    @staticmethod
    def of(mesh, step: int = 0) -> MeshArrays:
        return MeshArrays(frozen(mesh.vertices), frozen(mesh.faces), frozen(mesh.colors), step)


class SessionWorker(QThread):
    """Owns one `Session` (opened from the project's checkpoint) and serves view requests."""

    opened = Signal(object)  # {"step", "num_frames"}
    unavailable = Signal(str)  # why no session (e.g. no checkpoint yet)
    posed = Signal(int, int, object)  # frame, mesh token, MeshArrays
    rendered = Signal(int, int, object)  # frame, step, {"rgb", "normals", "opacity"} read-only arrays
    canonical = Signal(int, object)  # resolution, MeshArrays
    counted = Signal(int, object, int)  # resolution, face budget, triangles after export
    scored = Signal(int, object, float)  # checkpoint step, {"psnr", "m_psnr"} over held-out frames, seconds taken
    failed = Signal(str, str)

    ORDER = ("open", "pose", "canonical", "count", "render", "score")  # what is served first
    # Paced scoring: at most this share of the time (a scoring of s seconds, then 4·s idle); a smaller share
    # slows training less and gives fewer held-out points (README, "Watch and scrub").
    score_share = 0.2

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("session-worker")
        self._cond = threading.Condition()
        self._pending: dict[str, tuple] = {}
        self._stop = False
        self._session = None
        self._meshes: dict[int, object] = {}  # export resolution → canonical Mesh (for counts)
        self._open_args: tuple = ()
        self._scored: tuple = ()  # (project, step) scored last: a re-opened session is not scored twice
        self._score_gate = TimeShare(self.score_share)  # when a paced scoring may start
        LIVE_RUNNERS.add(self)

    # ---- GUI thread -------------------------------------------------------------------------
    def request(self, kind: str, *args) -> None:
        with self._cond:
            if kind == "open":  # a new session: everything queued was for the old one
                self._pending.clear()
            self._pending[kind] = args
            self._cond.notify()

    def stop(self, timeout_ms: int = 60_000) -> bool:
        with self._cond:
            self._stop = True
            self._pending.clear()
            self._cond.notify()
        return self.wait(timeout_ms)

    @property
    def has_session(self) -> bool:
        return self._session is not None

    # ---- worker thread ----------------------------------------------------------------------
    def _next_kind(self) -> str | None:
        """The request to serve now (with the lock held); a paced scoring waits for its time."""
        for k in self.ORDER:
            if k in self._pending:
                if k == "score" and self._pending[k][1] and not self._score_gate.ready():
                    continue
                return k
        return None

    def run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stop:
                        self._session = None
                        return
                    kind = self._next_kind()
                    if kind is not None:
                        break
                    wait = None if "score" not in self._pending else max(0.01, self._score_gate.wait_s())
                    self._cond.wait(wait)
                args = self._pending.pop(kind)
            try:
                getattr(self, f"_do_{kind}")(*args)
            except UserError as e:
                self.failed.emit(str(e), "")
            except Exception as e:  # noqa: BLE001 - reported, the worker keeps serving
                log.exception("view request %s failed", kind)
                self.failed.emit(f"{e.__class__.__name__}: {e}", traceback.format_exc())

    def _do_open(self, project_dir: str, device: str, body_model_dir: str | None) -> None:
        from engine.refine.checkpoint import checkpoint_path
        from engine.refine.session import open_session

        self._session, self._meshes, self._open_args = None, {}, (project_dir, device, body_model_dir)
        if not checkpoint_path(project_dir).exists():
            self.unavailable.emit("no fitted avatar yet")
            return
        s = open_session(project_dir, None, device, body_model_dir, require_checkpoint=True)
        self._session = s
        self.opened.emit({"step": s.step, "num_frames": s.project.num_frames})

    def _do_pose(self, frame: int, token: int, mesh: MeshArrays) -> None:
        from engine.mesh import Mesh

        if self._session is None:
            return
        # Writable copies: the engine hands vertices to torch, which warns on read-only arrays.
        m = Mesh(mesh.vertices.copy(), mesh.faces.copy(), None if mesh.colors is None else mesh.colors.copy())
        self.posed.emit(frame, token, MeshArrays.of(self._session.posed_mesh(m, frame), mesh.step))

    def _do_render(self, frame: int) -> None:
        if self._session is None:
            return
        r = self._session.render_frame(frame)
        out = {"rgb": frozen(r["rgb"]), "normals": frozen(0.5 + 0.5 * r["normals"]), "opacity": frozen(r["opacity"])}
        self.rendered.emit(frame, self._session.step, out)

    def _do_canonical(self, resolution: int) -> None:
        if self._session is None:
            return
        self.canonical.emit(resolution, MeshArrays.of(self._session.canonical_mesh(resolution), self._session.step))

    def _do_count(self, resolution: int, faces: int | None) -> None:
        from engine.mesh import count_faces_after
        from engine.refine.export import ExportConfig, canonical_mesh

        if self._session is None:
            return
        if resolution not in self._meshes:
            self._meshes = {resolution: canonical_mesh(self._session, ExportConfig(resolution=resolution))}
        self.counted.emit(resolution, faces, count_faces_after(self._meshes[resolution], faces))

    def _do_score(self, frames: list[int], paced: bool = False) -> None:
        from engine.evaluation import live_scores
        from engine.refine.session import open_session

        if self._session is None or not frames:
            return
        t0 = time.perf_counter()
        with self._score_gate:  # the reload counts as this thread's busy time too
            try:
                if self._session.reload_checkpoint():
                    self._meshes = {}
            except UserError:  # a run with another configuration wrote it (start over): a new session
                root, device, body_model_dir = self._open_args
                self._session = open_session(root, None, device, body_model_dir, require_checkpoint=True)
                self._meshes = {}
            s = self._session
            key = (str(s.project.root), s.step)
            if key == self._scored:
                return
            scores = live_scores(s, frames)
            self._scored = key
            self.scored.emit(s.step, scores, time.perf_counter() - t0)
            if scores:
                self._record_scores(s.project.root, s.step, scores)

    @staticmethod
    def _record_scores(root, step: int, scores: dict) -> None:
        """Keeps the scores in the project's history (a project we cannot write keeps only the live curve)."""
        from engine.refine.history import RunHistory

        try:
            history = RunHistory.load(root)
            history.add_scores(step, scores)
            history.save(root)
        except OSError as e:
            log.warning("held-out scores of step %d not saved in %s: %s", step, root, e)
