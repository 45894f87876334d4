"""A textured triangle mesh for pyqtgraph's 3D view (its `GLMeshItem` draws vertex colours only).

The texture is uploaded once (glTexImage2D, with a few mipmap levels) and drawn by a small GLSL program
of the same legacy dialect as pyqtgraph's own shaders, so that it runs wherever they do (Mesa's software
GL under Xvfb included). Vertices, normals, texture coordinates and faces live in buffer objects; a new
pose replaces only the vertices and normals.
"""

from __future__ import annotations

import numpy as np
from OpenGL import GL
from pyqtgraph.opengl import GLGraphicsItem, shaders
from PySide6.QtGui import QOpenGLContext
from PySide6.QtOpenGL import QOpenGLBuffer

TEXTURED = shaders.ShaderProgram("avatar_textured", [
    shaders.VertexShader("""
        uniform mat4 u_mvp;
        uniform mat3 u_normal;
        attribute vec4 a_position;
        attribute vec3 a_normal;
        attribute vec2 a_texcoord;
        varying vec2 v_texcoord;
        varying vec3 v_normal;
        void main() {
            v_normal = normalize(u_normal * a_normal);
            v_texcoord = a_texcoord;
            gl_Position = u_mvp * a_position;
        }
    """),
    shaders.FragmentShader("""
        #ifdef GL_ES
        precision mediump float;
        #endif
        uniform sampler2D u_texture;
        uniform float u_lit;
        varying vec2 v_texcoord;
        varying vec3 v_normal;
        void main() {
            vec3 albedo = texture2D(u_texture, v_texcoord).rgb;
            // The headlight of the vertex-coloured view (app/views/mesh3d.py), or none: the texture holds
            // the video's own light.
            float p = max(dot(normalize(v_normal), normalize(vec3(0.3, 0.4, 1.0))), 0.0);
            gl_FragColor = vec4(albedo * mix(1.0, 0.35 + 0.75 * p, u_lit), 1.0);
        }
    """),
])
# Mipmaps keep a 2048² texture from shimmering when the avatar is small on screen; only a few levels,
# as coarser ones would average the colours of neighbouring charts across their padding (seams).
MAX_MIP_LEVEL = 3


class TexturedMeshItem(GLGraphicsItem.GLGraphicsItem):
    """Draws vertices [V, 3] (view coordinates) with uvs [V, 2] (v up) and an RGB uint8 texture [S, S, 3]
    (row 0 at the top), lit by a headlight or not (`lit`)."""

    def __init__(self, parentItem=None) -> None:
        super().__init__()
        self.setGLOptions("opaque")
        buf = QOpenGLBuffer.Type
        self._vbo = {k: QOpenGLBuffer(buf.VertexBuffer) for k in ("position", "normal", "texcoord")}
        self._ibo = QOpenGLBuffer(buf.IndexBuffer)
        self._arrays: dict[str, np.ndarray] = {}
        self._dirty: set[str] = set()
        self._num_indices = 0
        self._image: np.ndarray | None = None
        self._image_dirty = False
        self._texture_id = None
        self.lit = True
        self.setParentItem(parentItem)

    # ---- data (GUI thread, any time) ----------------------------------------------------------
    def set_geometry(self, vertices: np.ndarray, normals: np.ndarray, faces: np.ndarray | None = None) -> None:
        """New vertex positions and normals [V, 3] (a new pose), and faces [F, 3] when they change."""
        self._set("position", vertices)
        self._set("normal", normals)
        if faces is not None:
            self._set("faces", np.asarray(faces, np.uint32))
            self._num_indices = int(np.asarray(faces).size)
        self.update()

    def set_uvs(self, uvs: np.ndarray) -> None:
        uv = np.asarray(uvs, np.float32)
        # OpenGL's first texture row is t = 0; the image's first row is its top, where v = 1.
        self._set("texcoord", np.stack([uv[:, 0], 1.0 - uv[:, 1]], 1))
        self.update()

    def set_texture(self, image: np.ndarray) -> None:
        """An RGB uint8 image [S, S, 3]; uploaded at the next paint."""
        self._image = np.ascontiguousarray(image, np.uint8)
        self._image_dirty = True
        self.update()

    @property
    def texture(self) -> np.ndarray | None:
        return self._image

    def _set(self, name: str, a: np.ndarray) -> None:
        self._arrays[name] = np.ascontiguousarray(a, np.uint32 if name == "faces" else np.float32)
        self._dirty.add(name)

    # ---- GL (in paint, with the view's context current) ---------------------------------------
    def _upload(self) -> None:
        for name in self._dirty:
            a = self._arrays[name]
            vbo = self._ibo if name == "faces" else self._vbo[name]
            if not vbo.isCreated():
                vbo.create()
            vbo.bind()
            vbo.allocate(a, a.nbytes)
            vbo.release()
        self._dirty.clear()
        if self._image_dirty and self._image is not None:
            if self._texture_id is None:
                self._texture_id = GL.glGenTextures(1)
            image = self._image
            limit = int(GL.glGetIntegerv(GL.GL_MAX_TEXTURE_SIZE))
            if max(image.shape[:2]) > limit:  # an old GPU: a coarser texture rather than none
                k = -(-max(image.shape[:2]) // limit)
                image = np.ascontiguousarray(image[::k, ::k])
            h, w = image.shape[:2]
            GL.glBindTexture(GL.GL_TEXTURE_2D, self._texture_id)
            GL.glPixelStorei(GL.GL_UNPACK_ALIGNMENT, 1)  # rows of 3·S bytes
            GL.glTexImage2D(GL.GL_TEXTURE_2D, 0, GL.GL_RGB8, w, h, 0, GL.GL_RGB, GL.GL_UNSIGNED_BYTE, image)
            GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MAX_LEVEL, MAX_MIP_LEVEL)
            GL.glGenerateMipmap(GL.GL_TEXTURE_2D)
            GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MIN_FILTER, GL.GL_LINEAR_MIPMAP_LINEAR)
            GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_MAG_FILTER, GL.GL_LINEAR)
            GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_WRAP_S, GL.GL_CLAMP_TO_EDGE)
            GL.glTexParameteri(GL.GL_TEXTURE_2D, GL.GL_TEXTURE_WRAP_T, GL.GL_CLAMP_TO_EDGE)
            GL.glBindTexture(GL.GL_TEXTURE_2D, 0)
            self._image_dirty = False

    def paint(self) -> None:
        needed = ("position", "normal", "texcoord", "faces")
        if self._image is None or any(k not in self._arrays for k in needed) or not self._num_indices:
            return
        self.setupGLState()
        self._upload()
        es2_compat = QOpenGLContext.currentContext().hasExtension(b"GL_ARB_ES2_compatibility")
        program = TEXTURED.program(es2_compat=es2_compat)
        enabled = []
        for name, size in (("position", 3), ("normal", 3), ("texcoord", 2)):
            loc = GL.glGetAttribLocation(program, f"a_{name}")
            if loc == -1:  # optimised away
                continue
            self._vbo[name].bind()
            GL.glVertexAttribPointer(loc, size, GL.GL_FLOAT, False, 0, None)
            self._vbo[name].release()
            GL.glEnableVertexAttribArray(loc)
            enabled.append(loc)
        GL.glActiveTexture(GL.GL_TEXTURE0)
        GL.glBindTexture(GL.GL_TEXTURE_2D, self._texture_id)
        mvp = np.array(self.mvpMatrix().data(), np.float32)
        normal = np.array(self.modelViewMatrix().normalMatrix().data(), np.float32)
        try:
            with TEXTURED:
                GL.glUniformMatrix4fv(GL.glGetUniformLocation(program, "u_mvp"), 1, False, mvp)
                GL.glUniformMatrix3fv(GL.glGetUniformLocation(program, "u_normal"), 1, False, normal)
                GL.glUniform1i(GL.glGetUniformLocation(program, "u_texture"), 0)
                GL.glUniform1f(GL.glGetUniformLocation(program, "u_lit"), 1.0 if self.lit else 0.0)
                self._ibo.bind()
                GL.glDrawElements(GL.GL_TRIANGLES, self._num_indices, GL.GL_UNSIGNED_INT, None)
                self._ibo.release()
        finally:
            for loc in enabled:
                GL.glDisableVertexAttribArray(loc)
            GL.glBindTexture(GL.GL_TEXTURE_2D, 0)
