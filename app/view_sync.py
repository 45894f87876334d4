"""Keeps the 2D and 3D panels in step with the timeline and the session worker.

The 3D panel shows the newest canonical mesh, or that mesh posed at the timeline's frame (posing is a
session worker request, answered with the token of the mesh it was asked for: an answer for an older mesh
is dropped). When the project holds a texture baked from the session's checkpoint (the worker loads it),
the panel offers it instead ("Texture"), canonical or posed the same way; a live mesh of a newer step
makes the bake stale and it is no longer offered. The 2D panel shows the timeline's frame, renders it on
demand, and shows the textured mesh's render of it beside the input.
"""

from __future__ import annotations

from PySide6.QtCore import QObject

from app.session_worker import MeshArrays, TexturedArrays


class ViewSync(QObject):
    """The mesh shown in the 3D panel and the frame in both panels; `window` gives the panels and the worker."""

    def __init__(self, window) -> None:
        super().__init__(window)
        self.w = window
        self.canonical: MeshArrays | None = None  # the newest canonical mesh
        self.textured: TexturedArrays | None = None  # the bake of the session's checkpoint (canonical)
        self.mesh_token = 0  # counts meshes (canonical ones and bakes) and project changes
        self.posed_frame: int | None = None  # frame of the posed mesh in the 3D view (None: canonical)
        self.shown_token = 0  # mesh_token of the mesh in the 3D view

    def reset(self) -> None:
        """Another project: no mesh yet."""
        self.w.mesh_view.clear()
        self.canonical, self.posed_frame = None, None
        self.set_textured(None)

    def session_opened(self, step: int, resolution: int) -> None:
        """A session of the checkpoint of `step` is open: a newer canonical mesh if ours is older, else pose."""
        if self.canonical is None or self.canonical.step < step:
            self.w.session_worker.request("canonical", resolution)
        else:
            self.show_mesh()

    def set_canonical(self, mesh: MeshArrays) -> None:
        self.canonical = mesh
        self.mesh_token += 1
        if self.textured is not None and mesh.step > self.textured.step:
            self.set_textured(None)  # training moved on: the bake shows an older avatar
        self.show_mesh()

    def set_textured(self, mesh: TexturedArrays | None) -> None:
        """The worker's bake of its checkpoint (None: there is none)."""
        self.textured = mesh
        self.mesh_token += 1
        self.w.mesh_view.set_texture_available(mesh is not None)
        self.w.frames.set_textured(mesh is not None)
        self.show_mesh()

    def show_mesh(self) -> None:
        view, worker = self.w.mesh_view, self.w.session_worker
        posed = view.mode.currentText() == "posed"
        t = self.textured if view.texture_wanted else None
        m = t if t is not None else self.canonical
        if m is None:
            return
        if not posed or not worker.has_session:
            note = "" if not posed else " (posed after the first checkpoint)"
            view.set_mesh(m, f"canonical, {self._what(m)}{note}")
            self.posed_frame, self.shown_token = None, self.mesh_token
            return
        if t is not None:
            worker.request("pose_textured", self.w.timeline.frame, self.mesh_token)
        else:
            worker.request("pose", self.w.timeline.frame, self.mesh_token, m)

    @staticmethod
    def _what(m) -> str:
        tex = getattr(m, "texture", None)
        return f"step {m.step}" + ("" if tex is None else f", texture {len(tex)}²")

    def posed(self, frame: int, token: int, mesh) -> None:
        """A posed mesh from the worker (`MeshArrays`, or `TexturedArrays` of the bake)."""
        view = self.w.mesh_view
        if token != self.mesh_token or view.mode.currentText() != "posed":
            return  # a newer mesh or another mode came meanwhile
        if isinstance(mesh, TexturedArrays) != (self.textured is not None and view.texture_wanted):
            return  # the texture was switched meanwhile
        view.set_mesh(mesh, f"frame {frame}, {self._what(mesh)}")
        self.posed_frame, self.shown_token = frame, token

    def frame_changed(self, i: int) -> None:
        self.w.frames.show_frame(i)
        if self.w.mesh_view.mode.currentText() == "posed" and (self.canonical is not None or self.textured is not None):
            self.show_mesh()

    def render_frame(self, i: int) -> None:
        """Renders frame `i` with the latest checkpoint into the 2D panel."""
        if not self.w.session_worker.has_session:
            self.w.show_error("Render", "There is no fitted avatar to render yet: start refining first.")
            return
        self.w.frames.info.setText(f"rendering frame {i}…")
        self.w.session_worker.request("render", i)

    def render_textured(self, i: int) -> None:
        """The textured mesh's render of frame `i` (the 2D panel asks when its tile shows a frame)."""
        if self.textured is not None and self.w.session_worker.has_session:
            self.w.session_worker.request("render_textured", i)
