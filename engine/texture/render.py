"""The textured mesh posed into a frame, and its picture through that frame's camera."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from engine.mesh import Mesh, vertex_normals
from engine.mesh.textured import TexturedMesh
from engine.refine.session import Session
from engine.render.raycast import MeshRender, render_mesh


def posed_textured(session: Session, tm: TexturedMesh, i: int, weights: torch.Tensor | None = None) -> TexturedMesh:
    """`tm` (canonical) posed into frame i with the refined body: the same posing as `export --frame`
    (`weights`: `session.mesh_weights` of its vertices, when posing it into many frames)."""
    posed = session.posed_mesh(Mesh(tm.vertices, tm.faces), i, weights).vertices
    return replace(tm, vertices=posed, normals=vertex_normals(posed, tm.faces))


def render_textured(session: Session, tm: TexturedMesh, i: int, weights: torch.Tensor | None = None,
                    supersample: int = 2) -> MeshRender:
    """Frame i of the textured mesh over the avatar's background plate, unlit: the texture already
    holds the light of the video."""
    posed = posed_textured(session, tm, i, weights)
    background = torch.sigmoid(session.avatar.background.detach()).cpu().numpy().astype(np.float32)
    return render_mesh(posed.vertices, posed.faces, None, session.cameras[i], background,
                       supersample=supersample, shaded=False, uvs=posed.uvs, texture=posed.texture)
