"""Tests of engine.metrics: image, surface and body-fit metrics."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import trimesh
from scipy.ndimage import gaussian_filter
from skimage.measure import marching_cubes
from skimage.metrics import peak_signal_noise_ratio

from engine.metrics import (
    as_float_image,
    fscore,
    iou,
    m_psnr,
    m_ssim,
    mesh_metrics,
    mpvpe_cm,
    point_to_surface,
    psnr,
    sample_surface,
    ssim,
)
from engine.metrics.closest import closest_points_on_triangles, closest_triangles

# ---------------------------------------------------------------------------- helpers


def _random_pair(seed: int = 0, shape: tuple[int, int] = (64, 80)) -> tuple[np.ndarray, ...]:
    """A smooth-ish random gt image and a noisy prediction of it, both [H, W, 3] in [0, 1]."""
    rng = np.random.default_rng(seed)
    gt = gaussian_filter(rng.random((*shape, 3)), sigma=(2, 2, 0))
    pred = np.clip(gt + rng.normal(0.0, 0.05, gt.shape), 0.0, 1.0)
    return pred, gt


def _reference_ssim_map(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Independent Wang et al. SSIM map of the greyscale images (ITU-R 709 luma, as rgb2gray)."""
    luma = np.array([0.2125, 0.7154, 0.0721])
    x, y = pred @ luma, gt @ luma

    def blur(img: np.ndarray) -> np.ndarray:
        return gaussian_filter(img, sigma=1.5, truncate=3.5, mode="reflect")

    ux, uy = blur(x), blur(y)
    vx, vy, vxy = blur(x * x) - ux**2, blur(y * y) - uy**2, blur(x * y) - ux * uy
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))


def _sphere(radius: float, resolution: int = 60) -> tuple[np.ndarray, np.ndarray]:
    mesh = o3d.geometry.TriangleMesh.create_sphere(radius=radius, resolution=resolution)
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.triangles)


def _brute_force_distances(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray
) -> np.ndarray:
    """Point-to-surface distances by testing every triangle (trimesh, no spatial index)."""
    tris = vertices[faces]
    n, f = len(points), len(tris)
    closest = trimesh.triangles.closest_point(np.tile(tris, (n, 1, 1)), np.repeat(points, f, 0))
    d = np.linalg.norm(closest - np.repeat(points, f, 0), axis=1).reshape(n, f)
    return d.min(axis=1)


def _random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# ---------------------------------------------------------------------------- images


def test_as_float_image_scales_uint8():
    img = np.array([[[0, 128, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(as_float_image(img), [[[0.0, 128 / 255, 1.0]]])
    with pytest.raises(ValueError):
        as_float_image(np.zeros((4, 4)))


def test_psnr_matches_skimage_and_known_mse():
    pred, gt = _random_pair()
    assert psnr(pred, gt) == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=1.0))
    grey = np.full((16, 16, 3), 0.5)
    assert psnr(grey + 0.1, grey) == pytest.approx(20.0)  # MSE 0.01 -> 20 dB
    assert psnr(grey, grey) == math.inf
    # uint8 input is rescaled: same value as its float version.
    pred8, gt8 = (pred * 255).round().astype(np.uint8), (gt * 255).round().astype(np.uint8)
    assert psnr(pred8, gt8) == pytest.approx(psnr(pred8 / 255.0, gt8 / 255.0))


def test_ssim_matches_independent_computation():
    pred, gt = _random_pair(seed=1)
    ref_map = _reference_ssim_map(pred, gt)
    # skimage averages without a half-window (5 px) border.
    assert ssim(pred, gt) == pytest.approx(ref_map[5:-5, 5:-5].mean(), abs=1e-9)
    assert ssim(gt, gt) == pytest.approx(1.0)
    assert ssim(pred, gt) < 0.99
    with pytest.raises(ValueError):
        ssim(pred, gt[:-1])


def test_m_psnr_full_mask_equals_psnr():
    pred, gt = _random_pair(seed=2)
    full = np.ones(gt.shape[:2], dtype=bool)
    assert m_psnr(pred, gt, full) == pytest.approx(psnr(pred, gt))
    # A {0, 1} float mask is accepted too.
    assert m_psnr(pred, gt, full.astype(np.float32)) == pytest.approx(psnr(pred, gt))


def test_m_psnr_ignores_errors_outside_mask():
    pred, gt = _random_pair(seed=3)
    mask = np.zeros(gt.shape[:2], dtype=bool)
    mask[10:30, 20:50] = True
    before = m_psnr(pred, gt, mask)
    corrupted = pred.copy()
    corrupted[~mask] = 1.0 - corrupted[~mask]
    assert m_psnr(corrupted, gt, mask) == pytest.approx(before, abs=1e-12)
    assert psnr(corrupted, gt) < psnr(pred, gt)


def test_m_psnr_is_strict_not_lenient():
    gt = np.full((100, 100, 3), 0.5)
    pred = gt.copy()
    mask = np.zeros((100, 100), dtype=bool)
    mask[40:50, 40:50] = True  # 1 % of the image
    pred[mask] += 0.1
    strict = m_psnr(pred, gt, mask)
    lenient_mse = np.mean(((pred - gt) * mask[..., None]) ** 2)
    lenient = 10 * np.log10(1.0 / lenient_mse)
    assert strict == pytest.approx(20.0)  # MSE 0.01 inside the mask
    assert strict < lenient - 10.0  # lenient is diluted by the 99 % perfect background


def test_masked_metrics_reject_empty_mask():
    pred, gt = _random_pair(seed=4)
    empty = np.zeros(gt.shape[:2], dtype=bool)
    with pytest.raises(ValueError, match="empty"):
        m_psnr(pred, gt, empty)
    with pytest.raises(ValueError, match="empty"):
        m_ssim(pred, gt, empty)


def test_m_ssim_full_mask_is_mean_of_ssim_map():
    pred, gt = _random_pair(seed=5)
    full = np.ones(gt.shape[:2], dtype=bool)
    assert m_ssim(pred, gt, full) == pytest.approx(_reference_ssim_map(pred, gt).mean(), abs=1e-9)


def test_m_ssim_averages_over_mask_and_ignores_far_errors():
    pred, gt = _random_pair(seed=6, shape=(96, 96))
    mask = np.zeros((96, 96), dtype=bool)
    mask[5:35, 5:35] = True
    ref_map = _reference_ssim_map(pred, gt)
    assert m_ssim(pred, gt, mask) == pytest.approx(ref_map[mask].mean(), abs=1e-9)

    # The Gaussian window reaches 5 px; corrupt a region more than 5 px away from the mask.
    corrupted = pred.copy()
    corrupted[60:, 60:] = np.random.default_rng(1).random((36, 36, 3))
    assert m_ssim(corrupted, gt, mask) == pytest.approx(m_ssim(pred, gt, mask), abs=1e-12)
    assert ssim(corrupted, gt) < ssim(pred, gt) - 0.05

    # Errors inside the mask count fully, not diluted by the clean rest of the image.
    inside = gt.copy()
    inside[mask] = np.random.default_rng(0).random((int(mask.sum()), 3))
    assert m_ssim(inside, gt, mask) < ssim(inside, gt) - 0.2


def test_iou_hand_cases():
    a = np.zeros((4, 4), dtype=bool)
    a[:, :2] = True
    b = np.zeros((4, 4), dtype=bool)
    b[:, 1:3] = True
    assert iou(a, b) == pytest.approx(1 / 3)  # 4 shared of 12 pixels
    assert iou(a, ~a) == 0.0
    assert iou(a, a) == 1.0
    assert iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    half = np.zeros((4, 4), dtype=bool)
    half[:, :1] = True
    assert iou(a, half) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        iou(a, a[:3])


# ---------------------------------------------------------------------------- meshes


def test_sample_surface_is_deterministic_area_weighted_and_skips_degenerate_faces():
    # Two triangles with areas 0.5 and 1.5 in the z = 0 plane, plus a zero-area face.
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [4, 0, 0], [1, 1, 0], [5, 5, 5]], float)
    f = np.array([[0, 1, 2], [1, 3, 4], [5, 5, 5]])
    p1, n1 = sample_surface(v, f, 20_000, seed=7)
    p2, _ = sample_surface(v, f, 20_000, seed=7)
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, sample_surface(v, f, 20_000, seed=8)[0])
    np.testing.assert_allclose(p1[:, 2], 0.0)
    np.testing.assert_allclose(np.abs(n1), np.tile([0, 0, 1.0], (len(n1), 1)))
    in_first = p1[:, 0] + p1[:, 1] < 1.0
    assert np.mean(in_first) == pytest.approx(0.25, abs=0.015)


def test_identical_meshes_are_perfect():
    v, f = _sphere(0.3)
    m = mesh_metrics(v, f, v, f, n_samples=20_000)
    assert set(m) == {"chamfer_cm", "normal_consistency", "fscore_1cm", "fscore_2cm"}
    assert m["chamfer_cm"] < 1e-6
    assert m["normal_consistency"] == pytest.approx(1.0)
    assert m["fscore_1cm"] == 1.0
    assert m["fscore_2cm"] == 1.0


def test_sphere_offset_by_one_cm():
    v, f = _sphere(0.3)
    bigger = v * (0.31 / 0.3)
    m = mesh_metrics(v, f, bigger, f, n_samples=20_000)
    assert m["chamfer_cm"] == pytest.approx(1.0, abs=0.05)
    assert m["normal_consistency"] > 0.999
    assert m["fscore_2cm"] == 1.0
    # Facet planes of the two tessellations are exactly (0.01 * cos) m < 1 cm apart, so the
    # distances sit just below 1 cm: all pass at 1 cm, none at 0.5 cm.
    assert m["fscore_1cm"] == pytest.approx(1.0)
    assert fscore(v, f, bigger, f, tau_m=0.005, n_samples=20_000) == 0.0
    # 1.5 cm apart: between the two reported thresholds.
    m15 = mesh_metrics(v, f, v * (0.315 / 0.3), f, n_samples=20_000)
    assert m15["chamfer_cm"] == pytest.approx(1.5, abs=0.05)
    assert m15["fscore_1cm"] == 0.0
    assert m15["fscore_2cm"] == 1.0


def test_translated_mesh_has_low_fscore():
    v, f = _sphere(0.3)
    m = mesh_metrics(v, f, v + [0.05, 0.0, 0.0], f, n_samples=20_000)
    # Distance ~ 5 cm * |cos| of the angle to the shift: only the band |cos| < 0.4 is < 2 cm.
    assert m["fscore_2cm"] < 0.5
    assert m["fscore_1cm"] < m["fscore_2cm"]
    assert 1.5 < m["chamfer_cm"] < 3.5


def test_normal_consistency_ignores_orientation_and_degenerate_faces():
    v, f = _sphere(0.3, resolution=20)
    flipped = f[:, ::-1]
    with_degenerate = np.vstack([f, [[0, 0, 1], [3, 3, 3]]])
    m = mesh_metrics(v, flipped, v, with_degenerate, n_samples=5_000)
    assert m["chamfer_cm"] < 1e-6
    assert m["normal_consistency"] == pytest.approx(1.0)


def test_chamfer_matches_brute_force():
    pred = trimesh.creation.icosphere(subdivisions=1, radius=0.3)
    gt = trimesh.creation.box(extents=(0.45, 0.5, 0.4))
    gt.apply_translation([0.02, -0.01, 0.03])
    pv, pf, gv, gf = pred.vertices, pred.faces, gt.vertices, gt.faces
    n, seed = 300, 11
    m = mesh_metrics(pv, pf, gv, gf, n_samples=n, seed=seed)

    # mesh_metrics samples pred with `seed` and gt with `seed + 1`.
    pred_pts, _ = sample_surface(pv, pf, n, seed)
    gt_pts, _ = sample_surface(gv, gf, n, seed + 1)
    d_pg = _brute_force_distances(pred_pts, gv, gf)
    d_gp = _brute_force_distances(gt_pts, pv, pf)
    np.testing.assert_allclose(point_to_surface(pred_pts, gv, gf)[0], d_pg, atol=1e-9)
    np.testing.assert_allclose(point_to_surface(gt_pts, pv, pf)[0], d_gp, atol=1e-9)

    assert m["chamfer_cm"] == pytest.approx(100 * (d_pg.mean() + d_gp.mean()) / 2, abs=1e-7)
    p, r = np.mean(d_pg < 0.02), np.mean(d_gp < 0.02)
    assert m["fscore_2cm"] == pytest.approx(2 * p * r / (p + r))
    assert 0.0 < m["fscore_2cm"] < 1.0


def test_mesh_metrics_rejects_empty_meshes():
    v, f = _sphere(0.3, resolution=10)
    with pytest.raises(ValueError, match="empty"):
        mesh_metrics(np.zeros((0, 3)), np.zeros((0, 3), dtype=int), v, f)
    with pytest.raises(ValueError, match="empty"):
        mesh_metrics(v, f, v, np.zeros((0, 3), dtype=int))
    with pytest.raises(ValueError, match="zero"):
        mesh_metrics(v, np.array([[0, 0, 1]]), v, f)


def _torus(resolution: int = 72) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes torus (radii 0.3 m and 0.1 m), uneven triangles as in our extracted meshes."""
    g = np.linspace(-0.45, 0.45, resolution)
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    sdf = np.hypot(np.hypot(x, y) - 0.3, z) - 0.1
    step = g[1] - g[0]
    v, f, _, _ = marching_cubes(sdf, 0.0, spacing=(step, step, step))
    return v - 0.45 + np.array([0.5, -1.2, 2.0]), f.astype(np.int64)  # off the origin


def _body_mesh() -> tuple[np.ndarray, np.ndarray]:
    from engine.body import create_body_model

    body = create_body_model()
    v = body.canonical_vertices(body.default_shape()).detach().numpy().reshape(-1, 3)
    return v.astype(np.float64), np.asarray(body.faces, dtype=np.int64)


def _probe_points(v: np.ndarray, f: np.ndarray, seed: int) -> np.ndarray:
    """Points on, near (both sides), a few cm off, inside and far from the surface."""
    rng = np.random.default_rng(seed)
    on, n = sample_surface(v, f, 3000, seed=seed)
    offsets = rng.choice([0.0, 1e-6, -1e-6, 1e-3, -1e-3, 0.01, -0.03, 0.08], size=len(on))
    lo, hi = v.min(axis=0), v.max(axis=0)
    centre, size = (lo + hi) / 2, (hi - lo).max()
    box = centre + (rng.random((1500, 3)) - 0.5) * (hi - lo)  # inside the bounding box
    far = centre + rng.normal(size=(300, 3)) * 3 * size
    return np.concatenate([on + offsets[:, None] * n, box, far, v[:200], centre[None]])


@pytest.mark.parametrize("mesh", ["torus", "body"])
def test_point_to_surface_twins_open3d_closest_points(mesh):
    v, f = _torus() if mesh == "torus" else _body_mesh()
    f = f[np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1) > 0]
    pts = _probe_points(v, f, seed=3)
    dist, closest, _ = point_to_surface(pts, v, f)
    index, _ = closest_triangles(pts, v, f)

    # Open3D's Embree query (float32, centred as the search it replaces did).
    centre = v.mean(axis=0)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor((v - centre).astype(np.float32)), o3d.core.Tensor(f.astype(np.uint32))
    )
    ans = scene.compute_closest_points(o3d.core.Tensor((pts - centre).astype(np.float32)))
    prim = ans["primitive_ids"].numpy().astype(np.int64)
    o3d_dist = np.linalg.norm(ans["points"].numpy().astype(np.float64) + centre - pts, axis=1)
    # The exact float64 distance to the triangle Open3D chose.
    tri = v[f[prim]]
    o3d_exact = np.linalg.norm(
        closest_points_on_triangles(pts, tri[:, 0], tri[:, 1], tri[:, 2]) - pts, axis=1
    )

    np.testing.assert_allclose(np.linalg.norm(closest - pts, axis=1), dist, rtol=0, atol=1e-15)
    assert np.all(dist <= o3d_dist + 1e-7)
    assert np.all(dist <= o3d_exact + 1e-12)  # never worse than any one triangle
    same = index == prim  # elsewhere a tie (a shared edge or vertex) or Open3D's float32 pick
    assert same.mean() > 0.75
    np.testing.assert_allclose(dist[same], o3d_exact[same], rtol=0, atol=1e-9)


def test_point_to_surface_exact_on_mixed_triangle_sizes():
    # Twelve large box triangles beside a fine sphere: the grid, its far-point fallback and the
    # bounding-sphere pruning all meet triangles of very different sizes.
    box = trimesh.creation.box(extents=(0.6, 0.4, 0.5))
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.05)
    ball.apply_translation([0.35, 0.0, 0.0])
    v = np.vstack([box.vertices, ball.vertices])
    f = np.vstack([box.faces, ball.faces + len(box.vertices)])
    rng = np.random.default_rng(5)
    pts = np.concatenate(
        [
            sample_surface(v, f, 300, seed=2)[0] + rng.normal(scale=0.01, size=(300, 3)),
            rng.normal(scale=0.3, size=(200, 3)),
            rng.normal(scale=5.0, size=(50, 3)),
        ]
    )
    np.testing.assert_allclose(
        point_to_surface(pts, v, f)[0], _brute_force_distances(pts, v, f), rtol=0, atol=1e-12
    )


def test_chamfer_without_open3d_on_parallel_squares():
    # Two 1 m squares 1 cm apart, tessellated differently: every sample is exactly 1 cm from the
    # other square, so chamfer_cm is 1 and only the 2 cm F-score counts it.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["open3d"] = None  # any `import open3d` now raises ImportError
        import numpy as np
        from engine.metrics import chamfer_cm, mesh_metrics

        def square(n, z):
            g = np.linspace(0.0, 1.0, n + 1)
            x, y = np.meshgrid(g, g, indexing="ij")
            v = np.column_stack([x.ravel(), y.ravel(), np.full(x.size, z)])
            i = np.arange(n)[:, None] * (n + 1) + np.arange(n)[None, :]
            q = np.stack([i, i + n + 1, i + n + 2, i + 1], axis=-1).reshape(-1, 4)
            return v, np.vstack([q[:, [0, 1, 2]], q[:, [0, 2, 3]]])

        (va, fa), (vb, fb) = square(10, 0.0), square(7, 0.01)
        print(chamfer_cm(va, fa, vb, fb, n_samples=5000))
        m = mesh_metrics(va, fa, vb, fb, n_samples=5000)
        print(m["normal_consistency"], m["fscore_1cm"], m["fscore_2cm"])
        print("open3d" in sys.modules and sys.modules["open3d"] is None)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split("\n")
    assert float(out[0]) == pytest.approx(1.0, abs=1e-9)
    nc, f1, f2 = map(float, out[1].split())
    assert nc == pytest.approx(1.0) and f1 == 0.0 and f2 == 1.0
    assert out[2] == "True"


# ---------------------------------------------------------------------------- body


def _body_vertices(n: int = 500) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3)) * [0.2, 0.8, 0.1]


def test_mpvpe_translation():
    gt = _body_vertices()
    pred = gt + [0.03, 0.0, 0.04]  # 5 cm shift
    assert mpvpe_cm(pred, gt, align="none") == pytest.approx(5.0)
    assert mpvpe_cm(pred, gt, align="translation") == pytest.approx(0.0, abs=1e-10)
    assert mpvpe_cm(pred, gt) == pytest.approx(0.0, abs=1e-10)  # default aligns translation


def test_mpvpe_scale_translation():
    gt = _body_vertices()
    pred = 1.1 * gt + [0.1, 0.2, -0.3]
    assert mpvpe_cm(pred, gt, align="translation") > 1.0
    assert mpvpe_cm(pred, gt, align="scale_translation") == pytest.approx(0.0, abs=1e-10)


def test_mpvpe_procrustes():
    gt = _body_vertices()
    rot = _random_rotation(3)
    pred = 0.9 * gt @ rot.T + [0.5, -0.2, 1.0]
    assert mpvpe_cm(pred, gt, align="scale_translation") > 5.0
    assert mpvpe_cm(pred, gt, align="procrustes") == pytest.approx(0.0, abs=1e-9)
    # A mirrored copy cannot be undone without a reflection, so some error must remain.
    assert mpvpe_cm(gt * [-1.0, 1.0, 1.0], gt, align="procrustes") > 1.0


def test_mpvpe_rejects_bad_input():
    gt = _body_vertices()
    with pytest.raises(ValueError, match="align"):
        mpvpe_cm(gt, gt, align="rigid")
    with pytest.raises(ValueError):
        mpvpe_cm(gt[:-1], gt)
