"""Evaluation: the body-only baseline, and that the scoring pipeline is exact on the truth."""

from __future__ import annotations

from engine.evaluation import evaluate_job
from engine.jobs import run_job
from engine.metrics import psnr
from engine.project import Project
from engine.render.raycast import render_mesh
from engine.synth.ground_truth import GroundTruth


def test_truth_rendered_again_matches_the_frames(small_scene):
    """Same renderer, same camera, true mesh and colours: only 8-bit rounding separates them."""
    proj = Project.open(small_scene / "project")
    gt = GroundTruth.load(small_scene / "ground_truth")
    cam = proj.cameras()[4]
    r = render_mesh(gt.posed_vertices(4), gt.faces, gt.colors, cam, gt.background)
    assert psnr(r.rgb, proj.frame(4)) > 45
    assert (r.mask == proj.mask(4)).all()


def test_body_only_baseline_scores(small_scene):
    report = run_job(evaluate_job(small_scene / "project"))
    m = report["metrics"]
    assert report["method"] == "body_only" and report["frames"] == [4, 9]
    # The naked body misses the clothes: centimetres of Chamfer distance, imperfect silhouettes.
    assert 0.5 < m["chamfer_cm"] < 5
    assert 0.6 < m["iou"] < 0.99
    assert 0 < m["fscore_1cm"] < m["fscore_2cm"] < 1
    assert 10 < m["m_psnr"] < m["psnr"]  # the background is easy; the person is where it fails
    assert 0 < m["mpvpe_cm"] < 10  # 3 degrees of pose noise in the stored body
    assert len(report["per_frame"]) == 2
