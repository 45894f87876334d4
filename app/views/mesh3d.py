"""The 3D panel: the latest avatar mesh (canonical or posed at the current frame) in an OpenGL view.

A mesh with a texture (the baked one, `app.session_worker.TexturedArrays`) is drawn by
`app/views/textured_item.py` (lit by the headlight, or unlit with "flat colours": the texture holds the
video's light); the "Texture" button, shown while a bake of the current checkpoint exists, chooses it.
Meshes arrive Y-up (the engine's convention); pyqtgraph's view is Z-up, so they are shown rotated
(x, y, z) → (x, -z, y), which keeps the person upright and facing the default camera.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph.opengl as gl
from pyqtgraph.opengl import shaders
from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from app.views.elided import ElidedLabel
from app.views.textured_item import TexturedMeshItem

# pyqtgraph's "shaded" program lights from behind the viewer's back (light (1, -1, -1) in eye space),
# which leaves a front-facing person dark; this one is a headlight slightly above and to the right.
HEADLIGHT = shaders.ShaderProgram("avatar_headlight", [
    shaders.VertexShader("""
        uniform mat4 u_mvp;
        uniform mat3 u_normal;
        attribute vec4 a_position;
        attribute vec3 a_normal;
        attribute vec4 a_color;
        varying vec4 v_color;
        varying vec3 v_normal;
        void main() {
            v_normal = normalize(u_normal * a_normal);
            v_color = a_color;
            gl_Position = u_mvp * a_position;
        }
    """),
    shaders.FragmentShader("""
        #ifdef GL_ES
        precision mediump float;
        #endif
        varying vec4 v_color;
        varying vec3 v_normal;
        void main() {
            float p = max(dot(normalize(v_normal), normalize(vec3(0.3, 0.4, 1.0))), 0.0);
            gl_FragColor = vec4(v_color.rgb * (0.35 + 0.75 * p), v_color.a);
        }
    """),
])
SHADINGS = {"colours": HEADLIGHT, "normals": "normalColor", "flat colours": None}
FILL = 0.85  # a framed mesh spans this share of the view's height (or less, when its width would not fit)
FILL_WIDTH = 0.95  # ... and at most this share of the view's width
ELEVATION, AZIMUTH = 8.0, -90.0  # the framed camera: slightly above, in front of the person


def to_view(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1)


class MeshView(QWidget):
    """GLViewWidget + GLMeshItem with mode (canonical/posed), shading, reset view and turntable."""

    mode_changed = Signal(str)
    texture_toggled = Signal(bool)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.mode = QComboBox()
        self.mode.addItems(["posed", "canonical"])
        self.mode.setToolTip("Canonical (star) pose, or posed into the current frame")
        self.shading = QComboBox()
        self.shading.addItems(list(SHADINGS))
        self.shading.setToolTip("Colours (of the colour field, or the baked texture) lit by a headlight, normals as "
                                "colours, or unlit colours")
        self.texture_button = QPushButton("Texture")
        self.texture_button.setCheckable(True)
        self.texture_button.setChecked(True)
        self.texture_button.setToolTip("Show the baked texture (File ▸ Bake texture…); offered while the bake is of "
                                       "the current checkpoint")
        self.texture_button.setVisible(False)
        self.texture_available = False
        self.reset_button = QPushButton("Reset view")
        self.turn_button = QPushButton("Turntable")
        self.turn_button.setCheckable(True)
        self.turn_button.setToolTip("Rotate the view around the avatar")
        self.info = ElidedLabel("no mesh yet")  # never widens the window
        for w in (self.mode, self.shading, self.texture_button, self.reset_button, self.turn_button):
            row.addWidget(w)
        row.addWidget(self.info, 1)
        lay.addLayout(row)
        self.view = gl.GLViewWidget()
        self.view.setBackgroundColor((40, 40, 46))
        self.view.setToolTip("Drag: orbit · wheel: zoom · middle-drag or Ctrl+drag: pan")
        self.view.setMinimumSize(200, 200)
        lay.addWidget(self.view, 1)
        grid = gl.GLGridItem()
        grid.setSize(4, 4)
        grid.setSpacing(0.25, 0.25)
        grid.setColor((255, 255, 255, 40))
        self.grid = grid
        self.view.addItem(grid)
        self.item: gl.GLMeshItem | TexturedMeshItem | None = None  # what the view draws
        self.textured_item = TexturedMeshItem()  # kept: its texture is uploaded once per bake
        self._bake = None  # the texture array the textured item holds
        self.mesh = None  # what is shown (MeshArrays, in engine coordinates)
        self._center = np.zeros(3)  # of the framed mesh, in view coordinates
        self._framed = False
        self.turn_timer = QTimer(self)
        self.turn_timer.setInterval(33)
        self.turn_timer.timeout.connect(lambda: self.view.orbit(2.0, 0))
        self.turn_button.toggled.connect(lambda on: (self.turn_timer.start if on else self.turn_timer.stop)())
        self.reset_button.clicked.connect(self.reset_view)
        self.shading.currentTextChanged.connect(lambda _: self._redraw())
        self.mode.currentTextChanged.connect(self.mode_changed)
        self.texture_button.toggled.connect(self.texture_toggled)
        self.reset_view()

    @property
    def num_faces(self) -> int:
        return 0 if self.mesh is None else len(self.mesh.faces)

    @property
    def textured_shown(self) -> bool:
        """Whether the view draws the textured mesh."""
        return self.item is self.textured_item

    @property
    def texture_wanted(self) -> bool:
        """A bake is offered and the user wants it shown."""
        return self.texture_available and self.texture_button.isChecked()

    def set_texture_available(self, on: bool) -> None:
        self.texture_available = on
        self.texture_button.setVisible(on)

    def set_mesh(self, mesh, label: str = "") -> None:
        """Shows a mesh (anything with vertices [V, 3], faces [F, 3], colors [V, 3] or None; with uvs,
        normals and texture when it is textured, as `TexturedArrays`)."""
        self.mesh = mesh
        if not self._framed and len(mesh.vertices):
            # Frame the first mesh; later ones (a new step, another frame) keep the user's camera.
            self._framed = True
            self.reset_view()
        self._redraw()
        self.info.setText(f"{label}  {len(mesh.faces):,} triangles".strip())

    def clear(self) -> None:
        if self.item is not None:
            self.view.removeItem(self.item)
        self.item, self.mesh, self._framed = None, None, False
        self.info.setText("no mesh yet")

    def _show_item(self, item) -> None:
        if self.item is not item:
            if self.item is not None:
                self.view.removeItem(self.item)
            self.view.addItem(item)
            self.item = item

    def _redraw(self) -> None:
        if self.mesh is None:
            return
        m = self.mesh
        shading = self.shading.currentText()
        if getattr(m, "texture", None) is not None and shading != "normals":
            t = self.textured_item
            if self._bake is not m.texture:  # a new bake: upload its texture and uvs once
                self._bake = m.texture
                t.set_texture(m.texture)
                t.set_uvs(m.uvs)
                t.set_geometry(to_view(m.vertices), to_view(m.normals), m.faces)
            else:  # another pose of the same bake
                t.set_geometry(to_view(m.vertices), to_view(m.normals))
            t.lit = shading != "flat colours"
            self._show_item(t)
            self._place_grid(to_view(m.vertices))
            return
        shader = SHADINGS[shading]
        colors = m.colors if m.colors is not None else np.full((len(m.vertices), 3), 0.8, np.float32)
        rgba = np.concatenate([np.asarray(colors, np.float32), np.ones((len(colors), 1), np.float32)], axis=1)
        md = gl.MeshData(vertexes=to_view(m.vertices), faces=np.asarray(m.faces, np.int32), vertexColors=rgba)
        if self.item is not None:
            self.view.removeItem(self.item)
            self.item = None
        self._show_item(gl.GLMeshItem(meshdata=md, smooth=True, shader=shader, glOptions="opaque"))
        self._place_grid(to_view(m.vertices))

    def reset_view(self) -> None:
        """Frames the shown mesh: its bounding box's centre in the middle, the mesh filling `FILL` of the
        view's height (from the camera's field of view), seen from `ELEVATION` and `AZIMUTH`."""
        from pyqtgraph import Vector

        v = to_view(self.mesh.vertices) if self.mesh is not None else np.zeros((0, 3), np.float32)
        if len(v):
            self._center = 0.5 * (v.min(0) + v.max(0))
        distance = self._framing_distance(v) if len(v) else 4.0
        self.view.setCameraPosition(pos=Vector(*self._center), distance=distance, elevation=ELEVATION,
                                    azimuth=AZIMUTH)
        if self.mesh is not None:
            self._place_grid(v)

    def _framing_distance(self, v: np.ndarray) -> float:
        """The camera distance at which the vertices `v` (view coordinates) just fit in `FILL` of the view's
        height and `FILL_WIDTH` of its width, seen from the framed direction."""
        from pyqtgraph import Vector

        view = self.view
        view.setCameraPosition(pos=Vector(*self._center), distance=0.0, elevation=ELEVATION, azimuth=AZIMUTH)
        m = np.array(view.viewMatrix().copyDataTo(), np.float64).reshape(4, 4)  # eye coordinates at distance 0
        q = v.astype(np.float64) @ m[:3, :3].T + m[:3, 3]  # x right, y up, z towards the camera
        tan_x = np.tan(np.radians(view.opts["fov"]) / 2)  # pyqtgraph's field of view is horizontal
        tan_y = tan_x * max(view.height(), 1) / max(view.width(), 1)
        # At distance d a point lies d - z in front of the camera and shows at y / ((d - z)·tan_y) of the
        # half-height: it fits within FILL when d ≥ z + |y| / (FILL·tan_y); likewise across.
        d = max(np.max(q[:, 2] + np.abs(q[:, 1]) / (FILL * tan_y)),
                np.max(q[:, 2] + np.abs(q[:, 0]) / (FILL_WIDTH * tan_x)))
        return float(max(d, np.max(q[:, 2]) + 1e-3, 1e-3))

    def _place_grid(self, v: np.ndarray) -> None:
        """The floor grid under the framed mesh's feet."""
        self.grid.resetTransform()
        self.grid.translate(self._center[0], self._center[1], float(v[:, 2].min()))

    def grab_array(self, width: int = 640, height: int = 640) -> np.ndarray:
        """The view rendered offscreen at this size: [H, W, 3] uint8 (same camera as on screen)."""
        a = self.view.renderToArray((width, height))  # [H, W, 4] BGRA, top row first
        return np.ascontiguousarray(a[..., [2, 1, 0]])
