"""Texture baking: the twin of the true scene, visibility, source frames, and the textured exports."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import trimesh

from engine.errors import UserError
from engine.export import ExportConfig, export_job
from engine.geometry.camera import Camera
from engine.io.video import Mp4Writer
from engine.jobs import run_job
from engine.jobs.events import CancelToken, run_stage
from engine.mesh import Mesh
from engine.mesh.uv import uv_atlas
from engine.project import Project
from engine.render.raycast import render_mesh
from engine.synth.ground_truth import GroundTruth
from engine.texture import BakeConfig, bake_job, load_bake
from engine.texture.bake import atlas_texels, bake_views, frame_samples
from engine.texture.sources import SourceView, read_views


def _truth(tm, texels, colors: np.ndarray) -> np.ndarray:
    """Per-texel colour of a vertex-coloured mesh (barycentric blend of its corners' colours)."""
    c = colors[tm.source_vertex[texels.corners]]  # [T, 3 corners, 3]
    return np.einsum("tk,tkc->tc", texels.bary, c)


def test_baking_the_true_mesh_with_the_true_poses_reproduces_its_colours(small_scene):
    """The twin: the scene's true clothed mesh, posed with the true bodies into unlit renders of itself
    (the synthetic frames are lit, which a bake keeps), baked without registration. Every texel some
    frame saw must come back with its true colour. What limits it: a pixel of these 128 px frames covers
    about 1.5 cm of surface, so a texel reads the pixel's blend of the colours around it (the stripes'
    edges), and texels at the rim of what a frame sees are sampled at a slant."""
    gt = GroundTruth.load(small_scene / "ground_truth")
    project = Project.open(small_scene / "project")
    cams = project.cameras()
    tm = uv_atlas(Mesh(gt.canonical_vertices, gt.faces), 1024)
    texels = atlas_texels(tm)
    frames = list(range(project.num_frames))
    posed = {i: gt.posed_vertices(i)[tm.source_vertex] for i in frames}
    views = []
    for i in frames:
        r = render_mesh(gt.posed_vertices(i), gt.faces, gt.colors, cams[i], supersample=1, shaded=False)
        views.append(SourceView(i, r.rgb, r.mask, cams[i], 0, 0))
    focal = {i: float(cams[i].K[0, 0]) for i in frames}
    color, support, samples, _ = run_stage(bake_views(tm, texels, posed, iter(views), focal, None, CancelToken()))
    seen = support > 0
    assert seen.mean() > 0.8  # a turning body: most of the surface is seen by some frame
    err = np.abs(color[seen] - _truth(tm, texels, gt.colors)[seen]).max(1)
    assert np.median(err) < 0.03 and err.mean() < 0.06, (np.median(err), err.mean())
    # The blend is not a blur: a sample-free colour (the mean of all texels) would be far off.
    flat = np.abs(color[seen].mean(0) - _truth(tm, texels, gt.colors)[seen]).max(1)
    assert err.mean() < 0.5 * flat.mean()


def _two_quads() -> tuple[Mesh, np.ndarray]:
    """A small red quad 2 m in front of the camera, hiding part of a large blue one at 3 m."""
    def quad(z, half, n):
        u = np.linspace(-half, half, n)
        x, y = np.meshgrid(u, u)
        v = np.stack([x.ravel(), y.ravel(), np.full(x.size, z)], 1)
        f = []
        for r in range(n - 1):
            for c in range(n - 1):
                a = r * n + c
                f += [[a, a + n, a + 1], [a + 1, a + n, a + n + 1]]  # facing the camera (-z)
        return v, np.array(f)

    vf, ff = quad(2.0, 0.2, 6)
    vb, fb = quad(3.0, 0.8, 12)
    vertices = np.concatenate([vf, vb])
    faces = np.concatenate([ff, fb + len(vf)])
    colors = np.concatenate([np.tile([1.0, 0, 0], (len(vf), 1)), np.tile([0, 0, 1.0], (len(vb), 1))])
    return Mesh(vertices, faces), colors.astype(np.float32)


def test_a_texel_hidden_in_a_frame_takes_no_colour_from_it():
    mesh, colors = _two_quads()
    cam = Camera(K=np.array([[200.0, 0, 100], [0, 200.0, 100], [0, 0, 1]]), R=np.eye(3), t=np.zeros(3),
                 width=200, height=200)
    r = render_mesh(mesh.vertices, mesh.faces, colors, cam, supersample=1, shaded=False)
    mask = np.zeros((200, 200), bool)
    mask[1:-1, 1:-1] = True
    tm = uv_atlas(mesh, 1024)
    texels = atlas_texels(tm)
    s = frame_samples(SourceView(0, r.rgb, mask, cam, 0, 0), tm.vertices, tm.faces, texels, 200.0)
    pts = texels.points(tm.vertices)
    back = pts[:, 2] > 2.5
    # Back texels whose line of sight to the camera crosses the red quad are hidden.
    hit = np.abs(pts[:, :2] * (2.0 / pts[:, 2:3])).max(1) < 0.2 - 0.01
    hidden = np.flatnonzero(back & hit)
    assert len(hidden) > 1000
    assert not np.isin(hidden, s.texels).any()
    got_back = np.isin(s.texels, np.flatnonzero(back))
    assert got_back.sum() > 1000  # the rest of the blue quad is seen ...
    assert (s.colors[got_back][:, 0] < 0.05).all()  # ... and never takes the red quad's colour


def test_bake_reads_the_source_video_at_its_own_resolution(fitted_tiny, tmp_path, caplog):
    """A project whose source video is twice its working size is baked from the video: views twice the
    size, with a camera that sees the same picture; without the video it falls back and says so."""
    proj = tmp_path / "project"
    shutil.copytree(fitted_tiny, proj)
    project = Project.open(proj)
    video = tmp_path / "source.mp4"
    with Mp4Writer(video, fps=10) as w:
        for i in range(project.num_frames):
            w.write((np.kron(project.frame(i), np.ones((2, 2, 1))) * 255).astype(np.uint8))
    project.meta["source"] = {"type": "video", "path": str(video), "frame_indices": list(range(project.num_frames))}
    (proj / "project.json").write_text(json.dumps(project.meta))
    project = Project.open(proj)
    cams = project.cameras()
    box = (np.array([0.0, 0.0]), np.array([cams[0].width - 1.0, cams[0].height - 1.0]))
    views, source = read_views(project, [0, 3], {0: box, 3: box}, use_source=True)
    views = list(views)
    assert source == "video" and [v.frame for v in views] == [0, 3]
    v = views[0]
    assert v.image.shape[:2] == (2 * cams[0].height, 2 * cams[0].width)
    np.testing.assert_allclose(v.camera.K[:2, :2], 2 * cams[0].K[:2, :2])
    small = v.image.reshape(cams[0].height, 2, cams[0].width, 2, 3).mean((1, 3))
    assert np.abs(small - project.frame(0)).mean() < 0.03  # the same picture (video coding aside)
    video.unlink()
    with caplog.at_level(logging.WARNING):
        _, source = read_views(project, [0], {0: box}, use_source=True)
    assert source == "frames" and "gone" in caplog.text


def test_textured_exports_read_back(fitted_tiny, tmp_path):
    r = run_job(bake_job(fitted_tiny, BakeConfig(size=1024, resolution=96)))
    assert r["size"] == 1024 and r["source"] == "frames" and r["unseen_fraction"] < 0.5
    tm, meta = load_bake(fitted_tiny, step=30)
    assert tm.texture.shape == (1024, 1024, 3) and meta["resolution"] == 96
    cfg = ExportConfig(resolution=96, texture=1024)
    out = run_job(export_job(fitted_tiny, tmp_path / "a.obj", cfg))
    assert [p.rsplit(".", 1)[1] for p in out["files"]] == ["obj", "mtl", "png"]
    m = trimesh.load(tmp_path / "a.obj", process=False)
    assert m.visual.material.image.size == (1024, 1024) and len(m.faces) == tm.num_faces
    assert (m.visual.uv >= 0).all() and (m.visual.uv <= 1).all()
    run_job(export_job(fitted_tiny, tmp_path / "a.glb", replace_frame(cfg, 2)))
    g = trimesh.load(tmp_path / "a.glb", force="mesh", process=False)
    assert g.visual.material.baseColorTexture.size == (1024, 1024)
    # Posed into frame 2: the same vertices as the bake posed by the engine.
    from engine.refine.session import open_session
    from engine.texture import posed_textured

    want = posed_textured(open_session(fitted_tiny, require_checkpoint=True), tm, 2).vertices
    assert np.abs(np.sort(g.vertices, 0) - np.sort(want, 0)).max() < 1e-4
    seq = run_job(export_job(fitted_tiny, tmp_path / "seq", cfg, sequence=True, fmt="obj"))
    assert sum(p.endswith(".png") for p in seq["files"]) == 1  # one texture shared by every frame
    m5 = trimesh.load(tmp_path / "seq" / "frame_000005.obj", process=False)
    assert m5.visual.material.image.size == (1024, 1024)


def replace_frame(cfg: ExportConfig, frame: int) -> ExportConfig:
    from dataclasses import replace

    return replace(cfg, frame=frame)


def test_bad_texture_requests_get_one_clear_message(fitted_tiny, small_scene, tmp_path):
    with pytest.raises(UserError, match="1024 to 4096"):
        run_job(export_job(fitted_tiny, tmp_path / "a.obj", ExportConfig(texture=512)))
    with pytest.raises(UserError, match="--faces"):
        run_job(export_job(fitted_tiny, tmp_path / "a.obj", ExportConfig(texture=1024, faces=1000)))
    with pytest.raises(UserError, match=r"\.obj or \.glb"):
        run_job(export_job(fitted_tiny, tmp_path / "a.ply", ExportConfig(texture=1024)))
    with pytest.raises(UserError, match="no fitted avatar"):
        run_job(bake_job(small_scene / "project"))
    (tmp_path / "b.glb").write_bytes(b"keep")
    with pytest.raises(UserError, match="--overwrite"):
        run_job(export_job(fitted_tiny, tmp_path / "b.glb", ExportConfig(resolution=96)))
    assert (tmp_path / "b.glb").read_bytes() == b"keep"
