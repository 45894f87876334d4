"""The one ray-casting interface (engine/render/raycast.py): the torch rasteriser against Embree (its
twin where open3d is installed) and against the all-pairs reference, near-plane clipping, chunking,
the checks on the rays, and rendering where open3d cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import engine.render.raster as raster
from engine.body import BodyParams, create_body_model
from engine.geometry.camera import Camera, look_at
from engine.render.raster import TorchRaycaster, cast_rays_brute
from engine.render.raycast import (
    CPU_DEFAULT,
    default_backend,
    open3d_available,
    raycasting_scene,
    render_mesh,
)

needs_open3d = pytest.mark.skipif(not open3d_available(), reason="open3d is not installed")


def _camera(eye, size=(160, 120), target=(0.0, 0.0, 0.0), focal=1.3) -> Camera:
    R, t = look_at(np.asarray(eye, float), np.asarray(target, float))
    w, h = size
    K = np.array([[focal * w, 0, w / 2], [0, focal * w, h / 2], [0, 0, 1.0]])
    return Camera(K, R, t, w, h)


@pytest.fixture(scope="module")
def body_mesh() -> tuple[np.ndarray, np.ndarray]:
    """The body model posed with a seeded random pose (limbs cross in front of the trunk)."""
    body = create_body_model()
    gen = torch.Generator().manual_seed(3)
    pose = 0.35 * torch.randn(1, body.num_bones, 3, generator=gen)
    params = BodyParams(body.default_shape(), pose, torch.zeros(1, 3), torch.zeros(1, 3))
    with torch.no_grad():
        v = body.posed_vertices(params)[0].numpy().astype(np.float64)
    return v, np.asarray(body.faces)


def _room(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A triangle soup: the walls of a 4 m box around the origin (a camera inside sees its side walls
    cross the camera plane) and small triangles in front of the origin."""
    rng = np.random.default_rng(seed)
    corners = np.array([[x, y, z] for x in (-2, 2) for y in (-2, 2) for z in (-2, 2)], float)
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    walls = np.array([corners[[q[0], q[1], q[2]]] for q in quads] + [corners[[q[0], q[2], q[3]]] for q in quads])
    small = rng.uniform(-1, 1, (300, 1, 3)) + np.array([0, 0, 1.0]) + rng.normal(0, 0.08, (300, 3, 3))
    v = np.concatenate([walls, small]).reshape(-1, 3)
    return v, np.arange(len(v)).reshape(-1, 3)


def _compare(a: dict, b: dict, v: np.ndarray, f: np.ndarray, max_mask_diff: float = 1e-3,
             min_same_id: float = 0.99) -> None:
    """Two casts of the same rays agree (masks, depth, ids; where the ids agree, normals and the surface
    points the uvs name). The points are compared in metres, not the uvs: at a grazing ray a float32
    depth difference of a micrometre moves the barycentric coordinates of a 2 mm triangle by 1e-3."""
    ha, hb = np.isfinite(a["t_hit"]), np.isfinite(b["t_hit"])
    assert ha.any()
    assert (ha != hb).sum() <= max(1, max_mask_diff * ha.sum()), (ha != hb).sum()
    both = ha & hb
    assert np.abs(a["t_hit"][both] - b["t_hit"][both]).max() < 1e-4
    same = both & (a["primitive_ids"] == b["primitive_ids"])
    assert same.sum() >= min_same_id * both.sum()
    tri = v[f[a["primitive_ids"][same]]]

    def points(r: dict) -> np.ndarray:
        u, w = r["primitive_uvs"][same].T[..., None]
        return (1 - u - w) * tri[:, 0] + u * tri[:, 1] + w * tri[:, 2]

    assert np.linalg.norm(points(a) - points(b), axis=-1).max() < 1e-4
    assert np.abs(a["primitive_normals"][same] - b["primitive_normals"][same]).max() < 1e-3
    for r in (a, b):
        assert (r["primitive_ids"][~np.isfinite(r["t_hit"])] == -1).all()


@needs_open3d
def test_torch_matches_embree_on_the_body(body_mesh):
    v, f = body_mesh
    for eye in [(0.3, 0.2, 2.5), (-1.5, 0.8, -1.2)]:
        cam = _camera(eye, (200, 150))
        _, dirs = cam.rays()
        hits = [raycasting_scene(v, f, backend=b).cast_rays(cam.center, dirs) for b in ("open3d", "torch")]
        assert hits[0]["t_hit"].shape == (150, 200) and hits[1]["primitive_uvs"].shape == (150, 200, 2)
        _compare(*hits, v, f)


@needs_open3d
def test_render_mesh_is_the_same_with_either_backend(body_mesh):
    v, f = body_mesh
    colors = np.random.default_rng(0).uniform(0, 1, (len(v), 3))
    cam = _camera((0.5, -0.3, 2.2), (128, 96))
    r = [render_mesh(v, f, colors, cam, backend=b) for b in ("open3d", "torch")]
    assert (r[0].mask != r[1].mask).sum() <= 2
    both = r[0].mask & r[1].mask
    assert np.abs(r[0].depth[both] - r[1].depth[both]).max() < 1e-4
    assert np.abs(r[0].rgb - r[1].rgb).mean() < 1e-3
    assert np.abs(r[0].normals[both] - r[1].normals[both]).max(-1).mean() < 1e-3


@needs_open3d
def test_torch_matches_embree_with_triangles_behind_and_across_the_camera():
    v, f = _room()
    cam = _camera((0.0, 0.0, 0.0), (120, 90), target=(0.2, 0.1, 1.0), focal=0.6)  # wide angle
    _, dirs = cam.rays()
    hits = [raycasting_scene(v, f, backend=b).cast_rays(cam.center, dirs) for b in ("open3d", "torch")]
    _compare(*hits, v, f)


def test_rasteriser_matches_all_pairs_reference():
    """Same arithmetic, so the same answers exactly, with tiny chunks forcing every chunk boundary."""
    v, f = _room(1)
    cam = _camera((0.1, -0.2, 0.05), (48, 40), target=(-0.3, 0.2, 1.0), focal=0.8)
    _, dirs = cam.rays()
    centre = torch.as_tensor(cam.center)
    d = torch.as_tensor(dirs.reshape(-1, 3), dtype=torch.float32)
    ref = cast_rays_brute(torch.as_tensor(v), torch.as_tensor(f), centre, d)
    caster = TorchRaycaster(torch.as_tensor(v), torch.as_tensor(f))
    full = caster.cast(centre, d)
    small = dict(raster.PAIR_CHUNK, cpu=97)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(raster, "PAIR_CHUNK", small)
        mp.setattr(raster, "ROW_CHUNK", 13)
        chunked = caster.cast(centre, d)
    assert torch.isfinite(ref["t_hit"]).float().mean() > 0.5
    for k in ref:
        assert torch.equal(ref[k], full[k]), k
        assert torch.equal(ref[k], chunked[k]), k


def test_near_plane_and_single_triangle_answers():
    """A triangle through the camera plane is seen over its part in front; one behind is not."""
    across = np.array([[-1.0, -1.0, -1.0], [1.0, -1.0, 3.0], [0.0, 1.0, 1.0]])  # crosses z = 0
    behind = np.array([[-1.0, -1.0, -2.0], [1.0, -1.0, -2.0], [0.0, 1.0, -2.0]])
    v = np.concatenate([across, behind])
    f = np.array([[0, 1, 2], [3, 4, 5]])
    scene = raycasting_scene(v, f, backend="torch")
    dirs = np.array([[0.0, 0.0, 1.0], [0.2, 0.0, 1.0], [0.0, 0.0, 2.0], [0.7, 0.0, 1.0]])  # the last: plane behind
    hit = scene.cast_rays(np.zeros(3), dirs)
    # Exact answers from the plane of `across` (t is in units of each direction's length).
    n = np.cross(across[1] - across[0], across[2] - across[0])
    t_true = (across[0] @ n) / (dirs @ n)
    p = t_true[:, None] * dirs
    assert np.allclose(hit["t_hit"][:3], t_true[:3], rtol=1e-6)
    assert (hit["primitive_ids"][:3] == 0).all() and hit["primitive_ids"][3] == -1
    bary = np.linalg.lstsq(np.stack([across[1] - across[0], across[2] - across[0]], 1), (p[0] - across[0]),
                           rcond=None)[0]
    assert np.allclose(hit["primitive_uvs"][0], bary, atol=1e-6)
    assert np.allclose(hit["primitive_normals"][0], n / np.linalg.norm(n), atol=1e-6)
    # Through the centroid of an equilateral triangle all three edge functions are equal: still a hit.
    tri = np.array([[1.0, 0.0, 1.0], [-0.5, 0.866, 1.0], [-0.5, -0.866, 1.0]])
    hit = raycasting_scene(tri, np.array([[0, 1, 2]]), backend="torch").cast_rays(np.zeros(3), np.array([[0.0, 0, 1]]))
    assert hit["t_hit"][0] == pytest.approx(1.0) and hit["primitive_uvs"][0] == pytest.approx([1 / 3, 1 / 3])


def test_interface_types_and_checks():
    v, f = _room(2)
    scene = raycasting_scene(torch.as_tensor(v), torch.as_tensor(f), backend="torch")
    cam = _camera((0.0, 0.0, 0.0), (20, 10), target=(0.0, 0.0, 1.0))
    _, dirs = cam.rays()
    out = scene.cast_rays(torch.zeros(10, 20, 3), torch.as_tensor(dirs))
    assert isinstance(out["t_hit"], torch.Tensor) and out["primitive_normals"].shape == (10, 20, 3)
    assert out["primitive_ids"].dtype == torch.int64 and out["t_hit"].dtype == torch.float32
    assert isinstance(scene.cast_rays(np.zeros(3), dirs)["t_hit"], np.ndarray)
    origins = np.zeros((10, 20, 3))
    origins[3, 4] = [0.0, 0.01, 0.0]
    with pytest.raises(ValueError, match="one centre"):
        scene.cast_rays(origins, dirs)
    with pytest.raises(ValueError, match="mean direction"):
        scene.cast_rays(np.zeros(3), np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 0, 1.0]]))
    with pytest.raises(ValueError, match="backend"):
        raycasting_scene(v, f, backend="embree")
    with pytest.raises(ValueError, match="CPU only"):
        raycasting_scene(v, f, device="cuda", backend="open3d")
    assert default_backend("cuda") == "torch"
    assert default_backend("cpu") == (CPU_DEFAULT if open3d_available() else "torch")
    assert scene.cast_rays(np.zeros(3), np.zeros((0, 3)))["t_hit"].shape == (0,)


def test_render_without_open3d():
    """With open3d unimportable, the default backend is torch and renders a unit square exactly (seen
    face-on from 2 m with a focal of 100 px, it covers 50 × 50 pixels at depth 2), and the bake imports."""
    code = textwrap.dedent("""
        import sys
        sys.modules["open3d"] = None  # `import open3d` now raises ImportError
        import numpy as np
        from engine.geometry.camera import Camera
        from engine.render.raycast import CPU_DEFAULT, default_backend, render_mesh
        assert default_backend("cpu") == "torch"
        v = np.array([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
        f = np.array([[0, 1, 2], [0, 2, 3]])
        K = np.array([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]])
        cam = Camera(K, np.eye(3), np.array([0.0, 0.0, 2.0]), 80, 60)
        r = render_mesh(v, f, np.full((4, 3), 0.5), cam, supersample=2, shaded=False)
        assert r.mask.sum() == 2500, r.mask.sum()
        assert r.mask[5:55, 15:65].all()
        assert np.allclose(r.depth[r.mask], 2.0, atol=1e-5)
        assert np.allclose(r.rgb[r.mask], 0.5, atol=1e-6) and (r.rgb[~r.mask] == 0).all()
        import engine.texture.bake, engine.texture.render  # noqa: E401, F401  (importable without open3d)
        assert sys.modules["open3d"] is None
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
