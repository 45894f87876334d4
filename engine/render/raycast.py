"""Exact mesh rendering by ray casting (open3d / Embree on CPU), vertex-coloured or textured.

Used for the synthetic ground truth and for scoring meshes as images, so both sides of a
comparison go through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from engine.geometry.camera import Camera, rays_through
from engine.geometry.texture_sampling import sample_texture

# A fixed soft light from above the camera: enough shading to read the shape, little enough
# that the colours stay close to the albedo (the avatar's colour field has to explain them).
LIGHT_DIR = np.array([0.3, 0.6, 0.75]) / np.linalg.norm([0.3, 0.6, 0.75])  # towards the light
AMBIENT = 0.7
DIFFUSE = 0.3


@dataclass
class MeshRender:
    rgb: np.ndarray  # [H, W, 3] float32 in [0, 1] (composited over the background)
    mask: np.ndarray  # [H, W] bool, pixel-centre coverage
    depth: np.ndarray  # [H, W] float32 camera z (inf where empty)
    normals: np.ndarray  # [H, W, 3] float32 world normals (0 where empty)


def shade(albedo: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Ambient + Lambert shading of albedo [..., 3] with unit normals [..., 3]."""
    lambert = np.clip(normals @ LIGHT_DIR, 0.0, 1.0)[..., None]
    return np.clip(albedo * (AMBIENT + DIFFUSE * lambert), 0.0, 1.0)


def raycasting_scene(vertices: np.ndarray, faces: np.ndarray) -> o3d.t.geometry.RaycastingScene:
    """An Embree scene over one triangle mesh."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(np.ascontiguousarray(vertices, dtype=np.float32)),
        o3d.core.Tensor(np.ascontiguousarray(faces, dtype=np.uint32)),
    )
    return scene


def _cast(scene: o3d.t.geometry.RaycastingScene, origins: np.ndarray, dirs: np.ndarray) -> dict:
    rays = np.concatenate([origins, dirs], axis=-1).reshape(-1, 6).astype(np.float32)
    ans = scene.cast_rays(o3d.core.Tensor(rays))
    return {k: v.numpy() for k, v in ans.items()}


def render_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    vertex_colors: np.ndarray | None,
    camera: Camera,
    background: np.ndarray | None = None,
    supersample: int = 2,
    shaded: bool = True,
    uvs: np.ndarray | None = None,
    texture: np.ndarray | None = None,
) -> MeshRender:
    """Renders a vertex-coloured or textured mesh.

    Args:
        vertices: [V, 3] world; faces: [F, 3]; vertex_colors: [V, 3] albedo in [0, 1] (may be None
            when a texture is given).
        camera: pinhole camera.
        background: [H, W, 3] image behind the mesh (black if None).
        supersample: s×s rays per pixel for the colour (anti-aliased edges); the mask, depth and
            normals use the pixel centre only, so the mask is the exact projection of the mesh.
        shaded: apply the fixed light (else flat albedo).
        uvs: [V, 2] texture coordinates (v up), with `texture`.
        texture: [S, S, 3] albedo in [0, 1], row 0 at the top (`engine/mesh/textured.py`): the albedo
            at a hit is its bilinear sample at the interpolated UV, instead of the vertex colours.
    """
    H, W = camera.height, camera.width
    bg = np.zeros((H, W, 3), np.float32) if background is None else background.astype(np.float32)
    faces = np.asarray(faces)
    textured = texture is not None
    if textured and (uvs is None or len(uvs) != len(vertices)):
        raise ValueError("a texture needs uvs [V, 2], one per vertex")
    if not textured and vertex_colors is None:
        raise ValueError("give vertex_colors, or uvs and a texture")
    if textured:
        uvs, texture = np.asarray(uvs, np.float32), np.asarray(texture, np.float32)

    def colour_at(hit: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        prim = hit["primitive_ids"].astype(np.int64)
        ok = np.isfinite(hit["t_hit"])
        prim = np.where(ok, prim, 0)
        uv = hit["primitive_uvs"]
        bary = np.stack([1.0 - uv[..., 0] - uv[..., 1], uv[..., 0], uv[..., 1]], axis=-1)
        tri = faces[prim]  # [R, 3]
        if textured:
            albedo = sample_texture(texture, (uvs[tri] * bary[..., None]).sum(axis=-2))
        else:
            albedo = (vertex_colors[tri] * bary[..., None]).sum(axis=-2)
        n = hit["primitive_normals"]
        col = shade(albedo, n) if shaded else albedo
        return col, ok, n

    # Pixel-centre pass: mask, depth, normals.
    scene = raycasting_scene(vertices, faces)
    origins, dirs = camera.rays()
    hit = _cast(scene, origins, dirs)
    _, ok, n = colour_at(hit)
    ok = ok.reshape(H, W)
    z_along = (dirs @ camera.R[2]).reshape(H, W)  # ray t → camera depth
    depth = np.where(ok, hit["t_hit"].reshape(H, W) * z_along, np.inf).astype(np.float32)
    normals = np.where(ok[..., None], n.reshape(H, W, 3), 0.0).astype(np.float32)

    # Supersampled colour pass.
    s = max(1, int(supersample))
    offs = (np.arange(s) + 0.5) / s
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    acc = np.zeros((H, W, 3), np.float64)
    for oy in offs:
        for ox in offs:
            o, d = rays_through(camera, np.stack([u + ox, v + oy], axis=-1))
            h = _cast(scene, o, d)
            col, k, _ = colour_at(h)
            acc += np.where(k.reshape(H, W)[..., None], col.reshape(H, W, 3), bg)
    rgb = (acc / (s * s)).astype(np.float32)
    return MeshRender(rgb=rgb, mask=ok, depth=depth, normals=normals)
