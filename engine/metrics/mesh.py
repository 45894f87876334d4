"""3D surface metrics between a predicted and a ground-truth triangle mesh.

Both surfaces are sampled uniformly by area; every sample is matched to the exact closest point
on the *other surface* (not to the other sample set), which removes the sampling noise floor of
point-to-point Chamfer. The closest triangle is found exactly, in float64, by a bounded grid and
KD-tree search (engine/metrics/closest.py) that needs only numpy and scipy (no open3d), so
distances between (near-)identical surfaces are not limited by float32 rounding.

Units: vertices in metres; Chamfer is reported in centimetres, F-score thresholds in metres.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from engine.metrics.closest import closest_triangles

logger = logging.getLogger(__name__)

#: F-score thresholds (metres) reported by `mesh_metrics`, keyed by their result name.
FSCORE_THRESHOLDS_M: dict[str, float] = {"fscore_1cm": 0.01, "fscore_2cm": 0.02}

#: Seed offset of the ground-truth sampling, so pred and gt draw independent samples.
_GT_SEED_OFFSET = 1


@dataclass(frozen=True)
class SurfaceDistances:
    """Per-sample correspondences between two surfaces.

    Attributes:
        pred_to_gt: ``[N]`` distance (m) of each pred sample to the gt surface.
        gt_to_pred: ``[M]`` distance (m) of each gt sample to the pred surface.
        pred_normal_dot: ``[N]`` |n_pred . n_gt| at each pred sample's closest gt point.
        gt_normal_dot: ``[M]`` |n_gt . n_pred| at each gt sample's closest pred point.
    """

    pred_to_gt: np.ndarray
    gt_to_pred: np.ndarray
    pred_normal_dot: np.ndarray
    gt_normal_dot: np.ndarray


def _check_mesh(vertices: np.ndarray, faces: np.ndarray, name: str) -> tuple[np.ndarray, ...]:
    """Validates a mesh and returns it as (float64 [V, 3], int64 [F, 3])."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"{name} vertices must have shape [V, 3], got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"{name} faces must have shape [F, 3], got {f.shape}")
    if len(v) == 0 or len(f) == 0:
        raise ValueError(f"{name} mesh is empty ({len(v)} vertices, {len(f)} faces)")
    if not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"{name} faces must be integer indices, got dtype {f.dtype}")
    f = f.astype(np.int64)
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"{name} faces index outside [0, {len(v)})")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} vertices contain NaN or inf")
    return v, f


def _face_geometry(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face areas ``[F]`` and unit normals ``[F, 3]`` (zero for degenerate faces)."""
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(cross, axis=1)
    normals = np.zeros_like(cross)
    ok = norm > 0
    normals[ok] = cross[ok] / norm[ok, None]
    return 0.5 * norm, normals


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, n_samples: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Samples points uniformly by area on a triangle mesh.

    Zero-area faces are never sampled.

    Args:
        vertices: ``[V, 3]`` vertex positions.
        faces: ``[F, 3]`` vertex indices.
        n_samples: Number of points to draw.
        seed: Seed of the `numpy.random.Generator`; equal seeds give equal samples.

    Returns:
        points ``[n_samples, 3]`` (float64) and the unit face normals at them ``[n_samples, 3]``.

    Raises:
        ValueError: If the mesh is empty or has zero total area, or ``n_samples < 1``.
    """
    v, f = _check_mesh(vertices, faces, "mesh")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    areas, normals = _face_geometry(v, f)
    cum = np.cumsum(areas)
    total = cum[-1]
    if not total > 0:
        raise ValueError("mesh has zero surface area (all faces are degenerate)")
    rng = np.random.default_rng(seed)
    # Inverse-CDF face choice; side="right" skips zero-area faces (they repeat the CDF value).
    face_idx = np.searchsorted(cum, rng.random(n_samples) * total, side="right")
    # Rounding can push u*total onto total itself; clamp to the last face with area.
    face_idx = np.minimum(face_idx, int(np.flatnonzero(areas > 0)[-1]))
    r1, r2 = rng.random((2, n_samples))
    # Fold the unit square onto the triangle so the barycentric samples stay uniform.
    flip = r1 + r2 > 1.0
    r1[flip], r2[flip] = 1.0 - r1[flip], 1.0 - r2[flip]
    a, b, c = (v[f[face_idx, k]] for k in range(3))
    points = a + r1[:, None] * (b - a) + r2[:, None] * (c - a)
    return points, normals[face_idx]


def point_to_surface(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact distance from points to a triangle surface.

    Degenerate (zero-area) faces are ignored: they have no normal and no area.

    Args:
        points: ``[N, 3]`` query points.
        vertices: ``[V, 3]`` vertex positions of the surface.
        faces: ``[F, 3]`` vertex indices of the surface.

    Returns:
        distances ``[N]``, closest points ``[N, 3]`` and the unit normals of the closest faces
        ``[N, 3]``, all float64.

    Raises:
        ValueError: If the mesh is empty, all its faces are degenerate, or a point is not finite.
    """
    v, f = _check_mesh(vertices, faces, "surface")
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(pts).all():
        raise ValueError("query points contain NaN or inf")
    areas, normals = _face_geometry(v, f)
    keep = areas > 0
    if not keep.any():
        raise ValueError("surface has zero area (all faces are degenerate)")
    if not keep.all():
        logger.debug("ignoring %d degenerate faces of %d", int((~keep).sum()), len(f))
        f, normals = f[keep], normals[keep]
    if len(pts) == 0:
        return np.zeros(0), np.zeros((0, 3)), np.zeros((0, 3))

    prim, closest = closest_triangles(pts, v, f)
    dist = np.linalg.norm(pts - closest, axis=1)
    return dist, closest, normals[prim]


def surface_distances(
    pred_vertices: np.ndarray,
    pred_faces: np.ndarray,
    gt_vertices: np.ndarray,
    gt_faces: np.ndarray,
    n_samples: int = 100_000,
    seed: int = 0,
) -> SurfaceDistances:
    """Samples both surfaces and matches each sample to the other surface.

    The pred surface is sampled with ``seed`` and the gt surface with ``seed + 1``
    (see `sample_surface`), so results are reproducible.

    Args:
        pred_vertices: ``[V, 3]`` predicted vertices (m).
        pred_faces: ``[F, 3]`` predicted faces.
        gt_vertices: ``[V', 3]`` ground-truth vertices (m).
        gt_faces: ``[F', 3]`` ground-truth faces.
        n_samples: Number of samples drawn on each surface.
        seed: Sampling seed.

    Returns:
        The per-sample distances and normal agreements.

    Raises:
        ValueError: If a mesh is empty or has zero area.
    """
    pred_pts, pred_n = sample_surface(pred_vertices, pred_faces, n_samples, seed)
    gt_pts, gt_n = sample_surface(gt_vertices, gt_faces, n_samples, seed + _GT_SEED_OFFSET)
    d_pg, _, n_at_gt = point_to_surface(pred_pts, gt_vertices, gt_faces)
    d_gp, _, n_at_pred = point_to_surface(gt_pts, pred_vertices, pred_faces)
    # abs(): mesh orientation conventions differ between methods; only the tangent plane counts.
    return SurfaceDistances(
        pred_to_gt=d_pg,
        gt_to_pred=d_gp,
        pred_normal_dot=np.abs(np.einsum("ij,ij->i", pred_n, n_at_gt)),
        gt_normal_dot=np.abs(np.einsum("ij,ij->i", gt_n, n_at_pred)),
    )


def _fscore(dist: SurfaceDistances, tau_m: float) -> float:
    """F-score at threshold ``tau_m`` (metres) from precomputed distances."""
    precision = float(np.mean(dist.pred_to_gt < tau_m))
    recall = float(np.mean(dist.gt_to_pred < tau_m))
    if precision + recall == 0.0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def mesh_metrics(
    pred_vertices: np.ndarray,
    pred_faces: np.ndarray,
    gt_vertices: np.ndarray,
    gt_faces: np.ndarray,
    n_samples: int = 100_000,
    seed: int = 0,
) -> dict[str, float]:
    """Chamfer distance, normal consistency and F-scores between two meshes.

    Args:
        pred_vertices: ``[V, 3]`` predicted vertices (m).
        pred_faces: ``[F, 3]`` predicted faces.
        gt_vertices: ``[V', 3]`` ground-truth vertices (m).
        gt_faces: ``[F', 3]`` ground-truth faces.
        n_samples: Number of samples drawn on each surface.
        seed: Sampling seed.

    Returns:
        Dict with ``chamfer_cm`` (symmetric mean point-to-surface distance, cm),
        ``normal_consistency`` (mean |cos| between normals at matched points, in [0, 1]),
        ``fscore_1cm`` and ``fscore_2cm`` (in [0, 1]).

    Raises:
        ValueError: If a mesh is empty or has zero area.
    """
    dist = surface_distances(pred_vertices, pred_faces, gt_vertices, gt_faces, n_samples, seed)
    result = {
        "chamfer_cm": float(100.0 * (dist.pred_to_gt.mean() + dist.gt_to_pred.mean()) / 2.0),
        "normal_consistency": float(
            (dist.pred_normal_dot.mean() + dist.gt_normal_dot.mean()) / 2.0
        ),
    }
    for key, tau in FSCORE_THRESHOLDS_M.items():
        result[key] = _fscore(dist, tau)
    logger.debug("mesh metrics: %s", result)
    return result


def chamfer_cm(
    pred_vertices: np.ndarray,
    pred_faces: np.ndarray,
    gt_vertices: np.ndarray,
    gt_faces: np.ndarray,
    n_samples: int = 100_000,
    seed: int = 0,
) -> float:
    """Symmetric point-to-surface Chamfer distance in cm; see `mesh_metrics`."""
    return mesh_metrics(pred_vertices, pred_faces, gt_vertices, gt_faces, n_samples, seed)[
        "chamfer_cm"
    ]


def normal_consistency(
    pred_vertices: np.ndarray,
    pred_faces: np.ndarray,
    gt_vertices: np.ndarray,
    gt_faces: np.ndarray,
    n_samples: int = 100_000,
    seed: int = 0,
) -> float:
    """Normal consistency in [0, 1]; see `mesh_metrics`."""
    return mesh_metrics(pred_vertices, pred_faces, gt_vertices, gt_faces, n_samples, seed)[
        "normal_consistency"
    ]


def fscore(
    pred_vertices: np.ndarray,
    pred_faces: np.ndarray,
    gt_vertices: np.ndarray,
    gt_faces: np.ndarray,
    tau_m: float,
    n_samples: int = 100_000,
    seed: int = 0,
) -> float:
    """F-score at an arbitrary distance threshold.

    Args:
        pred_vertices: ``[V, 3]`` predicted vertices (m).
        pred_faces: ``[F, 3]`` predicted faces.
        gt_vertices: ``[V', 3]`` ground-truth vertices (m).
        gt_faces: ``[F', 3]`` ground-truth faces.
        tau_m: Threshold in metres; a sample counts if its distance is strictly below it.
        n_samples: Number of samples drawn on each surface.
        seed: Sampling seed.

    Returns:
        2PR / (P + R) in [0, 1], 0 when precision and recall are both 0.
    """
    if not tau_m > 0:
        raise ValueError(f"tau_m must be positive, got {tau_m}")
    dist = surface_distances(pred_vertices, pred_faces, gt_vertices, gt_faces, n_samples, seed)
    return _fscore(dist, tau_m)
