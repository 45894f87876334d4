"""Body models: skinning round trips, geometry conventions, projection, rotations, SMPL loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import roma
import smplx
import torch

from engine.body import BodyConfig, BodyParams, create_body_model
from engine.body.base import KEYPOINT_NAMES, STAR_LEG_DEGREES
from engine.body.smpl_model import SmplBody, find_model_file
from engine.errors import UserError
from engine.geometry.camera import Camera, look_at, project
from engine.geometry.rotations import axis_angle_to_matrix
from engine.synth.motion import motion

from .smpl_fixture import NUM_JOINTS, NUM_VERTICES, write_smpl_model

KP = {name: i for i, name in enumerate(KEYPOINT_NAMES)}


# ---- helpers --------------------------------------------------------------------------------------


def _vertex_normals(vertices: torch.Tensor, faces: np.ndarray) -> torch.Tensor:
    f = torch.as_tensor(faces, dtype=torch.long)
    v0, v1, v2 = vertices[f[:, 0]], vertices[f[:, 1]], vertices[f[:, 2]]
    fn = torch.cross(v1 - v0, v2 - v0, dim=1)
    vn = torch.zeros_like(vertices).index_add_(0, f.reshape(-1), fn.repeat_interleave(3, dim=0))
    return vn / vn.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _clothed_points(body, shape: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical body vertices plus points 1–3 cm out along their normals, with K=1 weights."""
    can = body.canonical_vertices(shape)
    normals = _vertex_normals(can, body.faces)
    g = torch.Generator().manual_seed(seed)
    off = 0.01 + 0.02 * torch.rand(can.shape[0], 1, generator=g)
    points = torch.cat([can, can + off * normals])
    weights, _ = body.nearest_vertex_weights(points, can)
    return points, weights


def _params(body, kind: str, n: int, seed: int, shape: torch.Tensor | None = None) -> BodyParams:
    """Real motion poses with a non-trivial extra global rotation and translation."""
    pose, orient, transl = motion(body, kind, n, np.random.default_rng(seed))
    orient = orient + torch.tensor([0.25, 0.0, -0.15])
    transl = transl + torch.tensor([0.3, 0.9, -1.2])
    shape = body.default_shape() if shape is None else shape
    return BodyParams(shape, pose, orient, transl)


def _camera(target: np.ndarray, width: int = 160, height: int = 200) -> Camera:
    # fx != fy and an off-centre principal point catch swapped axes; (cx, cy) is a pixel centre.
    R, t = look_at(target + np.array([0.6, 0.4, 3.2]), target)
    K = np.array([[210.0, 0.0, 80.5], [0.0, 190.0, 100.5], [0.0, 0.0, 1.0]])
    return Camera(K=K, R=R, t=t, width=width, height=height)


# ---- Anny ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anny():
    return create_body_model()


@pytest.mark.parametrize("kind", ["turn", "walk"])
def test_anny_lbs_round_trip_on_real_poses(anny, kind):
    params = _params(anny, kind, n=5, seed=1)
    shape = params.shape
    points, weights = _clothed_points(anny, shape)
    tfs = anny.bone_transforms(params)
    for tf in tfs[[0, 2, 4]]:
        posed = anny.canonical_to_posed(points, weights, shape, tf)
        assert (posed - points).norm(dim=1).max() > 0.3  # the pose really moved the points
        back = anny.posed_to_canonical(posed, weights, shape, tf)
        assert (back - points).norm(dim=1).max() < 1e-4


@pytest.mark.parametrize("kind", ["turn", "walk"])
def test_anny_posed_vertices_match_canonical_warp(anny, kind):
    params = _params(anny, kind, n=4, seed=2)
    shape = params.shape
    posed = anny.posed_vertices(params)
    assert posed.shape == (4, anny.num_vertices, 3)
    can = anny.canonical_vertices(shape)
    for i, tf in enumerate(anny.bone_transforms(params)):
        warped = anny.canonical_to_posed(can, anny.skin_weights, shape, tf)
        assert (warped - posed[i]).norm(dim=1).max() < 1e-4


def test_anny_inverse_lbs_points_recovers_rest(anny):
    params = _params(anny, "walk", n=6, seed=3)
    rest = anny.rest_vertices(params.shape)
    posed = anny.posed_vertices(params)
    for i in (1, 4):
        back = anny.inverse_lbs_points(posed[i], params.frame(i))
        assert (back - rest).norm(dim=1).max() < 1e-5  # each vertex picks its own weights


def test_nearest_vertex_weights_are_exact(anny):
    """Each body vertex is its own nearest vertex (distance 0), even where vertices crowd."""
    params = _params(anny, "walk", n=3, seed=4)
    posed = anny.posed_vertices(params)[1]
    w, d = anny.nearest_vertex_weights(posed, posed)
    assert d.max() < 1e-6
    assert torch.equal(w, anny.skin_weights)
    # Points just off a vertex pick that vertex.
    idx = torch.arange(0, anny.num_vertices, 97)
    w2, d2 = anny.nearest_vertex_weights(posed[idx] + 1e-5, posed)
    assert torch.equal(w2, anny.skin_weights[idx])
    assert torch.allclose(d2, torch.full_like(d2, math.sqrt(3) * 1e-5), atol=1e-6)


def test_anny_model_summary(anny):
    assert anny.num_vertices == 13718
    assert anny.num_bones == 104
    assert anny.faces.dtype == np.int64 and anny.faces.min() >= 0 and anny.faces.max() < anny.num_vertices
    assert torch.allclose(anny.skin_weights.sum(1), torch.ones(anny.num_vertices), atol=1e-5)
    assert anny.keypoint_regressor.shape == (len(KEYPOINT_NAMES), anny.num_vertices)


def test_anny_geometry_conventions(anny):
    shape = anny.default_shape()
    rest = anny.rest_vertices(shape)
    kp = anny.keypoints(rest[None])[0]
    # Y-up: head above hips above ankles.
    assert kp[KP["nose"], 1] > kp[KP["left_hip"], 1] + 0.5 > kp[KP["left_ankle"], 1] + 0.5
    assert rest[:, 1].max() - rest[:, 1].min() > 1.4  # an adult's height
    # Facing +Z: the nose is in front of the ears.
    ears_z = (kp[KP["left_ear"], 2] + kp[KP["right_ear"], 2]) / 2
    assert kp[KP["nose"], 2] > ears_z + 0.05
    # The person's left is +X (and right is -X).
    for name in KEYPOINT_NAMES:
        if name.startswith("left_"):
            assert kp[KP[name], 0] > 0.01, name
            assert kp[KP[name.replace("left_", "right_")], 0] < -0.01, name


def test_anny_star_pose_spreads_the_legs(anny):
    shape = anny.default_shape()
    zero_params = BodyParams(shape, anny.zero_pose(1), torch.zeros(1, 3), torch.zeros(1, 3))
    zero_verts = anny.posed_vertices(zero_params)[0]
    zero = anny.keypoints(zero_verts[None])[0]
    star = anny.keypoints(anny.canonical_vertices(shape)[None])[0]
    for side, sign in (("left", 1.0), ("right", -1.0)):
        ankle = KP[f"{side}_ankle"]
        assert sign * star[ankle, 0] > sign * zero[ankle, 0] + 0.2  # outward, on its own side
        # The hip → ankle direction swings outward by STAR_LEG_DEGREES in the frontal (x, y) plane.
        hip = KP[f"{side}_hip"]
        before, after = zero[ankle] - zero[hip], star[ankle] - star[hip]
        swing = math.atan2(sign * after[0], -after[1]) - math.atan2(sign * before[0], -before[1])
        assert math.degrees(swing) == pytest.approx(STAR_LEG_DEGREES, abs=1.0)
        assert after[2] == pytest.approx(float(before[2]), abs=2e-3)  # no forward/backward swing
    # Only the legs move: the upper body is where the zero pose has it.
    for name in ("nose", "left_ear", "left_shoulder", "right_elbow", "right_wrist"):
        assert (star[KP[name]] - zero[KP[name]]).norm() < 1e-5, name
    # Anny's zero pose is its skeleton's reference pose (pelvis at the origin), close to the rest pose.
    rest = anny.rest_vertices(shape)
    assert (zero_verts - rest).norm(dim=1).max() < 0.1


def test_anny_shape_changes_the_body(anny):
    def height(h: float) -> float:
        shape = anny.default_shape()
        shape[4] = h  # "height" phenotype
        v = anny.rest_vertices(shape)
        return float(v[:, 1].max() - v[:, 1].min())

    short, tall = height(0.1), height(0.9)
    assert tall > short + 0.1
    other = anny.default_shape()
    other[3] = 0.9  # weight
    assert (anny.rest_vertices(other) - anny.rest_vertices(anny.default_shape())).abs().max() > 0.01


def test_body_params_helpers(anny):
    params = _params(anny, "turn", n=3, seed=5)
    assert params.num_frames == 3
    f = params.frame(2)
    assert f.num_frames == 1
    assert torch.equal(f.pose[0], params.pose[2]) and torch.equal(f.transl[0], params.transl[2])
    d = params.to_numpy()
    assert all(v.dtype == np.float32 for v in d.values())
    back = BodyParams.from_numpy(d)
    for k in ("shape", "pose", "global_orient", "transl"):
        assert torch.equal(getattr(back, k), getattr(params, k)), k


# ---- projection and cameras ----------------------------------------------------------------------


def test_project_keypoints_matches_pinhole(anny):
    params = _params(anny, "walk", n=3, seed=6)
    kp = anny.keypoints(anny.posed_vertices(params.frame(1)))[0].double()  # [K, 3]
    target = kp.mean(0).numpy()
    cam = _camera(target)
    assert np.allclose(cam.center, target + np.array([0.6, 0.4, 3.2]))
    assert np.allclose(cam.R @ cam.R.T, np.eye(3)) and np.isclose(np.linalg.det(cam.R), 1.0)

    pts = kp.numpy()
    uv_np = project(pts, cam)
    uv_t = project(kp, cam)
    assert isinstance(uv_np, np.ndarray) and isinstance(uv_t, torch.Tensor)
    assert uv_np.shape == (len(KEYPOINT_NAMES), 2)
    np.testing.assert_allclose(uv_t.numpy(), uv_np, atol=1e-9)
    np.testing.assert_allclose(project(kp.float(), cam).numpy(), uv_np, atol=1e-3)

    # Hand-written pinhole model.
    (fx, _, cx), (_, fy, cy) = cam.K[0], cam.K[1]
    X, Y, Z = (cam.R @ pts.T + cam.t[:, None]).astype(np.float64)
    assert (Z > 0).all()
    expected = np.stack([fx * X / Z + cx, fy * Y / Z + cy], axis=1)
    np.testing.assert_allclose(uv_np, expected, atol=1e-9)

    # The body is in view, upright: the head is above (smaller v than) the ankles.
    assert (uv_np[:, 0] > 0).all() and (uv_np[:, 0] < cam.width).all()
    assert (uv_np[:, 1] > 0).all() and (uv_np[:, 1] < cam.height).all()
    assert uv_np[KP["nose"], 1] < uv_np[KP["left_ankle"], 1] - 50
    # The look-at target projects onto the principal point.
    np.testing.assert_allclose(project(target[None], cam)[0], [cx, cy], atol=1e-9)

    # Batched [N, K, 3] input keeps its leading dimensions.
    kps = anny.keypoints(anny.posed_vertices(params))
    assert project(kps, cam).shape == (3, len(KEYPOINT_NAMES), 2)


def test_camera_rays_pass_through_projected_points(anny):
    params = _params(anny, "turn", n=2, seed=7)
    kp = anny.keypoints(anny.posed_vertices(params.frame(0)))[0].double().numpy()
    target = kp[KP["nose"]]
    cam = _camera(target)
    origins, dirs = cam.rays()
    assert origins.shape == dirs.shape == (cam.height, cam.width, 3)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(origins[3, 5], cam.center)

    def dist_to_ray(p, row, col):
        o, d = origins[row, col], dirs[row, col]
        v = p - o
        return float(np.linalg.norm(v - (v @ d) * d))

    # The nose is the look-at target and projects onto a pixel centre: its ray passes through it.
    u, v = project(target[None], cam)[0]
    col, row = int(np.floor(u)), int(np.floor(v))
    assert (u, v) == pytest.approx((col + 0.5, row + 0.5))
    assert dist_to_ray(target, row, col) < 1e-6

    # Points placed along pixel rays project back to those pixel centres ...
    rng = np.random.default_rng(0)
    for _ in range(20):
        row, col = int(rng.integers(cam.height)), int(rng.integers(cam.width))
        p = origins[row, col] + rng.uniform(0.5, 6.0) * dirs[row, col]
        np.testing.assert_allclose(project(p[None], cam)[0], [col + 0.5, row + 0.5], atol=1e-6)
    # ... and every keypoint lies within half a pixel's footprint of its pixel's ray.
    uv = project(kp, cam)
    depth = (kp @ cam.R.T + cam.t)[:, 2]
    for p, (u, v), z in zip(kp, uv, depth, strict=True):
        foot = z * math.hypot(0.5 / cam.K[0, 0], 0.5 / cam.K[1, 1]) + 1e-9
        assert dist_to_ray(p, int(v), int(u)) <= foot


# ---- rotations ----------------------------------------------------------------------------------


def test_axis_angle_matches_roma():
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(600, 3, generator=g, dtype=torch.float64), dim=1)
    angles = torch.cat(
        [
            torch.rand(400, generator=g, dtype=torch.float64) * math.pi,
            10 ** torch.linspace(-9, -3, 100, dtype=torch.float64),  # near the small-angle switch
            1e-6 * torch.linspace(0.9, 1.1, 100, dtype=torch.float64),  # either side of it
        ]
    )
    rv = dirs * angles[:, None]
    ours = axis_angle_to_matrix(rv)
    ref = roma.rotvec_to_rotmat(rv)
    assert ours.shape == (600, 3, 3)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    # float32 and arbitrary leading dimensions.
    rv32 = rv[:400].float().reshape(20, 20, 3)
    torch.testing.assert_close(axis_angle_to_matrix(rv32), roma.rotvec_to_rotmat(rv32), atol=1e-6, rtol=0)
    # Proper rotations.
    eye = torch.eye(3, dtype=torch.float64).expand(600, 3, 3)
    torch.testing.assert_close(ours @ ours.transpose(1, 2), eye, atol=1e-12, rtol=0)
    det = torch.linalg.det(ours)
    torch.testing.assert_close(det, torch.ones_like(det), atol=1e-12, rtol=0)


def test_axis_angle_gradient_at_zero_is_finite_and_correct():
    G = torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rv = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    (axis_angle_to_matrix(rv) * G).sum().backward()
    assert torch.isfinite(rv.grad).all()
    # dR/dω at 0 is the cross-product matrix: d/dω Σ G∘[ω]ₓ.
    expected = torch.stack([G[2, 1] - G[1, 2], G[0, 2] - G[2, 0], G[1, 0] - G[0, 1]])
    torch.testing.assert_close(rv.grad, expected)
    # Batched zeros (as in a zero pose) too.
    rv = torch.zeros(5, 24, 3, requires_grad=True)
    axis_angle_to_matrix(rv).square().sum().backward()
    assert torch.isfinite(rv.grad).all()


# ---- SMPL through smplx, from a made-up model file ----------------------------------------------


@pytest.fixture(scope="module")
def smpl_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("smpl_models")
    write_smpl_model(root / "smpl")  # DIR/smpl/SMPL_NEUTRAL.pkl
    return root


@pytest.fixture(scope="module")
def smpl(smpl_dir):
    return create_body_model(BodyConfig("smpl", str(smpl_dir)))


def _smpl_random_params(n: int, seed: int, root: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pose = 0.35 * torch.randn(n, NUM_JOINTS, 3, generator=g)
    if not root:
        pose[:, 0] = 0.0
    betas = torch.randn(10, generator=g)
    return pose, betas


def test_smpl_model_loads(smpl):
    assert isinstance(smpl, SmplBody) and smpl.name == "smpl"
    assert smpl.num_vertices == NUM_VERTICES and smpl.num_bones == NUM_JOINTS and smpl.shape_dim == 10
    assert smpl.parents.tolist()[0] == -1 and smpl.parents.tolist()[1:4] == [0, 0, 0]
    assert smpl.faces.dtype == np.int64 and smpl.faces.max() < NUM_VERTICES
    assert torch.allclose(smpl.skin_weights.sum(1), torch.ones(NUM_VERTICES), atol=1e-5)


@pytest.mark.parametrize("root", [False, True])
def test_smpl_matches_smplx_forward(smpl, smpl_dir, root):
    ref = smplx.SMPL(model_path=str(smpl_dir / "smpl" / "SMPL_NEUTRAL.pkl"), num_betas=10)
    pose, betas = _smpl_random_params(n=3, seed=11 + root, root=root)
    ours = smpl.posed_vertices(BodyParams(betas, pose, torch.zeros(3, 3), torch.zeros(3, 3)))
    with torch.no_grad():
        out = ref(
            betas=betas[None].expand(3, -1),
            body_pose=pose[:, 1:].reshape(3, -1),
            global_orient=pose[:, 0],  # smplx's global orientation is the root joint's rotation
            transl=torch.zeros(3, 3),
        )
    assert ours.shape == out.vertices.shape == (3, NUM_VERTICES, 3)
    assert (ours - out.vertices).abs().max() < 1e-5
    assert (ours - smpl.rest_vertices(betas)).abs().max() > 0.05  # the pose did something
    # Our world placement is a rigid transform applied after the body pose.
    go, tr = torch.tensor([[0.2, -0.4, 0.1]]), torch.tensor([[0.5, 1.0, -2.0]])
    placed = smpl.posed_vertices(BodyParams(betas, pose[:1], go, tr))[0]
    expected = ours[0] @ axis_angle_to_matrix(go[0]).T + tr[0]
    assert (placed - expected).abs().max() < 1e-5


def test_smpl_lbs_round_trip(smpl):
    pose, betas = _smpl_random_params(n=2, seed=21, root=True)
    orient = torch.tensor([[0.1, 2.0, 0.0], [0.0, -1.0, 0.3]])
    params = BodyParams(betas, pose, orient, torch.tensor([[0.2, 0.9, -1.0]] * 2))
    points, weights = _clothed_points(smpl, betas)
    for i, tf in enumerate(smpl.bone_transforms(params)):
        posed = smpl.canonical_to_posed(points, weights, betas, tf)
        back = smpl.posed_to_canonical(posed, weights, betas, tf)
        assert (back - points).norm(dim=1).max() < 1e-4
        body = smpl.canonical_to_posed(smpl.canonical_vertices(betas), smpl.skin_weights, betas, tf)
        assert (body - smpl.posed_vertices(params.frame(i))[0]).norm(dim=1).max() < 1e-4
    rest = smpl.inverse_lbs_points(smpl.posed_vertices(params.frame(1))[0], params.frame(1))
    assert (rest - smpl.rest_vertices(betas)).norm(dim=1).max() < 1e-5
    # SMPL's zero pose is its rest pose.
    zero = smpl.posed_vertices(BodyParams(betas, smpl.zero_pose(1), torch.zeros(1, 3), torch.zeros(1, 3)))[0]
    assert (zero - smpl.rest_vertices(betas)).abs().max() < 1e-6


def test_smpl_keypoints_and_conventions(smpl):
    pose, betas = _smpl_random_params(n=4, seed=31, root=False)
    verts = smpl.posed_vertices(BodyParams(betas, pose, torch.zeros(4, 3), torch.zeros(4, 3)))
    kp = smpl.keypoints(verts)
    assert kp.shape == (4, len(KEYPOINT_NAMES), 3)
    # Joint keypoints are the regressed joints; face/foot keypoints are single vertices.
    ids = smplx.vertex_ids.vertex_ids["smplh"]
    assert torch.allclose(kp[:, KP["nose"]], verts[:, ids["nose"]])
    assert torch.allclose(kp[:, KP["left_heel"]], verts[:, ids["LHeel"]])
    rest = smpl.rest_vertices(torch.zeros(10))
    rk = smpl.keypoints(rest[None])[0]
    joints = smpl.J_regressor @ rest
    assert torch.allclose(rk[KP["left_knee"]], joints[4])
    assert torch.allclose(rk[KP["right_wrist"]], joints[21])
    # Same conventions as Anny: Y-up, facing +Z, left = +X; the star pose spreads the legs.
    assert rk[KP["nose"], 1] > rk[KP["left_ankle"], 1] + 1.0
    assert rk[KP["nose"], 2] > (rk[KP["left_ear"], 2] + rk[KP["right_ear"], 2]) / 2
    assert rk[KP["left_shoulder"], 0] > 0 > rk[KP["right_shoulder"], 0]
    ck = smpl.keypoints(smpl.canonical_vertices(torch.zeros(10))[None])[0]
    assert ck[KP["left_ankle"], 0] > rk[KP["left_ankle"], 0] + 0.2
    assert ck[KP["right_ankle"], 0] < rk[KP["right_ankle"], 0] - 0.2
    # Beta 0 of the made-up model scales height.
    assert smpl.rest_vertices(torch.eye(10)[0] * 2)[:, 1].max() > rest[:, 1].max() + 0.01


def test_smpl_works_with_motion(smpl):
    pose, orient, transl = motion(smpl, "walk", 4, np.random.default_rng(0))
    assert pose.shape == (4, NUM_JOINTS, 3)
    verts = smpl.posed_vertices(BodyParams(smpl.default_shape(), pose, orient, transl))
    assert torch.isfinite(verts).all()


def test_find_model_file_locations(tmp_path):
    flat = write_smpl_model(tmp_path / "flat")
    assert find_model_file("smpl", tmp_path / "flat") == flat
    nested = tmp_path / "nested" / "smpl" / "SMPL_NEUTRAL.pkl"
    nested.parent.mkdir(parents=True)
    nested.write_bytes(flat.read_bytes())
    assert find_model_file("smpl", tmp_path / "nested") == nested
    assert find_model_file("smpl", str(tmp_path / "nested")) == nested
    # Both layouts load (SmplBody directly: create_body_model caches per config).
    a, b = SmplBody("smpl", tmp_path / "flat"), SmplBody("smpl", tmp_path / "nested")
    assert torch.equal(a.v_template, b.v_template)


# ---- error paths ---------------------------------------------------------------------------------


def _assert_one_line_naming(err: pytest.ExceptionInfo, name: str) -> None:
    msg = str(err.value)
    assert name in msg, msg
    assert "\n" not in msg.strip(), msg


def test_smpl_without_dir_is_a_user_error():
    with pytest.raises(UserError) as err:
        create_body_model(BodyConfig("smpl", None))
    _assert_one_line_naming(err, "SMPL_NEUTRAL.pkl")
    with pytest.raises(UserError) as err:
        SmplBody("smplx", None)
    _assert_one_line_naming(err, "SMPLX_NEUTRAL.npz")


def test_smpl_missing_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError) as err:
        create_body_model(BodyConfig("smpl", str(tmp_path / "does-not-exist")))
    _assert_one_line_naming(err, "SMPL_NEUTRAL.pkl")


def test_smpl_dir_without_file_is_a_user_error(tmp_path):
    (tmp_path / "smpl").mkdir()
    (tmp_path / "smpl" / "SMPL_MALE.pkl").write_bytes(b"x")  # not the neutral model
    with pytest.raises(UserError) as err:
        create_body_model(BodyConfig("smpl", str(tmp_path)))
    _assert_one_line_naming(err, "SMPL_NEUTRAL.pkl")
    assert str(tmp_path) in str(err.value)


def test_smpl_corrupt_file_is_a_user_error(tmp_path):
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UserError) as err:
        SmplBody("smpl", tmp_path)
    assert "SMPL_NEUTRAL.pkl" in str(err.value)


def test_smpl_file_missing_arrays_is_a_user_error(tmp_path):
    import pickle

    path = write_smpl_model(tmp_path)
    data = pickle.loads(path.read_bytes())
    del data["shapedirs"]
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(UserError) as err:
        SmplBody("smpl", tmp_path)
    assert "SMPL_NEUTRAL.pkl" in str(err.value)


def test_smpl_wrong_topology_is_a_user_error(tmp_path):
    write_smpl_model(tmp_path, num_vertices=500)
    with pytest.raises(UserError) as err:
        SmplBody("smpl", tmp_path)
    assert "500 vertices" in str(err.value)


def test_unknown_body_model_is_a_user_error():
    with pytest.raises(UserError) as err:
        create_body_model(BodyConfig("bogus"))
    assert "bogus" in str(err.value) and "anny" in str(err.value)


# ---- the body a project carries (engine/body/baked.py) ----------------------------------------------


@pytest.mark.parametrize("kind", ["anny", "smpl"])
def test_baked_body_poses_like_the_model(anny, smpl, kind):
    """The arrays a project stores pose the body exactly as the model does: transforms, vertices, the
    canonical body, keypoints and bone heads, for poses it was not probed with, with gradients."""
    from engine.body.baked import BakedBody, bake_body

    model = anny if kind == "anny" else smpl
    shape = model.default_shape() + 0.1 * torch.randn(model.shape_dim, generator=torch.Generator().manual_seed(1))
    baked = BakedBody(bake_body(model, shape))
    params = _params(model, "walk", 6, seed=5, shape=shape)
    params.pose[:, :] += 0.3 * torch.randn(params.pose.shape, generator=torch.Generator().manual_seed(2))
    tf_m, v_m = model.posed(params)
    tf_b, v_b = baked.posed(params)
    assert (tf_m - tf_b).abs().max() < 1e-4
    assert (v_m - v_b).abs().max() < 1e-4  # metres: a tenth of a millimetre
    assert (model.canonical_vertices(shape) - baked.canonical_vertices(shape)).abs().max() < 1e-4
    assert torch.allclose(model.keypoints(v_m), baked.keypoints(v_b), atol=1e-4)
    assert torch.allclose(model.bone_heads(shape), baked.bone_heads(shape))
    assert baked.bone_names == model.bone_names and baked.semantic_bones == model.semantic_bones
    assert baked.head_bones == model.head_bones and baked.hand_bones == model.hand_bones
    assert torch.allclose(baked.local_rotvec(torch.eye(3)), model.local_rotvec(torch.eye(3)))
    pose = params.pose.clone().requires_grad_()
    baked.body_transforms(shape, pose).sum().backward()
    assert torch.isfinite(pose.grad).all() and pose.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="another shape"):
        baked.rest_vertices(shape + 0.05)
