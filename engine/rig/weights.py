"""Skin weights of a clothed mesh, transferred from the body: the weights of the nearest point of the body's
surface, smoothed over the mesh where the clothing leaves the body, at most 4 influences per vertex.

Near the body a vertex keeps the body's weights. Farther out (a skirt between the legs, a loose sleeve) the
nearest body point says little: half a skirt's front is nearest the left leg, half the right one, and
with those weights it would split along the middle when the legs part. There the weights are smoothed over
the clothed mesh itself: they minimise

    Σ_i a_i ‖w_i − t_i‖² + λ Σ_(i,k) ∈ edges ‖w_i − w_k‖²

Near the body the anchor a_i is 1 and the target t_i is the nearest body point's weights w⁰_i. It falls to
`loose` `far` from the body (or where the vertex's normal disagrees with the body's there: a skirt's
outside facing a hand beside it is not the hand's skin), and the target becomes the weights of the nearest
point of the trunk, legs and head only (`loose_bones`): a skirt hangs from the hips, even where a hand rests
on it in the canonical pose. Weakly anchored vertices take the weights the mesh around them carries (the
waist's and both legs' for a skirt). The minimiser solves one sparse linear system (diag(a) + λL) w =
diag(a) t with the mesh's graph Laplacian L; its matrix is an M-matrix, so the weights stay non-negative and,
as every row of t sums to 1, so do theirs. Last, a bone keeps weight only on vertices its own part of the body
is within `reach` of (beyond the vertex's distance to the body), so smoothing carries no bone far from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import factorized

from engine.mesh.extract import vertex_normals
from engine.metrics.closest import closest_triangles

MAX_INFLUENCES = 4  # glTF's JOINTS_0 / WEIGHTS_0 carry four per vertex


@dataclass(frozen=True)
class WeightConfig:
    """How skin weights are transferred to the clothed mesh."""

    near: float = 0.02
    """Vertices closer to the body than this (metres) keep the body's weights."""
    far: float = 0.06
    """Vertices this far from the body (metres) or farther take their weights from the mesh around them."""
    smooth: float = 1.0
    """λ: how strongly weights are smoothed over the mesh's edges (0: the nearest body point's weights)."""
    loose: float = 0.01
    """Anchor of vertices far from the body, toward the trunk's and legs' weights (relative to the body's 1):
    smaller spreads the smoothing farther (its reach is about sqrt(smooth / loose) edges)."""
    agreement: float = 0.5
    """A vertex keeps the body's weights only where its normal and the body's at the nearest point agree (cosine
    at least this): a skirt's outside facing a hand beside it is not the hand's skin."""
    reach: float = 0.04
    """A bone keeps weight on a vertex only if its part of the body is at most this much (metres) farther from
    the vertex than the nearest body point: smoothing must not carry a hand resting on a skirt across the skirt."""


def nearest_surface_weights(points: np.ndarray, body_vertices: np.ndarray, body_faces: np.ndarray,
                            body_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights of the nearest point of the body's surface (barycentric blend of its triangle's corners).

    Args:
        points: [P, 3]; body_vertices: [Vb, 3] in the same space; body_faces: [Fb, 3] (counter-clockwise
        seen from outside); body_weights: [Vb, B] rows summing to 1.

    Returns:
        weights [P, B], the distance to the body's surface [P] and the body's outward unit normal there [P, 3].
    """
    v = np.asarray(body_vertices, np.float64)
    f = np.asarray(body_faces, np.int64)
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    area = np.linalg.norm(n, axis=1)
    f, n = f[area > 0], n[area > 0] / area[area > 0, None]  # degenerate faces have no closest point of their own
    p = np.asarray(points, np.float64)
    face, closest = closest_triangles(p, v, f)
    tri = f[face]  # [P, 3]
    bary = barycentric(closest, *(v[tri[:, k]] for k in range(3)))
    weights = np.einsum("pk,pkb->pb", bary, np.asarray(body_weights, np.float64)[tri])
    return weights, np.linalg.norm(p - closest, axis=1), n[face]


def barycentric(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Barycentric coordinates [P, 3] of points p [P, 3] in triangles (a, b, c) [P, 3] each, clipped to the
    triangle (for points on it, as closest points are)."""
    v0, v1, v2 = b - a, c - a, p - a
    d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
    d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
    den = d00 * d11 - d01 * d01
    den = np.where(np.abs(den) > 1e-20, den, 1.0)  # a degenerate triangle: all weight to its first corner
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    out = np.clip(np.stack([1.0 - v - w, v, w], axis=1), 0.0, 1.0)
    return out / out.sum(1, keepdims=True)


def anchors(distance: np.ndarray, cfg: WeightConfig, cosine: np.ndarray | None = None) -> np.ndarray:
    """How loose each vertex is [V] in [0, 1]: 0 within `near` of the body, 1 beyond `far`, a smoothstep
    between; 1 too where the vertex's normal disagrees with the body's at the nearest point (`cosine` [V] below
    `agreement`)."""
    t = np.clip((distance - cfg.near) / max(cfg.far - cfg.near, 1e-9), 0.0, 1.0)
    s = t * t * (3.0 - 2.0 * t)
    if cosine is not None:
        s = np.where(cosine >= cfg.agreement, s, 1.0)
    return s


def graph_laplacian(num_vertices: int, faces: np.ndarray) -> sp.csr_matrix:
    """The uniform graph Laplacian [V, V] of a triangle mesh's edges (degree on the diagonal, -1 per edge)."""
    f = np.asarray(faces, np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = np.unique(np.sort(e, axis=1), axis=0)
    e = e[e[:, 0] != e[:, 1]]
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(num_vertices, num_vertices))
    adj = (adj + adj.T).tocsr()
    return (sp.diags(np.asarray(adj.sum(1)).ravel()) - adj).tocsr()


def smooth_weights(target: np.ndarray, anchor: np.ndarray, faces: np.ndarray, smooth: float) -> np.ndarray:
    """Minimises Σ_i a_i ‖w_i − t_i‖² + λ Σ_edges ‖w_i − w_k‖² (the module's energy).

    Args:
        target: [V, B] what each vertex's weights are pulled toward, rows summing to 1.
        anchor: [V] a_i > 0, how strongly.
        faces: [F, 3] the mesh's triangles (vertices welded: a seam must not cut the graph).
        smooth: λ.

    Returns:
        [V, B] smoothed weights, non-negative, rows summing to 1.
    """
    if smooth <= 0:
        return np.asarray(target, np.float64)
    system = (sp.diags(anchor) + smooth * graph_laplacian(len(target), faces)).tocsc()
    solve = factorized(system)
    rhs = anchor[:, None] * np.asarray(target, np.float64)
    out = np.stack([solve(rhs[:, b]) for b in range(rhs.shape[1])], axis=1)
    out = np.clip(out, 0.0, None)  # round-off only
    return out / np.maximum(out.sum(1, keepdims=True), 1e-12)


def reach_mask(points: np.ndarray, distance: np.ndarray, body_vertices: np.ndarray, body_weights: np.ndarray,
               reach: float) -> np.ndarray:
    """How much each bone may move each point [P, B] in [0, 1]: fully when its part of the body (the body
    vertices it carries at least half the weight of) is within `reach` of the point's distance to the body, not
    at all beyond twice that (a linear ramp between keeps the weights continuous)."""
    from scipy.spatial import cKDTree

    owner = np.argmax(body_weights, axis=1)
    mask = np.ones((len(points), body_weights.shape[1]))
    for b in range(body_weights.shape[1]):
        own = np.flatnonzero((owner == b) & (body_weights[:, b] >= 0.5))
        if len(own) == 0:
            continue  # a bone with no part of its own (it only shares): no restriction
        d, _ = cKDTree(body_vertices[own]).query(points, k=1, workers=-1)
        mask[:, b] = np.clip(2.0 - (d - distance) / reach, 0.0, 1.0)
    return mask


def limit_influences(weights: np.ndarray, k: int = MAX_INFLUENCES) -> tuple[np.ndarray, np.ndarray]:
    """The k largest weights of every vertex, renormalised to sum 1.

    Args:
        weights: [V, B] non-negative, every row with some weight.

    Returns:
        joints [V, k] int64 (largest first; unused slots point at bone 0 with weight 0) and weights
        [V, k] float32 summing to 1.
    """
    w = np.asarray(weights, np.float64)
    k_eff = min(k, w.shape[1])
    idx = np.argsort(-w, axis=1, kind="stable")[:, :k_eff]
    top = np.take_along_axis(w, idx, axis=1)
    top /= top.sum(1, keepdims=True)
    joints = np.zeros((len(w), k), np.int64)
    out = np.zeros((len(w), k), np.float64)
    joints[:, :k_eff], out[:, :k_eff] = idx, top
    joints[out == 0] = 0
    out32 = out.astype(np.float32)
    # float32 rounding: put the remainder on the largest weight so each row sums to 1 in float32 too.
    out32[:, 0] += np.float32(1.0) - out32.sum(1, dtype=np.float32)
    return joints, out32


def dense_weights(joints: np.ndarray, weights: np.ndarray, num_bones: int) -> np.ndarray:
    """Four influences per vertex (joints [V, 4], weights [V, 4]) → dense weights [V, B] (slots that repeat
    a bone add up)."""
    out = np.zeros((len(joints), num_bones), np.float64)
    np.add.at(out, (np.arange(len(joints))[:, None], np.asarray(joints)), np.asarray(weights, np.float64))
    return out


def transfer_weights(vertices: np.ndarray, faces: np.ndarray, weld: np.ndarray | None, body_vertices: np.ndarray,
                     body_faces: np.ndarray, body_weights: np.ndarray, cfg: WeightConfig = WeightConfig(),
                     loose_bones: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Skin weights of a clothed mesh from the body, in the same (canonical) space.

    Args:
        vertices: [V, 3] the clothed mesh; faces: [F, 3].
        weld: [V] an id per vertex, equal for copies of one point (a UV atlas splits vertices at seams:
            `TexturedMesh.source_vertex`), or None when no vertex is repeated.
        body_vertices: [Vb, 3]; body_faces: [Fb, 3]; body_weights: [Vb, B] (e.g. merged onto a skeleton).
        cfg: transfer settings.
        loose_bones: [B] bool, the bones loose clothing may follow (the trunk, legs and head: a skirt hangs from
            the hips, whatever hand lies beside it); None: all.

    Returns:
        joints [V, 4] and weights [V, 4] (`limit_influences`).
    """
    vertices = np.asarray(vertices, np.float64)
    body_vertices = np.asarray(body_vertices, np.float64)
    body_weights = np.asarray(body_weights, np.float64)
    if weld is None:
        weld = np.arange(len(vertices))
    _, first, inverse = np.unique(np.asarray(weld), return_index=True, return_inverse=True)
    welded_faces = inverse[np.asarray(faces, np.int64)]
    points = vertices[first]
    w0, d, body_normals = nearest_surface_weights(points, body_vertices, body_faces, body_weights)
    if cfg.smooth <= 0:
        return limit_influences(w0[inverse])
    cosine = np.einsum("pd,pd->p", vertex_normals(points, welded_faces).astype(np.float64), body_normals)
    s = anchors(d, cfg, cosine)
    loose = w0
    if loose_bones is not None and not np.all(loose_bones):
        keep = np.asarray(loose_bones, bool)
        part = body_weights[:, keep].sum(1)
        faces_kept = np.asarray(body_faces)[(part[np.asarray(body_faces)] >= 0.5).all(1)]
        restricted = body_weights * keep
        restricted /= np.maximum(restricted.sum(1, keepdims=True), 1e-12)
        loose, _, _ = nearest_surface_weights(points, body_vertices, faces_kept, restricted)
    target = (1.0 - s)[:, None] * w0 + s[:, None] * loose
    w = smooth_weights(target, 1.0 - (1.0 - cfg.loose) * s, welded_faces, cfg.smooth)
    if cfg.reach > 0:
        masked = w * reach_mask(points, d, body_vertices, body_weights, cfg.reach)
        total = masked.sum(1, keepdims=True)
        w = np.where(total > 1e-6, masked / np.maximum(total, 1e-12), w)
    return limit_influences(w[inverse])
