"""A small made-up SMPL-format model file, so the SMPL path can be tested without the real
(licence-gated) model.

The file has the exact layout `smplx.SMPL` reads (a pickled dict of numpy arrays, SMPL topology
sizes: 6,890 vertices, 24 joints, 10 shape directions, 207 pose directions) and holds a stick
figure in SMPL's conventions (metres, Y-up, facing +Z, the person's left = +X). Pose correctives
(`posedirs`) are zero, so smplx's own forward pass is plain LBS and must match ours exactly.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from smplx.vertex_ids import vertex_ids

NUM_VERTICES = 6890
NUM_JOINTS = 24
NUM_BETAS = 10
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)

# Plausible rest joint positions (close to the real SMPL neutral template).
JOINTS = np.array(
    [
        [0.00, -0.22, 0.03],  # 0 pelvis
        [0.06, -0.31, 0.02],  # 1 left hip
        [-0.06, -0.31, 0.02],  # 2 right hip
        [0.00, -0.11, 0.00],  # 3 spine1
        [0.11, -0.69, 0.01],  # 4 left knee
        [-0.11, -0.69, 0.01],  # 5 right knee
        [0.00, 0.03, 0.03],  # 6 spine2
        [0.07, -1.09, -0.03],  # 7 left ankle
        [-0.07, -1.09, -0.03],  # 8 right ankle
        [0.00, 0.09, 0.03],  # 9 spine3
        [0.12, -1.15, 0.09],  # 10 left foot
        [-0.12, -1.15, 0.09],  # 11 right foot
        [0.00, 0.29, 0.00],  # 12 neck
        [0.08, 0.20, 0.00],  # 13 left collar
        [-0.08, 0.20, 0.00],  # 14 right collar
        [0.00, 0.36, 0.05],  # 15 head
        [0.17, 0.23, -0.01],  # 16 left shoulder
        [-0.17, 0.23, -0.01],  # 17 right shoulder
        [0.43, 0.21, -0.03],  # 18 left elbow
        [-0.43, 0.21, -0.03],  # 19 right elbow
        [0.69, 0.22, -0.01],  # 20 left wrist
        [-0.69, 0.22, -0.01],  # 21 right wrist
        [0.77, 0.21, -0.02],  # 22 left hand
        [-0.77, 0.21, -0.02],  # 23 right hand
    ],
    dtype=np.float64,
)

# The vertices smplx/our regressor read as face and foot keypoints get plausible places.
_LANDMARKS = {
    "nose": [0.00, 0.46, 0.12],
    "leye": [0.035, 0.49, 0.10],
    "reye": [-0.035, 0.49, 0.10],
    "lear": [0.075, 0.47, 0.02],
    "rear": [-0.075, 0.47, 0.02],
    "LBigToe": [0.10, -1.17, 0.16],
    "LSmallToe": [0.15, -1.17, 0.14],
    "LHeel": [0.07, -1.17, -0.07],
    "RBigToe": [-0.10, -1.17, 0.16],
    "RSmallToe": [-0.15, -1.17, 0.14],
    "RHeel": [-0.07, -1.17, -0.07],
}


def make_smpl_data(num_vertices: int = NUM_VERTICES, seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of a SMPL model file (float32; faces uint32; kintree_table int64)."""
    rng = np.random.default_rng(seed)
    V = num_vertices
    # Vertices scattered around the bone segments (parent joint → child joint), plus a head blob.
    segments = [(SMPL_PARENTS[j], j) for j in range(1, NUM_JOINTS)]
    seg = rng.integers(0, len(segments) + 1, V)
    verts = np.empty((V, 3))
    for s in range(len(segments) + 1):
        m = seg == s
        n = int(m.sum())
        if s == len(segments):  # head: a ball above the head joint
            verts[m] = JOINTS[15] + [0.0, 0.1, 0.02] + rng.normal(0, 0.06, (n, 3))
            continue
        a, b = JOINTS[segments[s][0]], JOINTS[segments[s][1]]
        t = rng.uniform(0, 1, (n, 1))
        verts[m] = a + t * (b - a) + rng.normal(0, 0.03, (n, 3))
    for name, pos in _LANDMARKS.items():
        if vertex_ids["smplh"][name] < V:
            verts[vertex_ids["smplh"][name]] = pos

    # Soft nearest-joint skinning weights, truncated to the 4 nearest joints.
    d = np.linalg.norm(verts[:, None] - JOINTS[None], axis=-1)  # [V, J]
    w = np.exp(-((d / 0.06) ** 2) + (d.min(1, keepdims=True) / 0.06) ** 2)
    w[d > np.sort(d, axis=1)[:, 3:4]] = 0.0
    w /= w.sum(1, keepdims=True)

    # Joint regressor: each joint is a normalised average of the 20 vertices nearest to it.
    jreg = np.zeros((NUM_JOINTS, V))
    near = np.argsort(d, axis=0)[:20]  # [20, J]
    for j in range(NUM_JOINTS):
        jreg[j, near[:, j]] = 1.0 / 20

    # Shape directions: beta 0 scales height, the rest are smooth random fields.
    shapedirs = np.zeros((V, 3, NUM_BETAS))
    shapedirs[:, 1, 0] = 0.05 * verts[:, 1]
    for k in range(1, NUM_BETAS):
        freq = rng.normal(0, 3, (3, 3))
        shapedirs[:, :, k] = 0.01 * np.sin(verts @ freq)

    kintree = np.zeros((2, NUM_JOINTS), dtype=np.int64)
    kintree[0] = [4294967295 if p < 0 else p for p in SMPL_PARENTS]  # as in the real files
    kintree[1] = np.arange(NUM_JOINTS)
    faces = np.stack([np.arange(0, V - 2), np.arange(1, V - 1), np.arange(2, V)], axis=1).astype(np.uint32)
    return {
        "v_template": verts.astype(np.float32),
        "f": faces,
        "shapedirs": shapedirs.astype(np.float32),
        "posedirs": np.zeros((V, 3, 207), dtype=np.float32),
        "J_regressor": jreg.astype(np.float32),
        "weights": w.astype(np.float32),
        "kintree_table": kintree,
    }


def write_smpl_model(folder: Path, num_vertices: int = NUM_VERTICES, seed: int = 0) -> Path:
    """Writes `folder/SMPL_NEUTRAL.pkl` (creating `folder`); returns the file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "SMPL_NEUTRAL.pkl"
    with open(path, "wb") as f:
        pickle.dump(make_smpl_data(num_vertices, seed), f, protocol=4)
    return path
