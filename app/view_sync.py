"""Keeps the 2D and 3D panels in step with the timeline and the session worker.

The 3D panel shows the newest canonical mesh, or that mesh posed at the timeline's frame (posing is a
session worker request, answered with the token of the mesh it was asked for: an answer for an older mesh
is dropped). The 2D panel shows the timeline's frame and renders it on demand.
"""

from __future__ import annotations

from PySide6.QtCore import QObject

from app.session_worker import MeshArrays


class ViewSync(QObject):
    """The mesh shown in the 3D panel and the frame in both panels; `window` gives the panels and the worker."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.w = window
        self.canonical: MeshArrays | None = None  # the newest canonical mesh
        self.mesh_token = 0  # counts canonical meshes (and project changes)
        self.posed_frame: int | None = None  # frame of the posed mesh in the 3D view (None: canonical)
        self.shown_token = 0  # mesh_token of the mesh in the 3D view

    def reset(self) -> None:
        """Another project: no mesh yet."""
        self.w.mesh_view.clear()
        self.canonical, self.posed_frame = None, None
        self.mesh_token += 1

    def session_opened(self, step: int, resolution: int) -> None:
        """A session of the checkpoint of `step` is open: a newer canonical mesh if ours is older, else pose."""
        if self.canonical is None or self.canonical.step < step:
            self.w.session_worker.request("canonical", resolution)
        else:
            self.show_mesh()

    def set_canonical(self, mesh: MeshArrays) -> None:
        self.canonical = mesh
        self.mesh_token += 1
        self.show_mesh()

    def show_mesh(self) -> None:
        m, view, worker = self.canonical, self.w.mesh_view, self.w.session_worker
        if m is None:
            return
        if view.mode.currentText() == "canonical" or not worker.has_session:
            note = "" if view.mode.currentText() == "canonical" else " (posed after the first checkpoint)"
            view.set_mesh(m, f"canonical, step {m.step}{note}")
            self.posed_frame, self.shown_token = None, self.mesh_token
            return
        worker.request("pose", self.w.timeline.frame, self.mesh_token, m)

    def posed(self, frame: int, token: int, mesh: MeshArrays) -> None:
        view = self.w.mesh_view
        if token != self.mesh_token or view.mode.currentText() != "posed":
            return  # a newer mesh or another mode came meanwhile
        view.set_mesh(mesh, f"frame {frame}, step {mesh.step}")
        self.posed_frame, self.shown_token = frame, token

    def frame_changed(self, i: int) -> None:
        self.w.frames.show_frame(i)
        if self.canonical is not None and self.w.mesh_view.mode.currentText() == "posed":
            self.show_mesh()

    def render_frame(self, i: int) -> None:
        """Renders frame `i` with the latest checkpoint into the 2D panel."""
        if not self.w.session_worker.has_session:
            self.w.show_error("Render", "There is no fitted avatar to render yet: start refining first.")
            return
        self.w.frames.info.setText(f"rendering frame {i}…")
        self.w.session_worker.request("render", i)
