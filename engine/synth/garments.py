"""Clothed canonical geometry: the body's SDF, offset where garments and hair cover it, plus a
skirt volume, meshed by marching cubes. Everything here is geometry the body model lacks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes

from engine.body.base import KEYPOINT_NAMES, BodyModel

GARMENTS = ("none", "shirt", "dress")
# Region labels of the clothed surface (drive the colours).
SKIN, SHIRT, PANTS, SKIRT, HAIR, SHOES = range(6)


@dataclass
class ClothedMesh:
    vertices: np.ndarray  # [V, 3] canonical, metres
    faces: np.ndarray  # [F, 3]
    labels: np.ndarray  # [V] region label
    body_offset: np.ndarray  # [V] distance to the naked body surface (m)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _bone_sum(body: BodyModel, names: list[str]) -> np.ndarray:
    w = body.skin_weights.numpy()
    idx = [i for i, n in enumerate(body.bone_names) if any(n.startswith(p) for p in names)]
    return w[:, idx].sum(axis=1)


def coverage(body: BodyModel, verts: np.ndarray, garment: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per body vertex garment coverage in [0, 1] and offset thickness (m).

    Regions are defined geometrically from the canonical keypoints so they work for any body
    model: a shirt covers the torso and the upper arms, trousers the legs, hair the skull.
    """
    kp = dict(zip(KEYPOINT_NAMES, body.keypoints(torch.as_tensor(verts, dtype=torch.float32)[None])[0].numpy()))
    x, y, z = verts[:, 0], verts[:, 1], verts[:, 2]
    sh_y = 0.5 * (kp["left_shoulder"][1] + kp["right_shoulder"][1])
    hip_y = 0.5 * (kp["left_hip"][1] + kp["right_hip"][1])
    eye_y = 0.5 * (kp["left_eye"][1] + kp["right_eye"][1])
    ear_z = 0.5 * (kp["left_ear"][2] + kp["right_ear"][2])
    ankle_y = 0.5 * (kp["left_ankle"][1] + kp["right_ankle"][1])
    sh_x = abs(kp["left_shoulder"][0])
    neck_y = sh_y + 0.06

    # Distance along each arm from the shoulder, measured toward the elbow.
    def along(a, b):
        d = kp[b] - kp[a]
        return (verts - kp[a]) @ d / np.linalg.norm(d)

    arm = np.where(x > 0, along("left_shoulder", "left_elbow"), along("right_shoulder", "right_elbow"))

    def seg_dist(a, b):
        ab = b - a
        t = np.clip((verts - a) @ ab / (ab @ ab), 0.0, 1.0)
        return np.linalg.norm(verts - (a + t[:, None] * ab), axis=1)

    def arm_dist(side):
        s, e, w = kp[f"{side}_shoulder"], kp[f"{side}_elbow"], kp[f"{side}_wrist"]
        return np.minimum.reduce([seg_dist(s, e), seg_dist(e, w), seg_dist(w, w + 0.6 * (w - e))])

    def leg_dist(side):
        h, k, a = kp[f"{side}_hip"], kp[f"{side}_knee"], kp[f"{side}_ankle"]
        return np.minimum(seg_dist(h, k), seg_dist(k, a))

    # Arm = outside the torso and closer to an arm (shoulder–elbow–wrist–hand) than to a leg.
    d_arm = np.minimum(arm_dist("left"), arm_dist("right"))
    d_leg = np.minimum(leg_dist("left"), leg_dist("right"))
    is_arm = (np.abs(x) > sh_x - 0.03) & (d_arm < d_leg) & (d_arm < 0.2)
    out = {}
    sleeve = rng.uniform(0.08, 0.2)
    hem_y = hip_y + rng.uniform(-0.06, 0.04)
    torso = _smoothstep(y, hem_y - 0.01, hem_y + 0.01) * (1 - _smoothstep(y, neck_y - 0.01, neck_y + 0.01))
    torso = np.where(is_arm, 1 - _smoothstep(arm, sleeve - 0.01, sleeve + 0.01), torso)
    legs = (1 - _smoothstep(y, hem_y + 0.02, hem_y + 0.05)) * _smoothstep(y, ankle_y + 0.05, ankle_y + 0.07)
    legs = np.where(is_arm, 0.0, legs)
    shoes = 1 - _smoothstep(y, ankle_y - 0.01, ankle_y + 0.02)
    head = _smoothstep(y, sh_y + 0.12, sh_y + 0.14)
    hair = head * np.maximum(_smoothstep(y, eye_y + 0.02, eye_y + 0.04), 1 - _smoothstep(z, ear_z - 0.01, ear_z + 0.01))
    out["hair"] = hair
    out["shoes"] = shoes
    thickness = np.zeros(len(verts))
    # Loose folds: low-frequency waves in the canonical frame, different per seed.
    f1, f2, p1, p2 = rng.uniform(8, 16), rng.uniform(5, 10), rng.uniform(0, 6.3), rng.uniform(0, 6.3)
    folds = 0.5 + 0.5 * np.sin(f1 * y + p1) * np.cos(f2 * np.arctan2(x, z) + p2)
    hair_t = rng.uniform(0.02, 0.035)
    thickness += hair * hair_t * (0.6 + 0.4 * _smoothstep(-z, -ear_z, -ear_z + 0.08))
    if garment == "shirt":
        thickness += torso * (rng.uniform(0.015, 0.025) + 0.012 * folds)
        thickness += legs * (0.008 + 0.006 * folds)
        out["shirt"], out["pants"] = torso, legs
    elif garment == "dress":
        top = np.where(is_arm, 0.0, torso)  # sleeveless
        thickness += top * (0.008 + 0.006 * folds)
        out["shirt"], out["pants"] = top, np.zeros_like(legs)
    else:
        out["shirt"], out["pants"] = np.zeros_like(legs), np.zeros_like(legs)
    thickness += shoes * 0.008
    out["thickness"] = thickness
    out["hem_y"] = hem_y
    out["hip_y"] = hip_y
    out["knee_y"] = 0.5 * (kp["left_knee"][1] + kp["right_knee"][1])
    out["hip_z"] = 0.5 * (kp["left_hip"][2] + kp["right_hip"][2])
    return out


def _skirt(cov: dict, rng: np.random.Generator, body_verts: np.ndarray):
    """A flared skirt from the waist to about the knees: returns its (approximate) SDF function."""
    waist_y = cov["hip_y"] + 0.12
    hem_y = 0.5 * (cov["hip_y"] + cov["knee_y"]) - rng.uniform(0.0, 0.06)
    band = body_verts[np.abs(body_verts[:, 1] - waist_y) < 0.01]
    a_w = np.abs(band[:, 0]).max() + 0.01  # half width at the waist
    b_w = 0.5 * (band[:, 2].max() - band[:, 2].min()) + 0.01
    zc = 0.5 * (band[:, 2].max() + band[:, 2].min())
    # Flare so the hem clears the star-posed knees.
    leg = body_verts[np.abs(body_verts[:, 1] - hem_y) < 0.01]
    need = np.abs(leg[:, 0]).max() + 0.04
    flare = max((need - a_w) / (waist_y - hem_y), 0.2) * rng.uniform(1.0, 1.2)

    def sdf(p: np.ndarray) -> np.ndarray:
        t = np.clip(waist_y - p[:, 1], 0.0, None)
        a = a_w + flare * t
        b = b_w + 0.6 * flare * t
        r = np.sqrt((p[:, 0] / a) ** 2 + ((p[:, 2] - zc) / b) ** 2)
        radial = (r - 1.0) * np.minimum(a, b)
        return np.maximum.reduce([radial, p[:, 1] - waist_y, hem_y - p[:, 1]])

    return sdf


def clothed_canonical_mesh(body: BodyModel, shape, garment: str, rng: np.random.Generator, voxel: float = 0.008) -> ClothedMesh:
    """Builds the clothed canonical mesh for one person."""
    import open3d as o3d  # only where a scene is made: the rest of the engine imports this package without it

    bverts = body.canonical_vertices(torch.as_tensor(shape)).numpy().astype(np.float64)
    faces = body.faces
    cov = coverage(body, bverts, garment, rng)

    lo = bverts.min(0) - 0.12
    hi = bverts.max(0) + 0.12
    dims = np.ceil((hi - lo) / voxel).astype(int) + 1
    axes = [lo[i] + voxel * np.arange(dims[i]) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(bverts.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    # Exact distances only in a band around the body (far queries are slow in Embree and
    # irrelevant to marching cubes); the sign everywhere comes from ray-parity occupancy.
    band_w = cov["thickness"].max() + 3 * voxel
    tree = cKDTree(bverts)
    d_v, idx = tree.query(grid, k=1, distance_upper_bound=band_w + 0.02)
    band = np.isfinite(d_v)
    inside = scene.compute_occupancy(o3d.core.Tensor(grid.astype(np.float32)), nsamples=3).numpy() > 0.5
    dist = np.full(len(grid), band_w + 0.02)
    dist[band] = scene.compute_distance(o3d.core.Tensor(grid[band].astype(np.float32))).numpy()
    sdf = np.where(inside, -dist, dist)

    # Offset near the surface only: thickness interpolated from the 8 nearest body vertices.
    near = band & (dist < band_w)
    d, idx = tree.query(grid[near], k=8)
    w = 1.0 / np.maximum(d, 1e-4) ** 2
    w /= w.sum(1, keepdims=True)
    sdf[near] -= (cov["thickness"][idx] * w).sum(1)
    skirt = _skirt(cov, rng, bverts) if garment == "dress" else None
    if skirt is not None:
        sdf = np.minimum(sdf, skirt(grid))

    vol = sdf.reshape(*dims)
    verts, tris, _, _ = marching_cubes(vol, level=0.0, spacing=(voxel, voxel, voxel))
    verts += lo
    # skimage >= 0.2x already winds faces outward for an inside-negative SDF (normals point out).
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(verts), o3d.utility.Vector3iVector(tris))
    # Keep the largest connected piece (drops specks from the offset field).
    clusters, counts, _ = mesh.cluster_connected_triangles()
    clusters = np.asarray(clusters)
    mesh.remove_triangles_by_mask(clusters != int(np.argmax(counts)))
    mesh.remove_unreferenced_vertices()
    verts = np.asarray(mesh.vertices)
    tris = np.asarray(mesh.triangles).astype(np.int64)

    # Region labels from the nearest body vertex (or the skirt volume).
    d, nn = tree.query(verts)
    labels = np.full(len(verts), SKIN)
    labels[cov["pants"][nn] > 0.5] = PANTS
    labels[cov["shirt"][nn] > 0.5] = SHIRT
    labels[cov["shoes"][nn] > 0.5] = SHOES
    labels[cov["hair"][nn] > 0.5] = HAIR
    if skirt is not None:
        labels[np.abs(skirt(verts)) < 1.5 * voxel] = SKIRT
    return ClothedMesh(verts, tris, labels, d)
