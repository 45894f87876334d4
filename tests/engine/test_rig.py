"""The rigged avatar (`export --rigged`): skin weights, the glTF file read back by other readers (a hand-written
GLB parser here, trimesh, Blender), posing through the file's data with the glTF skinning equation against
`export --frame k`, the motion/turntable video, and bad input."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import trimesh

from engine.body import BodyConfig, create_body_model
from engine.cli import main as cli_main
from engine.errors import UserError
from engine.export import ExportConfig, RigConfig, export_job, rigged_job
from engine.geometry.lbs import lbs
from engine.jobs import run_job
from engine.preview import PreviewConfig, preview_job
from engine.rig import (
    MAX_INFLUENCES,
    WeightConfig,
    build_skeleton,
    dense_weights,
    limit_influences,
    rest_transforms,
    transfer_weights,
)

from .smpl_fixture import write_smpl_model

RES = 64  # marching-cubes resolution: small meshes keep the tests quick
FRAMES = (0, 4, 7, 9)  # 4 and 9 are held out
MEAN_MM = 2.0
BLENDER = shutil.which("blender")
CHECK_SCRIPT = Path(__file__).with_name("blender_rig_check.py")


# ---- reading a .glb without the library that wrote it -------------------------------------------------------

_COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def read_glb(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2 and length == len(data)
    n_json, kind = struct.unpack_from("<I4s", data, 12)
    assert kind == b"JSON"
    doc = json.loads(data[20 : 20 + n_json])
    n_bin, kind = struct.unpack_from("<I4s", data, 20 + n_json)
    assert kind == b"BIN\0"
    return doc, data[28 + n_json : 28 + n_json + n_bin]


def accessor(doc: dict, blob: bytes, i: int) -> np.ndarray:
    a = doc["accessors"][i]
    view = doc["bufferViews"][a["bufferView"]]
    dtype = np.dtype(_COMPONENTS[a["componentType"]])
    width = _WIDTH[a["type"]]
    start = view.get("byteOffset", 0) + a.get("byteOffset", 0)
    assert "byteStride" not in view  # the writer packs tightly
    out = np.frombuffer(blob, dtype, a["count"] * width, start).reshape(a["count"], width)
    return out.reshape(-1, 4, 4).transpose(0, 2, 1) if a["type"] == "MAT4" else out  # MAT4: column-major


def _quat_matrix(q) -> np.ndarray:
    x, y, z, w = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip


def _trs(t, q) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = _quat_matrix(q)
    m[:3, 3] = t
    return m


def node_globals(doc: dict, blob: bytes, key: int | None) -> dict[int, np.ndarray]:
    """Global matrix of every node, with the first animation's key `key` applied (None: the nodes' own TRS)."""
    local = {i: _trs(n.get("translation", [0, 0, 0]), n.get("rotation", [0, 0, 0, 1])) for i, n in enumerate(doc["nodes"])}
    if key is not None:
        anim = doc["animations"][0]
        keyed: dict[int, dict] = {}
        for ch in anim["channels"]:
            s = anim["samplers"][ch["sampler"]]
            keyed.setdefault(ch["target"]["node"], {})[ch["target"]["path"]] = accessor(doc, blob, s["output"])[key]
        for i, trs in keyed.items():
            n = doc["nodes"][i]
            local[i] = _trs(trs.get("translation", n.get("translation", [0, 0, 0])),
                            trs.get("rotation", n.get("rotation", [0, 0, 0, 1])))
    out: dict[int, np.ndarray] = {}

    def visit(i: int, parent: np.ndarray) -> None:
        out[i] = parent @ local[i]
        for c in doc["nodes"][i].get("children", []):
            visit(c, out[i])

    for root in doc["scenes"][doc.get("scene", 0)]["nodes"]:
        visit(root, np.eye(4))
    return out


def skinned_positions(path: Path, key: int | None) -> np.ndarray:
    """The skinned mesh's vertices by glTF's skinning equation: Σ_i w_i · (global(joint_i) · IBM_i) · v."""
    doc, blob = read_glb(path)
    node = next(n for n in doc["nodes"] if "skin" in n)
    prim = doc["meshes"][node["mesh"]]["primitives"][0]["attributes"]
    skin = doc["skins"][node["skin"]]
    v = accessor(doc, blob, prim["POSITION"]).astype(np.float64)
    joints = accessor(doc, blob, prim["JOINTS_0"]).astype(np.int64)
    weights = accessor(doc, blob, prim["WEIGHTS_0"]).astype(np.float64)
    ibm = accessor(doc, blob, skin["inverseBindMatrices"]).astype(np.float64)
    g = node_globals(doc, blob, key)
    joint_matrix = np.stack([g[j] @ ibm[b] for b, j in enumerate(skin["joints"])])
    m = np.einsum("vi,viab->vab", weights, joint_matrix[joints])
    return np.einsum("vab,vb->va", m[:, :3, :3], v) + m[:, :3, 3]


def obj_vertices(path: Path) -> np.ndarray:
    return np.array([[float(x) for x in line.split()[1:4]] for line in path.read_text().splitlines()
                     if line.startswith("v ")])


# ---- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(fitted_tiny, tmp_path_factory) -> Path:
    """The fitted small project without any bake: the rig carries vertex colours."""
    proj = tmp_path_factory.mktemp("rig") / "project"
    shutil.copytree(fitted_tiny, proj, ignore=shutil.ignore_patterns("texture"))
    return proj


@pytest.fixture(scope="module")
def rigged(project, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rigged") / "avatar.glb"
    return out, run_job(rigged_job(project, out, RigConfig(resolution=RES)))


@pytest.fixture(scope="module")
def frame_objs(project, tmp_path_factory) -> dict[int, np.ndarray]:
    """`export --frame k` of the same mesh, the reference every rig is posed against."""
    d = tmp_path_factory.mktemp("frames")
    out = {}
    for k in FRAMES:
        run_job(export_job(project, d / f"f{k}.obj", ExportConfig(resolution=RES, frame=k)))
        out[k] = obj_vertices(d / f"f{k}.obj")
    return out


# ---- skeleton ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["anny", "smpl"])
def test_pruned_skeleton_poses_the_body_exactly(model, tmp_path):
    """Every merged bone moves rigidly with the kept bone it joins, in every pose the skeleton was built for:
    its skinning matrix from the bind pose (T_j(pose) T_j(bind)⁻¹, what the glTF applies) is the kept bone's."""
    import torch

    if model == "smpl":
        write_smpl_model(tmp_path / "smpl")
        body = create_body_model(BodyConfig("smpl", str(tmp_path)))
    else:
        body = create_body_model(BodyConfig("anny"))
    shape = body.default_shape()
    g = torch.Generator().manual_seed(0)
    pose = torch.zeros(3, body.num_bones, 3)
    moved = sorted(set(body.semantic_bones.values()))
    pose[:, moved] = 0.4 * torch.randn(3, len(moved), 3, generator=g)
    bind = rest_transforms(body, shape, "t-pose").double()
    tfs = torch.cat([body.body_transforms(shape, pose), body.star_transforms(shape)[None], bind[None].float()]).double()
    sk = build_skeleton(body, tfs)
    if model == "anny":
        assert sk.num_bones == 17  # of 104
    assert sk.parents[0] == -1 and all(p < b for b, p in enumerate(sk.parents))  # parents first
    assert {"Hips", "LeftUpperArm", "RightLowerLeg", "LeftHand", "Head"} <= set(sk.names)
    skin = tfs @ torch.linalg.inv(bind)[None]  # [N, J, 4, 4]
    kept = torch.as_tensor(sk.bones)[torch.as_tensor(sk.merge)]  # the kept bone every bone moves with
    assert float((skin - skin[:, kept]).abs().max()) < 1e-4
    # And the body skinned from the bind pose with the merged weights is the body skinned with all of its own.
    rest_bind = lbs(body.rest_vertices(shape).double(), body.skin_weights.double(), bind)
    merged = torch.as_tensor(sk.merged_weights(body.skin_weights.numpy()))
    for m in skin:
        want = lbs(rest_bind, body.skin_weights.double(), m)
        got = lbs(rest_bind, merged, m[torch.as_tensor(sk.bones)])
        assert float((got - want).abs().max()) < 1e-5


# ---- weights -------------------------------------------------------------------------------------------------


def test_limit_influences_keeps_the_four_largest_and_normalises():
    rng = np.random.default_rng(0)
    w = rng.random((500, 17)) ** 4
    w[:5] = 0.0
    w[:5, 3] = 1.0  # a single influence
    joints, top = limit_influences(w)
    assert joints.shape == (500, MAX_INFLUENCES) and top.dtype == np.float32
    assert np.all(np.abs(top.sum(1) - 1.0) <= 1e-6) and np.isfinite(top).all() and (top >= 0).all()
    for i in range(5, 500, 37):
        want = np.sort(np.argsort(-w[i])[:4])
        assert np.array_equal(np.sort(joints[i]), want)
        np.testing.assert_allclose(top[i], w[i, joints[i]] / w[i, joints[i]].sum(), atol=1e-6)
    assert top[0, 0] == 1.0 and joints[0, 0] == 3 and (top[0, 1:] == 0).all()


def _strip(y: float) -> tuple[np.ndarray, np.ndarray]:
    """A grid in the plane z = 0 from x = -0.2 to 0.2 at height y (40 × 10 vertices)."""
    xs, ys = np.meshgrid(np.linspace(-0.2, 0.2, 40), np.linspace(y - 0.05, y + 0.05, 10))
    v = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], 1)
    f = []
    for r in range(9):
        for c in range(39):
            a = r * 40 + c
            f += [[a, a + 1, a + 40], [a + 1, a + 41, a + 40]]  # facing +z, away from the legs
    return v, np.array(f)


def test_weights_of_a_skirt_between_two_legs_do_not_split():
    """Two 'legs' (long triangles at x = ±0.1, z = -0.1, one bone each) and a 'skirt' in front of them (z = 0):
    the nearest body point switches legs at x = 0, so without smoothing the skirt's weights jump from one leg
    to the other between two neighbouring vertices; smoothed, they change gradually across its front."""
    legs = []
    for x in (-0.1, 0.1):
        legs.append([[x - 0.02, -1.0, -0.1], [x + 0.02, -1.0, -0.1], [x, 1.0, -0.1]])
    body_v = np.array(legs, np.float64).reshape(-1, 3)
    body_f = np.array([[0, 1, 2], [3, 4, 5]])
    body_w = np.repeat(np.eye(2), 3, axis=0)  # left leg → bone 0, right leg → bone 1
    v, f = _strip(0.0)
    jumps = {}
    for smooth in (0.0, 1.0):
        joints, w = transfer_weights(v, f, None, body_v, body_f, body_w, WeightConfig(near=0.02, far=0.06, smooth=smooth))
        dense = dense_weights(joints, w, 2)
        assert np.all(np.abs(w.sum(1) - 1.0) <= 1e-4) and np.isfinite(w).all()
        row = dense.reshape(10, 40, 2)[5, :, 0]  # bone 0's weight along the middle row, left to right
        jumps[smooth] = np.abs(np.diff(row)).max()
    assert jumps[0.0] > 0.9  # hard split
    assert jumps[1.0] < 0.15, jumps  # a gradual blend


def test_rig_weights_are_normalised_with_at_most_four_influences(rigged):
    path, result = rigged
    doc, blob = read_glb(path)
    prim = doc["meshes"][0]["primitives"][0]["attributes"]
    joints = accessor(doc, blob, prim["JOINTS_0"])
    weights = accessor(doc, blob, prim["WEIGHTS_0"]).astype(np.float64)
    assert joints.shape[1] == weights.shape[1] == 4  # at most four influences
    assert np.isfinite(weights).all() and (weights >= 0).all()
    assert np.abs(weights.sum(1) - 1.0).max() <= 1e-4
    assert joints.max() < result["bones"]


# ---- the file ------------------------------------------------------------------------------------------------


def test_gltf_structure(rigged, project):
    path, result = rigged
    doc, blob = read_glb(path)
    assert doc["asset"]["version"] == "2.0"
    names = [n.get("name") for n in doc["nodes"]]
    skin = doc["skins"][0]
    joint_names = [names[j] for j in skin["joints"]]
    assert len(joint_names) == result["bones"] == 17, joint_names  # Anny's 104 bones: the 15 fitted and the hands
    for name in ("Hips", "Spine", "Chest", "Neck", "Head", "LeftUpperArm", "LeftLowerArm", "LeftHand",
                 "RightUpperLeg", "RightLowerLeg", "RightFoot"):
        assert name in joint_names
    parent = {c: i for i, n in enumerate(doc["nodes"]) for c in n.get("children", [])}
    by_name = {n: i for i, n in enumerate(names)}
    assert names[parent[by_name["LeftLowerArm"]]] == "LeftUpperArm"
    assert names[parent[by_name["LeftHand"]]] == "LeftLowerArm"
    assert names[parent[by_name["Hips"]]] == "Armature"
    # One scene: the armature and the skinned mesh node.
    roots = doc["scenes"][0]["nodes"]
    assert sorted(names[r] for r in roots) == ["Armature", "Avatar"]
    assert "skin" in doc["nodes"][by_name["Avatar"]] and "mesh" in doc["nodes"][by_name["Avatar"]]
    # Inverse bind matrices: each is the inverse of its joint's global matrix in the file's bind pose.
    ibm = accessor(doc, blob, skin["inverseBindMatrices"]).astype(np.float64)
    g = node_globals(doc, blob, None)
    for b, j in enumerate(skin["joints"]):
        np.testing.assert_allclose(g[j] @ ibm[b], np.eye(4), atol=1e-5)
    # One animation: a translation and a rotation key per joint and frame, at the project's frame rate.
    (anim,) = doc["animations"]
    assert len(anim["channels"]) == 2 * result["bones"]
    times = accessor(doc, blob, anim["samplers"][0]["input"])[:, 0]
    fps = json.loads((project / "project.json").read_text())["fps"]
    np.testing.assert_allclose(times, np.arange(10) / fps, atol=1e-6)
    assert all(s["interpolation"] == "LINEAR" for s in anim["samplers"])

    # Vertex colours (no bake in this project): COLOR_0, varied.
    colors = accessor(doc, blob, doc["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"])
    assert colors.shape == (result["vertices"], 3) and len(np.unique(colors, axis=0)) > 50

    # A second reader: trimesh sees one mesh with the same vertices and triangles, bind pose in place.
    scene = trimesh.load(path, force="scene", process=False)
    (geom,) = scene.geometry.values()
    assert len(geom.vertices) == result["vertices"] and len(geom.faces) == result["faces"]
    bind = accessor(doc, blob, doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"])
    np.testing.assert_allclose(np.asarray(geom.vertices), bind, atol=1e-6)


def test_posing_through_the_gltf_matches_export_frame(rigged, frame_objs):
    """The file's own data posed by the glTF skinning equation (computed here, independently of the writer)
    against `export --frame k`, held-out frames (4, 9) included."""
    path, _ = rigged
    for k in FRAMES:
        got = skinned_positions(path, k)
        want = frame_objs[k]
        assert got.shape == want.shape
        err = np.linalg.norm(got - want, axis=1)
        assert err.mean() * 1000 <= MEAN_MM, (k, err.mean() * 1000)
        assert np.percentile(err, 99) < 0.02, (k, np.percentile(err, 99))


def test_a_pose_rig_poses_the_same_and_no_animation_has_none(project, frame_objs, tmp_path):
    out = tmp_path / "a.glb"
    r = run_job(rigged_job(project, out, RigConfig(resolution=RES, rest="a-pose", fps=12.0)))
    doc, blob = read_glb(out)
    times = accessor(doc, blob, doc["animations"][0]["samplers"][0]["input"])[:, 0]
    np.testing.assert_allclose(times, np.arange(10) / 12.0, atol=1e-6)
    # The bind pose is an A-pose: the hands hang below the shoulders, away from the body.
    names = [n.get("name") for n in doc["nodes"]]
    g = node_globals(doc, blob, None)
    hand, shoulder = g[names.index("LeftHand")][:3, 3], g[names.index("LeftUpperArm")][:3, 3]
    elevation = np.degrees(np.arctan2(hand[1] - shoulder[1], hand[0] - shoulder[0]))
    assert -55 < elevation < -35, elevation
    for k in (4, 7):
        err = np.linalg.norm(skinned_positions(out, k) - frame_objs[k], axis=1)
        assert err.mean() * 1000 <= MEAN_MM, (k, err.mean() * 1000)
    still = tmp_path / "still.glb"
    run_job(rigged_job(project, still, RigConfig(resolution=RES, animation=False)))
    doc, _ = read_glb(still)
    assert "animations" not in doc or not doc["animations"]
    assert len(doc["skins"][0]["joints"]) == r["bones"]


def test_bad_rig_requests_are_clear(project, tmp_path):
    with pytest.raises(UserError, match=r"\.glb"):
        run_job(rigged_job(project, tmp_path / "a.obj"))
    with pytest.raises(UserError, match="--fps"):
        run_job(rigged_job(project, tmp_path / "a.glb", RigConfig(fps=0.0)))
    with pytest.raises(UserError, match="rest"):
        run_job(rigged_job(project, tmp_path / "a.glb", RigConfig(rest="x-pose")))
    (tmp_path / "b.glb").write_bytes(b"x")
    with pytest.raises(UserError, match="--overwrite"):
        run_job(rigged_job(project, tmp_path / "b.glb"))
    # The command line: rig options need --rigged, and --rigged takes no --frame.
    assert cli_main(["-q", "export", str(project), str(tmp_path / "c.obj"), "--rest", "t-pose"]) == 2
    assert cli_main(["-q", "export", str(project), str(tmp_path / "c.glb"), "--rigged", "--frame", "2"]) == 2
    assert not (tmp_path / "c.obj").exists() and not (tmp_path / "c.glb").exists()


def test_render_motion_and_turntable(project, tmp_path):
    def frames_of(path):
        with av.open(str(path)) as c:
            return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]

    rig = RigConfig(resolution=RES)
    r = run_job(preview_job(project, tmp_path / "m.mp4", PreviewConfig(size=96, rig=rig)))
    motion = frames_of(tmp_path / "m.mp4")
    assert r["frames"] == len(motion) == 10 and motion[0].shape == (96, 96, 3)
    assert float(np.abs(motion[0].astype(int) - motion[5].astype(int)).mean()) > 0.5  # it moves
    run_job(preview_job(project, tmp_path / "t.mp4", PreviewConfig(mode="turntable", size=96, turn_frames=4, rig=rig)))
    turn = frames_of(tmp_path / "t.mp4")
    assert len(turn) == 4
    assert float(np.abs(turn[0].astype(int) - turn[1].astype(int)).mean()) > 0.5  # it turns
    with pytest.raises(UserError, match="mp4"):
        run_job(preview_job(project, tmp_path / "m.avi"))
    with pytest.raises(UserError, match="--size"):
        run_job(preview_job(project, tmp_path / "n.mp4", PreviewConfig(size=99)))


# ---- a real client -------------------------------------------------------------------------------------------


@pytest.mark.skipif(BLENDER is None, reason="blender is not installed")
def test_blender_round_trip(project, tmp_path):
    """Blender imports the textured rig: the armature's bones, vertex groups, the image, one key per frame, and
    the evaluated mesh at frame k against `export --frame k` of the same textured mesh."""
    proj = tmp_path / "project"
    shutil.copytree(project, proj)
    out = tmp_path / "rig.glb"
    r = run_job(rigged_job(proj, out, RigConfig(resolution=RES, texture=1024)))
    assert r["texture"] == 1024
    # trimesh reads the embedded texture too.
    (geom,) = trimesh.load(out, force="scene", process=False).geometry.values()
    assert geom.visual.kind == "texture" and geom.visual.material.baseColorTexture.size == (1024, 1024)
    fps = r["fps"]
    p = subprocess.run([BLENDER, "-b", "--factory-startup", "--python-exit-code", "1", "--python", str(CHECK_SCRIPT),
                        "--", str(out), str(fps), str(tmp_path / "b.npz"), *map(str, FRAMES)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert len(report["bones"]) == r["bones"] and set(report["bones"]) == set(r["bone_names"])
    assert set(report["vertex_groups"]) == set(r["bone_names"])
    assert report["ungrouped_vertices"] == 0 and report["max_groups_per_vertex"] <= 4
    assert report["images"] == [[1024, 1024]]
    assert report["keys_per_fcurve"] == [r["frames"]]  # one key per frame on every curve ...
    assert np.allclose(np.diff(report["keys"]), 1.0) and len(report["keys"]) == r["frames"]  # ... on consecutive frames
    got = np.load(tmp_path / "b.npz")
    # Blender's vertices, matched to the file's by their undeformed position (the importer may reorder them).
    doc, blob = read_glb(out)
    bind = accessor(doc, blob, doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"]).astype(np.float64)
    from scipy.spatial import cKDTree

    d, idx = cKDTree(got["rest"]).query(bind)
    assert d.max() < 1e-4
    for k in FRAMES:
        run_job(export_job(proj, tmp_path / f"f{k}.obj", ExportConfig(resolution=RES, texture=1024, frame=k)))
        want = obj_vertices(tmp_path / f"f{k}.obj")
        err = np.linalg.norm(got[f"frame_{k}"][idx] - want, axis=1)
        assert err.mean() * 1000 <= MEAN_MM, (k, err.mean() * 1000)
