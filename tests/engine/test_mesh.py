"""Mesh extraction, colouring, decimation, posing and export (engine.mesh)."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch
import trimesh

from engine.errors import UserError
from engine.mesh import (
    Mesh,
    color_mesh,
    count_faces_after,
    decimate,
    extract_mesh,
    pose_mesh,
    skinning_weights,
    write_mesh,
    write_sequence,
)
from engine.mesh import files as files_mod

CENTRE = np.array([0.013, 0.021, -0.017])  # off the grid points, so no SDF value is exactly 0
RADIUS = 0.5
LO, HI = [-1.0] * 3, [1.0] * 3
RES = 64
VOXEL = 2.0 / RES


def sphere_sdf(centre=CENTRE, radius=RADIUS):
    def f(p: np.ndarray) -> np.ndarray:
        return (np.linalg.norm(p - centre, axis=1) - radius).astype(np.float32)

    return f


def color_field(p: np.ndarray) -> np.ndarray:
    return (p + 1.0) / 2.0  # a linear field, in [0, 1] inside the box


@pytest.fixture(scope="module")
def sphere() -> Mesh:
    return extract_mesh(sphere_sdf(), LO, HI, resolution=RES)


def _edges(faces: np.ndarray) -> np.ndarray:
    """Directed edges [3F, 2]."""
    return np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])


def _face_normals(m: Mesh) -> np.ndarray:
    v = m.vertices.astype(np.float64)
    return np.cross(v[m.faces[:, 1]] - v[m.faces[:, 0]], v[m.faces[:, 2]] - v[m.faces[:, 0]])


# ---- extraction ---------------------------------------------------------------------------------


def test_sphere_radius_normals_topology(sphere):
    m = sphere
    assert m.vertices.dtype == np.float32 and m.faces.dtype == np.int64
    r = np.linalg.norm(m.vertices - CENTRE, axis=1)
    assert np.abs(r - RADIUS).max() < VOXEL / 2
    # Vertex and face normals point away from the centre.
    out = m.vertices - CENTRE
    assert np.all(np.sum(m.normals * out, axis=1) > 0)
    assert np.allclose(np.linalg.norm(m.normals, axis=1), 1.0, atol=1e-5)
    centroids = m.vertices[m.faces].mean(axis=1) - CENTRE
    assert np.all(np.sum(_face_normals(m) * centroids, axis=1) > 0)
    # Watertight and consistently wound: every directed edge once, its reverse once.
    directed = _edges(m.faces)
    assert len(np.unique(directed, axis=0)) == len(directed)
    undirected = np.unique(np.sort(directed, axis=1), axis=0)
    assert len(undirected) * 2 == len(directed)
    assert m.num_vertices - len(undirected) + m.num_faces == 2  # Euler characteristic of a sphere
    assert trimesh.Trimesh(m.vertices, m.faces, process=False).is_watertight


def test_band_matches_full_and_saves_queries():
    calls = {"n": 0}
    exact = sphere_sdf()

    def counted(p):
        calls["n"] += len(p)
        return exact(p)

    full = extract_mesh(counted, LO, HI, resolution=RES)
    n_full = calls["n"]
    calls["n"] = 0
    # A deliberately different approximate field (larger sphere): the band still covers the surface.
    banded = extract_mesh(counted, LO, HI, resolution=RES, band_fn=sphere_sdf(radius=0.55), band=0.15)
    n_band = calls["n"]
    assert n_full == (RES + 1) ** 3
    assert n_band < 0.25 * n_full
    np.testing.assert_array_equal(banded.faces, full.faces)
    np.testing.assert_array_equal(banded.vertices, full.vertices)


def test_largest_component_keeps_bigger_sphere():
    big, small = sphere_sdf(np.array([-0.45, 0.01, 0.02]), 0.4), sphere_sdf(np.array([0.6, 0.01, 0.02]), 0.25)

    def two(p):
        return np.minimum(big(p), small(p))

    both = extract_mesh(two, LO, HI, resolution=RES, largest_component=False)
    one = extract_mesh(two, LO, HI, resolution=RES)
    assert np.all(one.vertices[:, 0] < 0)
    assert one.num_faces < both.num_faces
    assert (both.vertices[:, 0] > 0).any()
    assert one.faces.max() == one.num_vertices - 1  # no unreferenced vertices left


def test_no_surface_raises():
    with pytest.raises(ValueError, match="no surface found"):
        extract_mesh(lambda p: np.ones(len(p), np.float32), LO, HI, resolution=16)


# ---- colour, decimation ------------------------------------------------------------------------


def test_color_mesh(sphere):
    colored = color_mesh(sphere, lambda p: color_field(p) * 1.5 - 0.2, chunk=1000)  # exceeds [0, 1]
    assert colored.colors.shape == (sphere.num_vertices, 3) and colored.colors.dtype == np.float32
    np.testing.assert_allclose(colored.colors, np.clip(color_field(sphere.vertices) * 1.5 - 0.2, 0, 1), atol=1e-6)
    assert sphere.colors is None  # input untouched


def test_decimate_keeps_colours(sphere):
    colored = color_mesh(sphere, color_field)
    assert count_faces_after(colored, 1000) == 1000
    small = decimate(colored, 1000)
    assert 0 < small.num_faces <= 1000
    assert small.colors is not None and small.colors.shape == (small.num_vertices, 3)
    # A linear colour field stays close to the field at the surviving vertices.
    assert np.abs(small.colors - color_field(small.vertices)).max() < 0.05
    assert np.all(np.sum(small.normals * (small.vertices - CENTRE), axis=1) > 0)
    assert decimate(small, 10**6) is small
    assert count_faces_after(small, 10**6) == small.num_faces


# ---- posing -------------------------------------------------------------------------------------


def test_pose_mesh_matches_body_model():
    from engine.body import BodyParams, create_body_model
    from engine.synth.motion import motion

    body = create_body_model()
    shape = body.default_shape()
    pose, orient, transl = motion(body, "turn", 3, np.random.default_rng(0))
    params = BodyParams(shape, pose, orient, transl)
    with torch.no_grad():
        canonical = body.canonical_vertices(shape)
        tfs = body.bone_transforms(params)
        expected = body.posed_vertices(params).numpy()
    colors = np.random.default_rng(1).uniform(size=(len(canonical), 3)).astype(np.float32)
    mesh = Mesh(canonical.numpy(), body.faces, colors)
    weights = skinning_weights(mesh.vertices, body, canonical)
    for i in range(3):
        posed = pose_mesh(mesh, body, shape, tfs[i], canonical, weights=weights if i else None)
        assert np.abs(posed.vertices - expected[i]).max() < 1e-3
        np.testing.assert_array_equal(posed.faces, mesh.faces)
        np.testing.assert_array_equal(posed.colors, colors)
        assert posed.normals is not None and posed.normals.shape == posed.vertices.shape


# ---- export -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colored_sphere(sphere) -> Mesh:
    return color_mesh(sphere, color_field)


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_write_and_read_back(tmp_path, colored_sphere, suffix):
    m = colored_sphere
    path = write_mesh(tmp_path / f"m{suffix}", m)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"m{suffix}"]  # no .mtl, no temp files
    loaded = trimesh.load(path, process=False)
    assert len(loaded.vertices) == m.num_vertices
    np.testing.assert_array_equal(np.asarray(loaded.faces), m.faces)
    np.testing.assert_allclose(loaded.vertices, m.vertices, atol=1e-5)
    rgb = np.asarray(loaded.visual.vertex_colors)[:, :3] / 255.0
    assert np.abs(rgb - m.colors).max() <= 1 / 255 + 1e-6
    data = path.read_bytes()
    if suffix == ".ply":
        assert b"property float nx" in data.split(b"end_header")[0]
    else:
        assert data.count(b"\nvn ") == m.num_vertices
        assert b"mtllib" not in data


def test_write_bare_arrays_without_colours(tmp_path, sphere):
    path = write_mesh(tmp_path / "bare.OBJ", sphere.vertices, sphere.faces)
    loaded = trimesh.load(path, process=False, file_type="obj")
    assert len(loaded.vertices) == sphere.num_vertices and len(loaded.faces) == sphere.num_faces


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_up_z_rotates(tmp_path, sphere, suffix):
    loaded = trimesh.load(write_mesh(tmp_path / f"z{suffix}", sphere, up="z"), process=False)
    v = sphere.vertices
    np.testing.assert_allclose(loaded.vertices, np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=1), atol=1e-5)
    top = np.argmax(v[:, 1])  # the highest point (+Y) ends up highest in Z
    assert np.argmax(np.asarray(loaded.vertices)[:, 2]) == top


def test_unsupported_suffix(tmp_path, sphere):
    with pytest.raises(UserError, match="unsupported mesh format"):
        write_mesh(tmp_path / "m.stl", sphere)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_targets(tmp_path, sphere):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        write_mesh(blocker / "m.ply", sphere)
    with pytest.raises(UserError, match="does not exist"):
        write_mesh(tmp_path / "missing" / "m.obj", sphere)
    (tmp_path / "adir.ply").mkdir()
    with pytest.raises(UserError, match="cannot write"):
        write_mesh(tmp_path / "adir.ply", sphere)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.ply", "file"]
    assert blocker.read_text() == "x" and list((tmp_path / "adir.ply").iterdir()) == []


def test_read_only_folder(tmp_path, sphere):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        probe = ro / "probe"
        try:
            probe.write_text("")
            probe.unlink()
            pytest.skip("read-only folders are writable for this user (root)")
        except PermissionError:
            pass
        with pytest.raises(UserError, match="permission denied"):
            write_mesh(ro / "m.ply", sphere)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_failed_write_keeps_existing_file(tmp_path, sphere, monkeypatch):
    target = tmp_path / "m.ply"
    write_mesh(target, sphere)
    before = target.read_bytes()

    def half_then_fail(f, *args):
        f.write(b"ply\npartial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files_mod, "_write_ply", half_then_fail)
    with pytest.raises(UserError, match="No space left"):
        write_mesh(target, sphere)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.ply"]


def test_write_sequence(tmp_path, sphere):
    folder = tmp_path / "seq" / "frames"
    paths = write_sequence(folder, (sphere for _ in range(3)), fmt="ply")
    assert [p.name for p in paths] == [f"frame_{i:06d}.ply" for i in range(3)]
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in paths]
    with pytest.raises(UserError, match="not empty"):
        write_sequence(folder, [sphere], fmt="ply")
    # Overwriting with a shorter sequence leaves exactly the new frames.
    write_sequence(folder, [sphere, sphere], fmt="obj", overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["frame_000000.obj", "frame_000001.obj"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        write_sequence(other, [sphere])
    with pytest.raises(UserError, match="unsupported"):
        write_sequence(tmp_path / "x", [sphere], fmt="stl")


def test_write_bare_arrays_with_colours(tmp_path, sphere):
    # Callers without a Mesh (engine/synth/scene.py) pass vertices, faces and colours.
    write_mesh(tmp_path / "arrays.ply", sphere.vertices, sphere.faces, np.full((sphere.num_vertices, 3), 0.5))
    loaded = trimesh.load(tmp_path / "arrays.ply", process=False)
    assert len(loaded.faces) == sphere.num_faces
    assert np.all(np.asarray(loaded.visual.vertex_colors)[:, :3] == 128)


def test_band_too_narrow_warns(caplog):
    # The approximate surface (r = 0.7) is 0.2 from the real one, the band only 0.1 wide.
    with caplog.at_level("WARNING", logger="engine.mesh.extract"):
        extract_mesh(sphere_sdf(), LO, HI, resolution=32, band_fn=sphere_sdf(radius=0.7), band=0.1)
    assert "leaves the band" in caplog.text
