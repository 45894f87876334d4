"""The nearest-vertex skinning lookup: the torch search (engine/geometry/nearest.py, used by sessions
on a GPU) agrees with its reference twin, scipy's cKDTree (used on the CPU), including the `bound`
cut-off and non-finite query points."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from engine.geometry import nearest
from engine.geometry.nearest import nearest_point
from engine.refine.deformer import Deformer, FramePose


def _body_like(n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 3] float32 points on a few ellipsoids (a torso, limbs, a head), metre scale and offset like a
    posed body in world space."""
    centres = np.array([[0, 1.1, 3], [0, 1.65, 3], [-0.1, 0.5, 3], [0.1, 0.5, 3], [-0.35, 1.2, 3], [0.35, 1.2, 3]])
    radii = np.array([[0.17, 0.3, 0.12], [0.09, 0.11, 0.1], [0.07, 0.4, 0.07], [0.07, 0.4, 0.07],
                      [0.05, 0.3, 0.05], [0.05, 0.3, 0.05]])
    part = rng.integers(0, len(centres), n)
    u = rng.normal(size=(n, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return (centres[part] + radii[part] * u).astype(np.float32)


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(3)
    targets = _body_like(4700, rng)
    queries = (targets[rng.integers(0, len(targets), 4000)] + rng.normal(0, 0.1, (4000, 3))).astype(np.float32)
    return targets, queries


def _check_agrees(queries: np.ndarray, targets: np.ndarray, d: torch.Tensor, idx: torch.Tensor, bound: float) -> None:
    kd_d, kd_i = cKDTree(targets).query(queries, k=1, distance_upper_bound=bound)
    d, idx = d.numpy(), idx.numpy()
    q64, t64 = queries.astype(np.float64), np.vstack([targets, np.full((1, 3), np.nan)]).astype(np.float64)
    exact = np.linalg.norm(q64 - t64[np.minimum(idx, len(targets))], axis=1)
    # Near the bound, float32 (torch) and float64 (the tree) may disagree on which side a point is.
    edge = np.abs(kd_d - bound) < 1e-5 if math.isfinite(bound) else np.zeros(len(queries), bool)
    differ = (idx != kd_i) & ~edge
    # Where the indices differ, the two vertices are equally near (an exact tie up to float32 rounding).
    np.testing.assert_allclose(exact[differ], kd_d[differ], atol=1e-6)
    assert differ.mean() < 0.01
    kept = np.isfinite(kd_d) & ~edge
    np.testing.assert_array_equal(np.isfinite(d[~edge]), np.isfinite(kd_d[~edge]))
    np.testing.assert_allclose(d[kept], kd_d[kept], atol=1e-5)
    assert (idx[~np.isfinite(d)] == len(targets)).all()


@pytest.mark.parametrize("bound", [math.inf, 0.05])
def test_torch_lookup_agrees_with_kdtree(scene, bound, monkeypatch):
    targets, queries = scene
    monkeypatch.setattr(nearest, "CHUNK_PAIRS", 1000 * len(targets) + 7)  # several chunks, a ragged last one
    d, idx = nearest_point(torch.as_tensor(queries), torch.as_tensor(targets), bound)
    assert d.dtype == torch.float32 and idx.dtype == torch.int64
    if math.isfinite(bound):
        assert 0.05 < (~torch.isfinite(d)).float().mean() < 0.95  # the bound case is exercised both ways
    _check_agrees(queries, targets, d, idx, bound)


def test_exact_vertices_and_ties():
    targets = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    queries = np.array([[0, 0, 0], [1, 0, 0], [0.5, 0, 0], [0.6, 0.6, 0.2]], np.float32)
    d, idx = nearest_point(torch.as_tensor(queries), torch.as_tensor(targets))
    assert idx[:2].tolist() == [0, 1] and d[:2].tolist() == [0.0, 0.0]
    assert idx[2].item() in (0, 1) and idx[3].item() in (1, 2)  # ties: either vertex
    np.testing.assert_allclose(d[2:].numpy(), [0.5, math.sqrt(0.4**2 + 0.6**2 + 0.2**2)], atol=1e-6)


@pytest.mark.parametrize("bound", [math.inf, 0.05])
def test_non_finite_points_are_far_away(scene, bound):
    targets, queries = scene
    q = queries[:8].copy()
    q[0] = np.nan
    q[1, 0] = np.inf
    q[2, 1] = -np.inf
    q[3, 2] = np.nan
    d, idx = nearest_point(torch.as_tensor(q), torch.as_tensor(targets), bound)
    bad = slice(0, 4)
    if math.isfinite(bound):
        assert torch.isinf(d[bad]).all() and (idx[bad] == len(targets)).all()
    else:
        assert (d[bad] > 1e5).all() and ((idx[bad] >= 0) & (idx[bad] < len(targets))).all()
    _check_agrees(q[4:], targets, d[4:], idx[4:], bound)  # finite neighbours are unaffected


@pytest.mark.parametrize("bound", [math.inf, 0.05])
def test_deformer_paths_agree(scene, bound):
    """Deformer.lookup_nearest on a CPU frame (KD-tree) and on a device frame (torch search, here run
    on the CPU) give the same contract, non-finite points included."""
    targets, queries = scene
    x = torch.as_tensor(queries.copy())
    x[:3] = torch.tensor([math.nan, math.inf, -math.inf])[:, None]
    tf = torch.eye(4)[None]
    on_cpu = FramePose(0, tf, targets, cKDTree(targets))
    on_device = FramePose(0, tf, targets, None, lookup_vertices=torch.as_tensor(targets))
    self = SimpleNamespace(device=torch.device("cpu"))
    d_kd, i_kd = Deformer.lookup_nearest(self, x, on_cpu, bound)
    d_t, i_t = Deformer.lookup_nearest(self, x, on_device, bound)
    assert d_kd.dtype == d_t.dtype == x.dtype and i_kd.dtype == i_t.dtype == torch.int64
    if math.isfinite(bound):
        assert torch.isinf(d_kd[:3]).all() and torch.isinf(d_t[:3]).all()
    else:
        torch.testing.assert_close(d_t[:3], d_kd[:3], rtol=1e-5, atol=0.0)
    _check_agrees(queries[3:], targets, d_t[3:], i_t[3:], bound)
    finite = torch.isfinite(d_kd[3:])
    torch.testing.assert_close(d_t[3:][finite], d_kd[3:][finite], rtol=0, atol=1e-5)
