"""Synthetic scenes: determinism, ground-truth consistency, project format."""

from __future__ import annotations

import dataclasses
import hashlib

import av
import cv2
import numpy as np
import pytest
import torch

from engine.body import create_body_model
from engine.errors import UserError
from engine.geometry.camera import project
from engine.jobs import run_job
from engine.metrics import chamfer_cm, iou
from engine.project import Project
from engine.synth.ground_truth import GroundTruth
from engine.synth.scene import SynthConfig, synth_job

from .conftest import SMALL


def _digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".mp4"  # encoder metadata may differ; frames are compared
    }


def test_same_seed_gives_identical_scene(tmp_path):
    cfg = SynthConfig(frames=3, size=64, garment="none", seed=3, voxel=0.015, pose_noise=2.0)
    run_job(synth_job(cfg, tmp_path / "a"))
    run_job(synth_job(cfg, tmp_path / "b"))
    run_job(synth_job(dataclasses.replace(cfg, seed=4), tmp_path / "c"))
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a["project/frames/000000.png"] != c["project/frames/000000.png"]


def test_project_format_and_held_out_frames(small_scene):
    proj = Project.open(small_scene / "project")
    assert proj.num_frames == SMALL.frames
    assert proj.held_out == [4, 9]  # every 5th frame
    assert 4 not in proj.train_frames and 0 in proj.train_frames
    img = proj.frame(0)
    assert img.shape == (128, 96, 3) and img.dtype == np.float32
    assert proj.mask(0).shape == (128, 96)
    assert len(proj.cameras()) == SMALL.frames
    assert proj.ground_truth_dir == (small_scene / "ground_truth").resolve()


def test_rendered_mask_is_the_projected_true_mesh(small_scene):
    """Rasterise the projected ground-truth triangles with OpenCV (independent of the ray caster)."""
    proj = Project.open(small_scene / "project")
    gt = GroundTruth.load(small_scene / "ground_truth")
    cam = proj.cameras()[0]
    for i in (0, 3, 7):
        uv = project(gt.posed_vertices(i), cam)
        canvas = np.zeros((cam.height * 8, cam.width * 8), np.uint8)
        # Pixel centres sit at +0.5: shift so that fillPoly's integer grid samples them (8x subpixel).
        pts = np.round((uv - 0.5) * 8 * 8).astype(np.int32)
        for tri in pts[gt.faces]:  # one by one: fillPoly's even-odd rule would cancel overlaps
            cv2.fillConvexPoly(canvas, tri, 1, lineType=cv2.LINE_8, shift=3)
        raster = canvas[::8, ::8] > 0
        assert iou(raster, proj.mask(i)) > 0.98


def test_ground_truth_is_the_skinned_canonical_mesh(small_scene):
    gt = GroundTruth.load(small_scene / "ground_truth")
    body = create_body_model()
    tf = body.bone_transforms(gt.body.frame(5))[0]
    posed = body.canonical_to_posed(torch.as_tensor(gt.canonical_vertices), torch.as_tensor(gt.weights),
                                    gt.body.shape, tf).numpy()
    assert np.abs(posed - gt.posed_vertices(5)).max() < 1e-4
    assert np.allclose(gt.weights.sum(1), 1.0, atol=1e-4)


def test_clothes_are_geometry_the_body_lacks(small_scene):
    gt = GroundTruth.load(small_scene / "ground_truth")
    body = create_body_model()
    naked = body.canonical_vertices(gt.body.shape).numpy()
    d = chamfer_cm(naked, body.faces, gt.canonical_vertices, gt.faces, n_samples=20_000)
    assert 0.5 < d < 5.0  # loose shirt, trousers, hair: centimetres off the skin, not a different body


def test_pose_noise_perturbs_stored_body_only(small_scene):
    proj = Project.open(small_scene / "project")
    gt = GroundTruth.load(small_scene / "ground_truth")
    noisy, true = proj.body(), gt.body
    assert torch.equal(noisy.shape, true.shape) and torch.equal(noisy.transl, true.transl)
    diff = noisy.pose - true.pose
    assert diff.abs().max() > 0.01
    assert np.degrees(float(diff[diff != 0].std())) == pytest.approx(3.0, rel=0.3)  # --pose-noise 3


def test_video_decodes_to_the_frames(small_scene):
    proj = Project.open(small_scene / "project")
    with av.open(str(small_scene / "video.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == SMALL.frames
    err = np.abs(frames[2].astype(np.float32) / 255 - proj.frame(2)).mean()
    assert err < 0.03  # lossy H.264 of the same image


def test_frames_show_a_person_over_a_background(small_scene):
    proj = Project.open(small_scene / "project")
    m = proj.mask(0)
    assert 0.05 < m.mean() < 0.6
    img = proj.frame(0)
    # The person differs from the static background plate where the mask says so.
    bg = GroundTruth.load(small_scene / "ground_truth").background
    diff = np.abs(img - bg).max(-1)
    assert (diff[~m] < 0.05).mean() > 0.97 and (diff[m] > 0.05).mean() > 0.7


def test_bad_options_are_refused_before_any_work(tmp_path):
    with pytest.raises(UserError, match="--frames"):
        run_job(synth_job(SynthConfig(frames=0), tmp_path / "x"))
    with pytest.raises(UserError, match="--garment"):
        run_job(synth_job(SynthConfig(garment="cape"), tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_existing_output_is_refused_and_untouched(tmp_path):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    with pytest.raises(UserError, match="--overwrite"):
        run_job(synth_job(SynthConfig(frames=2, size=64), out))
    assert (out / "precious.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]  # no staging debris
