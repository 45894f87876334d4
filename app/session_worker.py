"""A thread holding an engine `Session` of the open project, for on-demand views.

Posing a mesh into a frame, rendering a frame and counting the triangles of an export are engine
calls on a session (`Session.posed_mesh`, `Session.render_frame`, `canonical_mesh`); so are the baked
texture's (`engine.texture`: the textured mesh of the session's checkpoint, posed, or rendered into a
frame). They can take seconds, so
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
from dataclasses import dataclass, replace

import numpy as np
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


@dataclass(frozen=True)
class TexturedArrays:
    """The baked textured mesh for the views (read-only arrays); its poses share faces, uvs and texture."""

    vertices: object  # [V, 3] float32, split at UV seams
    faces: object  # [F, 3] int
    normals: object  # [V, 3] float32, the same on both sides of a seam
    uvs: object  # [V, 2] float32 in [0, 1], v up
    texture: object  # [S, S, 3] uint8, row 0 at the top
    step: int = 0  # checkpoint step it was baked from
    colors = None  # no vertex colours (the untextured shadings show grey)

    @property
    def num_faces(self) -> int:
        return len(self.faces)

    def posed(self, vertices, normals) -> TexturedArrays:
        return replace(self, vertices=frozen(vertices), normals=frozen(normals))


def seam_normals(vertices: np.ndarray, faces: np.ndarray, source_vertex: np.ndarray) -> np.ndarray:
    """Vertex normals averaged over the copies of each vertex that the UV atlas split at chart seams (a
    lit view would otherwise show every seam as a crease)."""
    from engine.mesh import vertex_normals

    n = vertex_normals(vertices, faces)
    acc = np.zeros((int(source_vertex.max()) + 1 if len(source_vertex) else 0, 3), np.float64)
    np.add.at(acc, source_vertex, n)
    acc /= np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-12)
    return acc[source_vertex].astype(np.float32)


class SessionWorker(QThread):
    """Owns one `Session` (opened from the project's checkpoint) and serves view requests."""

    opened = Signal(object)  # {"step", "num_frames"}
    unavailable = Signal(str)  # why no session (e.g. no checkpoint yet)
    posed = Signal(int, int, object)  # frame, mesh token, MeshArrays
    rendered = Signal(int, int, object)  # frame, step, {"rgb", "normals", "opacity"} read-only arrays
    textured = Signal(object)  # TexturedArrays of the session's checkpoint, or None (no bake of it)
    posed_textured = Signal(int, int, object)  # frame, mesh token, TexturedArrays
    rendered_textured = Signal(int, int, object)  # frame, step baked from, rgb [H, W, 3] read-only
    canonical = Signal(int, object)  # resolution, MeshArrays
    counted = Signal(int, object, int)  # resolution, face budget, triangles after export
    scored = Signal(int, object, float)  # checkpoint step, {"psnr", "m_psnr"} over held-out frames, seconds taken
    failed = Signal(str, str)

    ORDER = ("open", "texture", "pose", "pose_textured", "canonical", "count", "render_textured", "render",
             "score")  # what is served first
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
        self._baked = None  # (TexturedMesh, TexturedArrays) of the session's checkpoint, or None
        self._baked_weights = None  # its skinning weights (computed at its first pose)
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
        self._baked, self._baked_weights = None, None
        if not checkpoint_path(project_dir).exists():
            self.unavailable.emit("no fitted avatar yet")
            return
        s = open_session(project_dir, None, device, body_model_dir, require_checkpoint=True)
        self._session = s
        self.opened.emit({"step": s.step, "num_frames": s.project.num_frames})
        self._do_texture()

    def _do_texture(self) -> None:
        """Loads the project's bake if it was baked from the session's checkpoint (else there is none)."""
        from engine.texture import load_bake

        self._baked, self._baked_weights = None, None
        if self._session is None:
            return
        s = self._session
        got = load_bake(s.project.root, s.step)
        if got is None:
            self.textured.emit(None)
            return
        tm = got[0]
        texture = (np.clip(tm.texture, 0, 1) * 255 + 0.5).astype(np.uint8)
        arrays = TexturedArrays(frozen(tm.vertices), frozen(tm.faces),
                                frozen(seam_normals(tm.vertices, tm.faces, tm.source_vertex)), frozen(tm.uvs),
                                frozen(texture), s.step)
        self._baked = (tm, arrays)
        self.textured.emit(arrays)

    def _baked_posing(self):
        """The bake and its skinning weights (computed once: posing into many frames reuses them)."""
        from engine.mesh import Mesh

        tm, arrays = self._baked
        if self._baked_weights is None:
            self._baked_weights = self._session.mesh_weights(Mesh(tm.vertices, tm.faces))
        return tm, arrays, self._baked_weights

    def _do_pose_textured(self, frame: int, token: int) -> None:
        from engine.texture import posed_textured

        if self._session is None or self._baked is None:
            return
        tm, arrays, weights = self._baked_posing()
        posed = posed_textured(self._session, tm, frame, weights)
        self.posed_textured.emit(frame, token, arrays.posed(
            posed.vertices, seam_normals(posed.vertices, posed.faces, posed.source_vertex)))

    def _do_render_textured(self, frame: int) -> None:
        from engine.texture import render_textured

        if self._session is None or self._baked is None:
            return
        tm, arrays, weights = self._baked_posing()
        self.rendered_textured.emit(frame, arrays.step, frozen(render_textured(self._session, tm, frame, weights).rgb))

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
        from engine.export import ExportConfig, canonical_mesh
        from engine.mesh import count_faces_after

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
            if self._baked is not None and self._baked[1].step != s.step:
                self._do_texture()  # a newer checkpoint: the bake no longer fits it
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
