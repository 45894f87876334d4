"""The UV-mapped mesh: atlas (xatlas), texel rasterisation, dilation, texture lookups, the textured
OBJ/MTL/PNG and glTF files read back by other readers (trimesh, pygltflib, Blender), the textured
render, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pygltflib
import pytest
import trimesh
from scipy.ndimage import distance_transform_edt
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import marching_cubes

from engine.errors import UserError
from engine.geometry.camera import Camera, look_at
from engine.geometry.texture_sampling import sample_texture, uv_to_texel
from engine.mesh import (
    BILINEAR_MARGIN,
    TEXTURED_FORMATS,
    Mesh,
    TexturedMesh,
    check_texture_size,
    dilate,
    extract_mesh,
    load_textured,
    points,
    save_textured,
    surface_normals,
    texel_samples,
    uv_atlas,
    write_textured,
)
from engine.mesh.uv import TEXTURE_MAX, TEXTURE_MIN
from engine.render.raycast import render_mesh

S = TEXTURE_MIN  # the smallest texture keeps the tests quick
PADDING = 4
RING, TUBE = 0.5, 0.2  # torus radii (genus 1: it cannot be one chart)
RES = 64
LO, HI = [-1.0] * 3, [1.0] * 3
VOXEL = 2.0 / RES


def torus_sdf(p: np.ndarray) -> np.ndarray:
    q = np.stack([np.linalg.norm(p[:, [0, 2]], axis=1) - RING, p[:, 1]], axis=1)
    return (np.linalg.norm(q, axis=1) - TUBE).astype(np.float32)


def linear_colour(p: np.ndarray) -> np.ndarray:
    """A colour that changes by 0.5 per metre along each axis, in (0, 1) on the torus."""
    return ((np.asarray(p, np.float64) + 1.0) / 2.0).astype(np.float32)


@pytest.fixture(scope="module")
def torus() -> Mesh:
    return extract_mesh(torus_sdf, LO, HI, resolution=RES)


@pytest.fixture(scope="module")
def atlas(torus) -> TexturedMesh:
    return uv_atlas(torus, S, PADDING)


@pytest.fixture(scope="module")
def samples(atlas):
    return texel_samples(atlas)


@pytest.fixture(scope="module")
def gutter(atlas):
    return texel_samples(atlas, BILINEAR_MARGIN)


def _uv_area_texels(tm: TexturedMesh) -> np.ndarray:
    uv = tm.uvs[tm.faces].astype(np.float64) * tm.texture_size  # [F, 3, 2]
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    return 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])


def _surface_area(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    v = vertices.astype(np.float64)[faces]
    return 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)


def _charts(tm: TexturedMesh) -> np.ndarray:
    """Chart of each face [F]: xatlas splits vertices at seams, so charts share no vertex."""
    f = tm.faces
    rows, cols = np.concatenate([f[:, 0], f[:, 1]]), np.concatenate([f[:, 1], f[:, 2]])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(tm.num_vertices,) * 2)
    return connected_components(graph, directed=False)[1][f[:, 0]]


# ---- the atlas ----------------------------------------------------------------------------------


def test_atlas_keeps_the_mesh_and_splits_it_at_seams(torus, atlas):
    assert atlas.texture.shape == (S, S, 3) and not atlas.texture.any()
    assert atlas.uvs.min() >= 0.0 and atlas.uvs.max() <= 1.0
    np.testing.assert_array_equal(atlas.vertices, torus.vertices[atlas.source_vertex])
    np.testing.assert_array_equal(atlas.normals, torus.normals[atlas.source_vertex])
    # The same faces in the same order and winding, through the split vertices.
    np.testing.assert_array_equal(atlas.source_vertex[atlas.faces], torus.faces)
    assert atlas.num_vertices > torus.num_vertices  # a torus needs seams
    assert len(np.unique(_charts(atlas))) > 1


def test_texel_density_is_even_and_the_texture_well_used(torus, atlas):
    uv_area = _uv_area_texels(atlas)
    area = _surface_area(torus.vertices, torus.faces)
    ratio = uv_area / np.maximum(area, 1e-12)
    typical = area > np.median(area) / 4  # xatlas leaves out a few slivers; they get no UV area
    spread = ratio[typical] / np.median(ratio[typical])
    low, high = np.quantile(spread, [0.01, 0.99])
    assert 0.7 < low and high < 1.4, (low, high)
    # Padding around ~90 small charts takes much of a 1024² texture (a body at 2048² uses about half).
    used = uv_area.sum() / S**2
    assert 0.2 < used < 0.9, used


def test_each_texel_belongs_to_one_face_at_its_centre(atlas, samples):
    # Texel centres inside faces number the faces' UV area: overlapping charts would hold fewer.
    assert len(samples) == pytest.approx(_uv_area_texels(atlas).sum(), rel=2e-3)
    texel = samples.rows * S + samples.cols
    assert np.all(np.diff(texel) > 0)  # each texel once, in texel order
    # The barycentrics put each sample exactly at its texel's centre in UV space.
    uv = np.einsum("tk,tkd->td", samples.bary, atlas.uvs[atlas.faces[samples.face]])
    row, col = uv_to_texel(uv, S, S)
    assert np.abs(row - samples.rows).max() < 1e-3 and np.abs(col - samples.cols).max() < 1e-3
    assert samples.bary.min() >= 0.0 and np.allclose(samples.bary.sum(axis=1), 1.0, atol=1e-5)


def _reference_texels(tm: TexturedMesh) -> dict[int, list[int]]:
    """The slow, obvious twin of texel_samples: face by face, the texel centres strictly inside."""
    y, x = uv_to_texel(tm.uvs, S, S)
    hits: dict[int, list[int]] = {}
    for f, (i, j, k) in enumerate(tm.faces):
        xs, ys = x[[i, j, k]], y[[i, j, k]]
        cols = np.arange(max(0, int(np.ceil(xs.min()))), min(S - 1, int(np.floor(xs.max()))) + 1)
        rows = np.arange(max(0, int(np.ceil(ys.min()))), min(S - 1, int(np.floor(ys.max()))) + 1)
        if len(cols) == 0 or len(rows) == 0:
            continue
        cc, rr = np.meshgrid(cols, rows)
        t = np.array([[xs[0] - xs[2], xs[1] - xs[2]], [ys[0] - ys[2], ys[1] - ys[2]]])
        if abs(np.linalg.det(t)) < 1e-12:
            continue
        l01 = np.linalg.solve(t, np.stack([cc.ravel() - xs[2], rr.ravel() - ys[2]]))
        bary = np.vstack([l01, 1.0 - l01.sum(axis=0)])
        for texel in (rr.ravel() * S + cc.ravel())[(bary > 1e-5).all(axis=0)]:  # clearly inside
            hits.setdefault(int(texel), []).append(f)
    return hits


def test_faces_xatlas_leaves_out_cover_no_texels():
    """Raw marching cubes of a torus whose surface passes through grid points: the zero-area slivers
    there are left out by xatlas. They must not reach across the atlas or onto other charts' texels."""
    n = 65
    g = np.linspace(-1.0, 1.0, n)
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    volume = np.sqrt((np.sqrt(x**2 + z**2) - 0.5) ** 2 + y**2) - 0.25
    verts, faces, _, _ = marching_cubes(volume.astype(np.float32), 0.0, spacing=(2.0 / (n - 1),) * 3)
    mesh = Mesh(verts - 1.0, faces[:, ::-1].copy())  # outward winding, unwelded
    area = _surface_area(mesh.vertices, mesh.faces)
    assert (area < 1e-9).sum() > 20  # the case at hand
    tm = uv_atlas(mesh, S, PADDING)
    np.testing.assert_array_equal(tm.source_vertex[tm.faces], mesh.faces)
    np.testing.assert_array_equal(tm.vertices, mesh.vertices[tm.source_vertex])
    uv_area = _uv_area_texels(tm)
    assert (uv_area[area < 1e-9] == 0).any()  # collapsed onto a neighbour's UV
    assert len(texel_samples(tm)) == pytest.approx(uv_area.sum(), rel=2e-3)  # no overlaps
    uv = tm.uvs[tm.faces].astype(np.float64) * S
    longest_uv = np.linalg.norm(uv - uv[:, [1, 2, 0]], axis=2).max(axis=1)
    v = tm.vertices[tm.faces].astype(np.float64)
    longest = np.linalg.norm(v - v[:, [1, 2, 0]], axis=2).max(axis=1)
    texels_per_m = np.sqrt(uv_area.sum() / area.sum())
    assert (longest_uv <= 4.0 * texels_per_m * longest + 2.0).all()


def test_texel_samples_agree_with_the_slow_reference(atlas, samples):
    hits = _reference_texels(atlas)
    assert max(len(faces) for faces in hits.values()) == 1  # no two faces (so no two charts) overlap
    got = dict(zip((samples.rows * S + samples.cols).tolist(), samples.face.tolist()))
    assert all(got.get(texel) == faces[0] for texel, faces in hits.items())
    on_edges = len(got) - len(hits)  # centres on an edge, which the reference leaves out
    assert 0 <= on_edges < 1e-3 * len(hits)


def test_charts_keep_the_padding_apart(atlas, samples):
    chart = np.full((S, S), -1)
    chart[samples.rows, samples.cols] = _charts(atlas)[samples.face]
    for dy in range(-PADDING, PADDING + 1):
        for dx in range(0, PADDING + 1):
            if dy * dy + dx * dx >= PADDING**2 or (dx == 0 and dy <= 0):
                continue  # farther than the padding, or a shift already compared the other way round
            y0, y1 = max(0, -dy), S - max(0, dy)
            a, b = chart[y0:y1, : S - dx], chart[y0 + dy : y1 + dy, dx:]
            clash = (a >= 0) & (b >= 0) & (a != b)
            assert not clash.any(), f"texels of two charts {np.hypot(dy, dx):.1f} texels apart"


def test_margin_samples_reach_around_every_face(atlas, samples, gutter):
    """With the bilinear margin, texels near a face are sampled at its nearest point, centres keep theirs."""
    inside = dict(zip((samples.rows * S + samples.cols).tolist(), samples.face.tolist()))
    got = dict(zip((gutter.rows * S + gutter.cols).tolist(), gutter.face.tolist()))
    assert all(got[t] == f for t, f in inside.items())
    assert len(gutter) > len(samples)
    # Wherever a bilinear lookup lands on a face (corners and centroid here), slivers included, the
    # four texels it reads are sampled.
    covered = gutter.covered()
    uv = atlas.uvs[atlas.faces]  # [F, 3, 2]
    spots = np.concatenate([uv.reshape(-1, 2), uv.mean(axis=1)])
    row, col = uv_to_texel(spots, S, S)
    r0 = np.clip(np.floor(row).astype(int), 0, S - 2)
    c0 = np.clip(np.floor(col).astype(int), 0, S - 2)
    assert all(covered[r0 + dr, c0 + dc].all() for dr in (0, 1) for dc in (0, 1))
    assert not all(samples.covered()[r0 + dr, c0 + dc].all() for dr in (0, 1) for dc in (0, 1))


def test_texel_points_lie_on_the_surface_with_outward_normals(torus, atlas, gutter):
    p = points(atlas, gutter)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(torus.vertices), o3d.core.Tensor(torus.faces.astype(np.uint32)))
    distance = scene.compute_distance(o3d.core.Tensor(p)).numpy()
    # float32 noise on near-degenerate slivers stays far below 0.1 mm; a wrong face or weight would not.
    assert distance.max() < 1e-4 and np.median(distance) < 1e-7
    n = surface_normals(atlas, gutter)
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)
    ring = p.copy()
    ring[:, 1] = 0.0
    ring *= RING / np.linalg.norm(ring, axis=1, keepdims=True)  # nearest point of the torus's core circle
    outward = (p - ring) / np.linalg.norm(p - ring, axis=1, keepdims=True)
    assert np.quantile(np.sum(n * outward, axis=1), 0.001) > 0.95


# ---- texture lookups and dilation ---------------------------------------------------------------


def test_sample_texture_conventions():
    tex = np.array([[[0, 0, 0], [1, 0, 0]], [[0, 1, 0], [0, 0, 1]]], np.float32)  # row 0 is the top
    uv = np.array([[0.25, 0.75], [0.75, 0.75], [0.25, 0.25], [0.75, 0.25], [0.5, 0.75], [0.5, 0.5],
                   [0.0, 1.0], [1.0, 0.0]])
    want = [tex[0, 0], tex[0, 1], tex[1, 0], tex[1, 1], (tex[0, 0] + tex[0, 1]) / 2, tex.mean(axis=(0, 1)),
            tex[0, 0], tex[1, 1]]  # texel centres; halfway; the middle; clamped corners
    np.testing.assert_allclose(sample_texture(tex, uv), want, atol=1e-6)
    assert sample_texture(tex[..., 0], uv).shape == (len(uv),)


def test_painted_texture_gives_back_the_colour_at_every_vertex(atlas, gutter):
    tex = np.zeros((S, S, 3), np.float32)
    tex[gutter.rows, gutter.cols] = linear_colour(points(atlas, gutter))
    tex = dilate(tex, gutter.covered(), PADDING)
    error = np.abs(sample_texture(tex, atlas.uvs) - linear_colour(atlas.vertices)).max()
    # A lookup mixes texels sampled within √2 texels (in UV) of the vertex, where the colour differs by
    # at most its gradient (0.5 per metre) times that distance on the surface, with some stretch.
    texel_m = np.sqrt(_surface_area(atlas.vertices, atlas.faces).sum() / _uv_area_texels(atlas).sum())
    assert error < 0.5 * 2.0 * BILINEAR_MARGIN * texel_m, (error, texel_m)


def test_dilate_fills_a_ring_and_keeps_covered_texels(samples):
    covered = samples.covered()
    rng = np.random.default_rng(0)
    tex = np.where(covered[..., None], rng.uniform(0.1, 1.0, (S, S, 3)), 0.0).astype(np.float32)
    before = tex.copy()
    out = dilate(tex, covered, 3)
    np.testing.assert_array_equal(tex, before)  # the input is left alone
    np.testing.assert_array_equal(out[covered], tex[covered])
    distance, (near_r, near_c) = distance_transform_edt(~covered, return_indices=True)
    ring = ~covered & (distance <= 3)
    assert ring.sum() > 0.1 * covered.sum()
    assert (out[ring] > 0).all() and not out[~covered & (distance > 3)].any()
    # Each ring texel holds the colour of a covered texel as near as the nearest one.
    rr, cc = np.nonzero(ring)
    for i in rng.choice(len(rr), 300, replace=False):
        r, c = rr[i], cc[i]
        win = np.s_[max(0, r - 3) : r + 4, max(0, c - 3) : c + 4]
        same = np.all(tex[win] == out[r, c], axis=-1) & covered[win]
        ys, xs = np.nonzero(same)
        d = np.hypot(ys + max(0, r - 3) - r, xs + max(0, c - 3) - c)
        assert d.min() <= distance[r, c] + 1e-9


# ---- files --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def painted(atlas, gutter) -> tuple[TexturedMesh, tuple[int, int], np.ndarray]:
    """The atlas with a colour gradient and a red dot of radius 2 texels deep inside one chart.

    Returns the mesh, the dot's texel (row, col) and the surface point under it.
    """
    tex = np.zeros((S, S, 3), np.float32)
    tex[gutter.rows, gutter.cols] = linear_colour(points(atlas, gutter))
    tex = dilate(tex, gutter.covered(), PADDING)
    centres = texel_samples(atlas)
    chart = np.full((S, S), -1)
    chart[centres.rows, centres.cols] = _charts(atlas)[centres.face]
    p = points(atlas, centres)
    for t in np.argsort(-p[:, 0]):  # the outer rim first: any spot will do, as long as it is one chart's
        r, c = int(centres.rows[t]), int(centres.cols[t])
        win = chart[max(0, r - 8) : r + 9, max(0, c - 8) : c + 9]
        if win.shape == (17, 17) and (win == chart[r, c]).all():
            break
    else:
        raise AssertionError("no texel deep inside a chart")
    yy, xx = np.mgrid[:S, :S]
    tex[(yy - r) ** 2 + (xx - c) ** 2 <= 4] = (1.0, 0.0, 0.0)
    tm = TexturedMesh(atlas.vertices, atlas.faces, atlas.uvs, tex, atlas.source_vertex, atlas.normals)
    return tm, (r, c), p[t]


def _red_dot(image_u8: np.ndarray) -> tuple[float, float]:
    red = (image_u8[..., 0] > 230) & (image_u8[..., 1] < 25) & (image_u8[..., 2] < 25)
    rows, cols = np.nonzero(red)
    assert 9 <= len(rows) <= 13, len(rows)  # the 13-texel dot
    return rows.mean(), cols.mean()


def _surface_point_at(vertices, faces, rows, cols, at: tuple[float, float]) -> np.ndarray:
    """The point of the mesh whose texture coordinates (as image row, column per vertex) are `at`."""
    tr, tc = rows[faces], cols[faces]  # [F, 3]
    den = (tr[:, 1] - tr[:, 2]) * (tc[:, 0] - tc[:, 2]) + (tc[:, 2] - tc[:, 1]) * (tr[:, 0] - tr[:, 2])
    den = np.where(np.abs(den) > 1e-12, den, np.inf)
    l0 = ((tr[:, 1] - tr[:, 2]) * (at[1] - tc[:, 2]) + (tc[:, 2] - tc[:, 1]) * (at[0] - tr[:, 2])) / den
    l1 = ((tr[:, 2] - tr[:, 0]) * (at[1] - tc[:, 2]) + (tc[:, 0] - tc[:, 2]) * (at[0] - tr[:, 2])) / den
    bary = np.stack([l0, l1, 1.0 - l0 - l1], axis=1)
    inside = np.flatnonzero((bary >= -1e-6).all(axis=1) & np.isfinite(den))
    assert len(inside) >= 1, "no face under the red dot"
    f = inside[0]
    return bary[f] @ np.asarray(vertices, np.float64)[faces[f]]


def _assert_leftover_free(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_obj_mtl_png_read_back_with_trimesh(tmp_path, painted):
    tm, dot, spot = painted
    written = write_textured(tmp_path / "avatar.obj", tm)
    assert [p.name for p in written] == ["avatar.obj", "avatar.mtl", "avatar.png"]
    _assert_leftover_free(tmp_path)
    text = (tmp_path / "avatar.obj").read_text()
    assert "mtllib avatar.mtl" in text and "usemtl " in text
    assert "map_Kd avatar.png" in (tmp_path / "avatar.mtl").read_text()

    back = trimesh.load(tmp_path / "avatar.obj", process=False)
    assert isinstance(back, trimesh.Trimesh) and len(back.faces) == tm.num_faces
    image = np.asarray(back.visual.material.image.convert("RGB"))
    assert image.shape == (S, S, 3)
    uv = np.asarray(back.visual.uv)
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    # The red dot is where it was painted, and the UVs take it to the same surface point (OBJ: v up).
    assert _red_dot(image) == pytest.approx(dot, abs=1e-6)
    rows, cols = uv_to_texel(uv, S, S)
    assert np.linalg.norm(_surface_point_at(back.vertices, back.faces, rows, cols, dot) - spot) < 1e-4


def _accessor(gltf: pygltflib.GLTF2, blob: bytes, index: int) -> np.ndarray:
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    dtype = {5126: np.float32, 5125: np.uint32, 5123: np.uint16, 5121: np.uint8}[acc.componentType]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc.type]
    assert view.byteStride in (None, np.dtype(dtype).itemsize * width)  # tightly packed
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    return np.frombuffer(blob, dtype, count=acc.count * width, offset=start).reshape(acc.count, width)


def test_glb_read_back_with_pygltflib(tmp_path, painted):
    tm, dot, spot = painted
    assert write_textured(tmp_path / "avatar.glb", tm) == [tmp_path / "avatar.glb"]
    _assert_leftover_free(tmp_path)
    gltf = pygltflib.GLTF2().load(str(tmp_path / "avatar.glb"))
    blob = gltf.binary_blob()
    assert len(gltf.meshes) == 1 and len(gltf.meshes[0].primitives) == 1
    prim = gltf.meshes[0].primitives[0]
    assert prim.attributes.TEXCOORD_0 is not None and prim.attributes.NORMAL is not None
    st = _accessor(gltf, blob, prim.attributes.TEXCOORD_0)
    assert st.shape == (tm.num_vertices, 2) and st.min() >= 0.0 and st.max() <= 1.0
    normals = _accessor(gltf, blob, prim.attributes.NORMAL)
    np.testing.assert_allclose(normals, tm.normals, atol=1e-6)
    faces = _accessor(gltf, blob, prim.indices).reshape(-1, 3).astype(np.int64)
    vertices = _accessor(gltf, blob, prim.attributes.POSITION)
    assert len(faces) == tm.num_faces

    pbr = gltf.materials[prim.material].pbrMetallicRoughness
    assert pbr.metallicFactor == 0.0 and pbr.roughnessFactor == 1.0
    image = gltf.images[gltf.textures[pbr.baseColorTexture.index].source]
    assert len(gltf.images) == 1 and image.mimeType == "image/png" and image.bufferView is not None
    view = gltf.bufferViews[image.bufferView]
    png = np.frombuffer(blob, np.uint8, count=view.byteLength, offset=view.byteOffset or 0)
    decoded = cv2.imdecode(png, cv2.IMREAD_COLOR)[..., ::-1]
    assert decoded.shape == (S, S, 3)
    # glTF's texture origin is the top-left corner: row = t·H − 0.5. The dot must land on the same
    # surface point through the file's own coordinates (a missing or doubled v-flip moves it).
    assert _red_dot(decoded) == pytest.approx(dot, abs=1e-6)
    rows, cols = st[:, 1] * S - 0.5, st[:, 0] * S - 0.5
    assert np.linalg.norm(_surface_point_at(vertices, faces, rows, cols, dot) - spot) < 1e-4


def test_glb_read_back_with_trimesh_puts_the_texture_in_place(tmp_path, painted):
    tm, dot, spot = painted
    write_textured(tmp_path / "avatar.glb", tm)
    back = trimesh.load(tmp_path / "avatar.glb", force="mesh", process=False)
    image = np.asarray(back.visual.material.baseColorTexture.convert("RGB"))
    assert image.shape == (S, S, 3) and len(back.faces) == tm.num_faces
    rows, cols = uv_to_texel(back.visual.uv, S, S)  # trimesh hands UVs back with v up
    assert np.linalg.norm(_surface_point_at(back.vertices, back.faces, rows, cols, _red_dot(image)) - spot) < 1e-4


def test_obj_sequence_shares_one_material(tmp_path, painted):
    tm, _, _ = painted
    first = write_textured(tmp_path / "frame_000000.obj", tm)
    second = write_textured(tmp_path / "frame_000001.obj", tm, material=first[1])
    assert second == [tmp_path / "frame_000001.obj"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "frame_000000.mtl", "frame_000000.obj", "frame_000000.png", "frame_000001.obj"]
    back = trimesh.load(second[0], process=False)
    assert np.asarray(back.visual.material.image).shape[:2] == (S, S)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError):
        write_textured(tmp_path / "sub" / "frame_000002.obj", tm, material=first[1])
    with pytest.raises(ValueError):
        write_textured(tmp_path / "a.glb", tm, material=first[1])


def test_textured_files_turn_z_up(tmp_path, painted):
    tm, _, _ = painted
    write_textured(tmp_path / "z.obj", tm, up="z")
    back = trimesh.load(tmp_path / "z.obj", process=False)
    x, y, z = tm.vertices.T
    np.testing.assert_allclose(back.vertices, np.stack([x, -z, y], axis=1), atol=2e-6)


def test_save_and_load_textured(tmp_path, painted):
    tm, _, _ = painted
    folder = tmp_path / "texture"
    assert load_textured(folder) is None
    save_textured(folder, tm, {"size": S, "frames": [0, 1, 2]})
    _assert_leftover_free(folder)
    back, meta = load_textured(folder)
    assert meta == {"size": S, "frames": [0, 1, 2]}
    for name in ("vertices", "faces", "uvs", "source_vertex", "normals"):
        np.testing.assert_array_equal(getattr(back, name), getattr(tm, name))
    assert np.abs(back.texture - tm.texture).max() <= 0.5 / 255 + 1e-6  # 8-bit PNG

    (folder / "albedo.png").unlink()
    with pytest.raises(UserError, match="albedo.png missing"):
        load_textured(folder)
    save_textured(folder, tm, {})
    (folder / "mesh.npz").write_bytes(b"not a zip file")
    with pytest.raises(UserError, match="damaged"):
        load_textured(folder)
    np.savez(folder / "mesh.npz", vertices=np.array([{"a": 1}], dtype=object))  # pickled objects are refused
    with pytest.raises(UserError, match="damaged"):
        load_textured(folder)


# ---- rendering ----------------------------------------------------------------------------------


def test_render_with_a_texture_matches_vertex_colours(atlas, gutter):
    colours = (0.5 + 0.4 * np.sin(4.0 * atlas.vertices.astype(np.float64))).astype(np.float32)
    tex = np.zeros((S, S, 3), np.float32)
    # Each texel gets the vertex-colour mix at its surface point: the two renders show the same field.
    tex[gutter.rows, gutter.cols] = np.einsum("tk,tkc->tc", gutter.bary, colours[atlas.faces[gutter.face]])
    tex = dilate(tex, gutter.covered(), PADDING)
    K = np.array([[110.0, 0, 48], [0, 110.0, 48], [0, 0, 1]])
    R, t = look_at(np.array([0.3, 1.6, 1.7]), np.zeros(3))
    camera = Camera(K, R, t, 96, 96)
    by_vertex = render_mesh(atlas.vertices, atlas.faces, colours, camera)
    by_texture = render_mesh(atlas.vertices, atlas.faces, None, camera, uvs=atlas.uvs, texture=tex)
    np.testing.assert_array_equal(by_texture.mask, by_vertex.mask)
    assert by_vertex.mask.mean() > 0.2
    diff = np.abs(by_texture.rgb - by_vertex.rgb)[by_vertex.mask]
    assert diff.mean() < 2e-3 and diff.max() < 0.02, (diff.mean(), diff.max())
    with pytest.raises(ValueError):
        render_mesh(atlas.vertices, atlas.faces, None, camera)


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [TEXTURE_MIN - 1, TEXTURE_MAX + 1, 512, 2048.0, True, "2048"])
def test_texture_size_out_of_range(size):
    with pytest.raises(UserError, match=f"--texture must be a size in pixels from {TEXTURE_MIN} to {TEXTURE_MAX}"):
        check_texture_size(size)


def test_texture_sizes_in_range():
    assert [check_texture_size(s) for s in (TEXTURE_MIN, 2048, TEXTURE_MAX)] == [TEXTURE_MIN, 2048, TEXTURE_MAX]


def test_atlas_refuses_what_it_cannot_chart(torus):
    with pytest.raises(UserError, match="--texture"):
        uv_atlas(torus, 8192)
    with pytest.raises(UserError, match="xatlas could not chart the mesh: it has no faces"):
        uv_atlas(Mesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64)))
    nan = torus.vertices.copy()
    nan[5] = np.nan
    with pytest.raises(UserError, match="not finite"):
        uv_atlas(Mesh(nan, torus.faces))
    line = np.stack([np.linspace(0, 1, 30)] * 3, axis=1)  # every face degenerate
    with pytest.raises(UserError, match="degenerate"):
        uv_atlas(Mesh(line, np.stack([np.arange(28), np.arange(1, 29), np.arange(2, 30)], axis=1)))


def test_textured_writer_refuses_other_formats(tmp_path, painted):
    tm, _, _ = painted
    assert TEXTURED_FORMATS == ("obj", "glb")
    with pytest.raises(UserError, match="unsupported textured mesh format"):
        write_textured(tmp_path / "avatar.ply", tm)
    with pytest.raises(UserError, match="does not exist"):
        write_textured(tmp_path / "missing" / "avatar.glb", tm)


# ---- a real client ------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("blender") is None, reason="Debian's blender is not installed")
def test_blender_imports_both_files_with_the_texture(tmp_path, painted):
    tm, _, _ = painted
    write_textured(tmp_path / "avatar.obj", tm)
    write_textured(tmp_path / "avatar.glb", tm)
    script = Path(__file__).with_name("blender_import_check.py")
    paths = [str(tmp_path / "avatar.obj"), str(tmp_path / "avatar.glb")]
    run = subprocess.run(
        ["blender", "-b", "--factory-startup", "--python-exit-code", "1", "--python", str(script), "--", *paths],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    line = next(s for s in run.stdout.splitlines() if s.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    ours = tm.uvs[tm.faces].reshape(-1, 2)
    for path in paths:
        objects = result[path]["objects"]
        assert len(objects) == 1, (path, len(objects))
        obj = objects[0]
        assert obj["faces"] == tm.num_faces and obj["uv_layers"] >= 1
        assert [im["size"] for im in obj["images"]] == [[S, S]], (path, obj["images"])
        # Blender keeps v up like OBJ: its UVs are ours, whichever way the file stores them.
        uv = np.asarray(obj["uvs"])
        assert uv.shape == ours.shape
        for axis in (0, 1):
            np.testing.assert_allclose(np.sort(uv[:, axis]), np.sort(ours[:, axis]), atol=2e-6, err_msg=path)
