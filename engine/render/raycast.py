"""Exact mesh rendering by ray casting, vertex-coloured or textured, and the one ray-casting interface.

Used for the synthetic ground truth and for scoring meshes as images, so both sides of a
comparison go through the same code. The renders here, the bake's depth maps and the preprocessing's
silhouettes and overlays all cast rays through `raycasting_scene`. Its backends are open3d's Embree
scene (CPU, when open3d imports) and the torch rasteriser of engine/render/raster.py (CPU or CUDA;
what runs where open3d is absent, as on GPU nodes). Both take only rays that leave one centre (a
pinhole camera's), which the torch backend relies on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from engine.geometry.camera import Camera, rays_through
from engine.geometry.texture_sampling import sample_texture
from engine.render.raster import TorchRaycaster

Backend = Literal["open3d", "torch"]
# Chosen by timing both on one CPU thread (renders and bake depth maps of a fitted avatar's mesh and
# of the body): Embree's BVH was faster in every case, so the CPU keeps it where open3d imports.
CPU_DEFAULT: Backend = "open3d"
CENTRE_TOLERANCE = 1e-5  # metres (relative above 1 m): origins farther apart are not one centre

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


@functools.cache
def open3d_available() -> bool:
    """Whether open3d imports (it takes 1.5 s, so only asked where it would then be used; an install
    that fails to load, say without its graphics libraries, counts as absent)."""
    try:
        import open3d  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def default_backend(device: str | torch.device = "cpu") -> Backend:
    """The backend `raycasting_scene` picks: torch on CUDA, else `CPU_DEFAULT` when open3d is there."""
    if torch.device(device).type != "cpu" or not open3d_available():
        return "torch"
    return CPU_DEFAULT


class RaycastScene:
    """One triangle mesh, cast against rays that all leave one centre (a pinhole camera's).

    `cast_rays(origins, dirs)`: origins [..., 3] (or one point [3]), dirs [..., 3] of any length (t_hit
    is in units of it), numpy or torch. Returns a dict of the same kind (torch tensors on the scene's
    device), with the leading shape of dirs:

    - t_hit [...] float32, inf on a miss;
    - primitive_ids [...] int64, the face index, -1 on a miss;
    - primitive_uvs [..., 2] float32, (u, v) with barycentrics (1-u-v, u, v) over the face's vertices
      (open3d's convention), 0 on a miss;
    - primitive_normals [..., 3] float32, the unit normal (v1-v0)×(v2-v0), 0 on a miss.

    Origins that are not all the same point (within CENTRE_TOLERANCE) raise ValueError. Hits nearer to
    the centre than engine/render/raster.py's NEAR are not reported by the torch backend.
    """

    backend: Backend
    device: torch.device

    def cast_rays(self, origins, dirs) -> dict:
        """The first hits of rays origins + t·dirs (see the class docstring)."""
        as_numpy = isinstance(dirs, np.ndarray)
        d = torch.as_tensor(np.asarray(dirs, np.float32) if as_numpy else dirs)
        o = torch.as_tensor(np.asarray(origins, np.float64) if isinstance(origins, np.ndarray) else origins)
        if d.shape[-1] != 3 or o.shape[-1] != 3:
            raise ValueError(f"origins and dirs must be [..., 3] (got {tuple(o.shape)} and {tuple(d.shape)})")
        lead = d.shape[:-1]
        out = self._cast(single_centre(o.reshape(-1, 3)), d.reshape(-1, 3))
        out = {k: v.reshape(*lead, *v.shape[1:]) for k, v in out.items()}
        return {k: v.cpu().numpy() for k, v in out.items()} if as_numpy else out

    def _cast(self, centre: torch.Tensor, dirs: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def single_centre(origins: torch.Tensor) -> torch.Tensor:
    """The one centre [3] (float64) of rays whose origins [N, 3] must coincide; ValueError if they do not."""
    if origins.shape[0] == 0:
        return torch.zeros(3, dtype=torch.float64)
    first = origins[0].to(torch.float64)
    if origins.shape[0] > 1:
        spread = float((origins.to(torch.float64) - first).abs().max())
        if spread > CENTRE_TOLERANCE * max(1.0, float(first.abs().max())):
            raise ValueError(
                f"ray casting takes rays from one centre (a pinhole camera's); these origins are up to {spread:.3g} apart"
            )
    return first


class _TorchScene(RaycastScene):
    """The torch rasteriser (engine/render/raster.py), on the CPU or CUDA."""

    backend: Backend = "torch"

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor) -> None:
        self._caster = TorchRaycaster(vertices, faces)
        self.device = self._caster.device

    def _cast(self, centre: torch.Tensor, dirs: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._caster.cast(centre, dirs)


class _Open3dScene(RaycastScene):
    """open3d's Embree scene (CPU); its ids become int64 with -1 on a miss, like the torch backend's."""

    backend: Backend = "open3d"

    def __init__(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        import open3d as o3d  # costly import (1.5 s), and absent on GPU nodes: only here

        self._o3d = o3d
        self._scene = o3d.t.geometry.RaycastingScene()
        self._scene.add_triangles(
            o3d.core.Tensor(np.ascontiguousarray(vertices, dtype=np.float32)),
            o3d.core.Tensor(np.ascontiguousarray(faces, dtype=np.uint32)),
        )
        self.device = torch.device("cpu")

    def _cast(self, centre: torch.Tensor, dirs: torch.Tensor) -> dict[str, torch.Tensor]:
        d = dirs.detach().cpu().numpy().astype(np.float32)
        rays = np.concatenate([np.broadcast_to(centre.cpu().numpy().astype(np.float32), d.shape), d], 1)
        ans = self._scene.cast_rays(self._o3d.core.Tensor(np.ascontiguousarray(rays)))
        ok = np.isfinite(ans["t_hit"].numpy())
        ids = np.where(ok, ans["primitive_ids"].numpy().astype(np.int64), -1)
        return {
            "t_hit": torch.from_numpy(ans["t_hit"].numpy()),
            "primitive_ids": torch.from_numpy(ids),
            "primitive_uvs": torch.from_numpy(ans["primitive_uvs"].numpy()),
            "primitive_normals": torch.from_numpy(ans["primitive_normals"].numpy()),
        }


def raycasting_scene(vertices, faces, device: str | torch.device | None = None,
                     backend: Backend | None = None) -> RaycastScene:
    """A ray-casting scene over one triangle mesh (see `RaycastScene`).

    Args:
        vertices: [V, 3] (numpy or torch); faces: [F, 3] integer.
        device: where the torch backend works (default: the vertices' device if a tensor, else the CPU).
        backend: "open3d" (CPU only) or "torch"; None picks `default_backend(device)`.
    """
    if device is None:
        device = vertices.device if isinstance(vertices, torch.Tensor) else "cpu"
    device = torch.device(device)
    backend = backend or default_backend(device)
    if backend == "open3d":
        if device.type != "cpu":
            raise ValueError(f"the open3d ray caster runs on the CPU only (asked for {device})")
        v = vertices.detach().cpu().numpy() if isinstance(vertices, torch.Tensor) else vertices
        f = faces.detach().cpu().numpy() if isinstance(faces, torch.Tensor) else faces
        return _Open3dScene(np.asarray(v), np.asarray(f))
    if backend != "torch":
        raise ValueError(f"unknown ray-casting backend {backend!r} (open3d or torch)")
    if not isinstance(faces, torch.Tensor):
        faces = np.asarray(faces, np.int64)
    return _TorchScene(torch.as_tensor(vertices, device=device), torch.as_tensor(faces, device=device))


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
    device: str | torch.device | None = None,
    backend: Backend | None = None,
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
        device, backend: where and how the rays are cast (`raycasting_scene`); the result is on the CPU.
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
    scene = raycasting_scene(vertices, faces, device=device, backend=backend)
    _, dirs = camera.rays()
    hit = scene.cast_rays(camera.center, dirs.reshape(-1, 3))  # flat rays: the texture lookup is per ray
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
            _, d = rays_through(camera, np.stack([u + ox, v + oy], axis=-1))
            h = scene.cast_rays(camera.center, d.reshape(-1, 3))
            col, k, _ = colour_at(h)
            acc += np.where(k.reshape(H, W)[..., None], col.reshape(H, W, 3), bg)
    rgb = (acc / (s * s)).astype(np.float32)
    return MeshRender(rgb=rgb, mask=ok, depth=depth, normals=normals)
