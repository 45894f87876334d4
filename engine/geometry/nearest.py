"""Nearest-point search in torch, on whatever device the tensors are: a chunked brute force over a
small point set (the ~4.7k voxel-subsampled body vertices of engine/refine/deformer.py).

Brute force rather than a voxel hash grid: at a few thousand targets one pass of exact distances is a
handful of fused kernels on a GPU, needs no build per frame (the body moves every frame), and has no
cell size to tune against the `bound` of the search. The reference twin is scipy's `cKDTree.query`
(k=1, `distance_upper_bound`), and tests/engine/test_deformer_lookup.py asserts they agree.
"""

from __future__ import annotations

import math

import torch

# Distances computed per chunk: at most this many (query, target) pairs at once (64 MiB of float32).
CHUNK_PAIRS = 1 << 24
FAR = 1e6  # where non-finite query points are sent (as engine/refine/deformer.py does for the KD-tree)


def nearest_point(points: torch.Tensor, targets: torch.Tensor, bound: float = math.inf
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest target of each query point, by exact Euclidean distance.

    Args:
        points: [P, 3] query points; NaN and ±inf coordinates are sent to ±1e6 (far from any body).
        targets: [N, 3] points to search (N ≥ 1), on the same device as `points`.
        bound: as `cKDTree.query(distance_upper_bound=bound)`: a point with no target closer than
            `bound` gets distance inf and index N.

    Returns:
        Distance [P] (dtype of `points`) and index [P] (int64) of the nearest target, on the device of
        `points`.
    """
    q = torch.nan_to_num(points.detach(), nan=FAR, posinf=FAR, neginf=-FAR)
    t = targets.detach().to(q.dtype)
    n = t.shape[0]
    dist = torch.empty(q.shape[0], dtype=q.dtype, device=q.device)
    idx = torch.empty(q.shape[0], dtype=torch.int64, device=q.device)
    step = max(1, CHUNK_PAIRS // max(n, 1))
    for s in range(0, q.shape[0], step):
        # Differences, not |x|² - 2x·y + |y|² (a matmul): that form loses digits at metre-scale
        # coordinates and can swap neighbours a few micrometres apart.
        d = torch.cdist(q[s : s + step], t, compute_mode="donot_use_mm_for_euclid_dist")  # [p, N]
        dist[s : s + step], idx[s : s + step] = d.min(dim=1)
    if math.isfinite(bound):
        far = dist >= bound  # cKDTree keeps only neighbours strictly closer than the bound
        dist = dist.masked_fill(far, math.inf)
        idx = idx.masked_fill(far, n)
    return dist, idx
