"""The refinement engine end to end on a tiny clothed scene: it must beat the body-only baseline,
resume after SIGKILL, export meshes a second library reads, and refuse bad input cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from engine.errors import UserError
from engine.evaluation import EvalConfig, evaluate_job, live_frames, live_scores
from engine.export import ExportConfig, export_job
from engine.geometry.camera import pixel_rays
from engine.jobs import Cancelled, CancelToken, Losses, MeshReady, Preview, run_job
from engine.metrics import m_psnr, psnr
from engine.refine.checkpoint import checkpoint_path
from engine.refine.config import load_preset
from engine.refine.loop import FitBudget, fit_job
from engine.refine.raymarch import render_rays
from engine.refine.session import open_session
from engine.refine.steps import MAX_BAD_STEPS, Optimizers, StepDriver, TrainData, random_streams, train_step
from engine.synth.scene import SynthConfig, synth_job

ROOT = Path(__file__).resolve().parents[2]
TINY = SynthConfig(frames=10, size=128, motion="turn", garment="shirt", seed=11, pose_noise=0.0, voxel=0.012)
FIT_STEPS = 200


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("refine") / "scene"
    run_job(synth_job(TINY, out))
    return out


@pytest.fixture(scope="module")
def fitted(tiny_scene, tmp_path_factory):
    """A copy of the tiny project fitted with the default (fast) preset; the baseline scored first."""
    root = tmp_path_factory.mktemp("fitted")
    shutil.copytree(tiny_scene / "project", root / "project")
    shutil.copytree(tiny_scene / "ground_truth", root / "ground_truth")
    proj = root / "project"
    baseline = run_job(evaluate_job(proj, EvalConfig(method="body_only", mesh_samples=20_000)))
    run_job(fit_job(proj, load_preset("fast"), FitBudget(iters=FIT_STEPS, preview_every=0, checkpoint_every=100)))
    return proj, baseline


def test_fast_fit_beats_the_body_only_baseline(fitted):
    proj, baseline = fitted
    report = run_job(evaluate_job(proj, EvalConfig(mesh_samples=20_000, mesh_resolution=96, texture_size=1024)))
    assert report["method"] == "avatar" and report["step"] == FIT_STEPS
    got, base = report["metrics"], baseline["metrics"]
    assert got["m_psnr"] > base["m_psnr"] + 3
    assert got["chamfer_cm"] < base["chamfer_cm"]
    assert got["iou"] > base["iou"]
    # The textured mesh (baked for the scoring) covers what the avatar renders and beats the body too.
    tex = report["textured"]
    assert tex["mesh_vs_render_iou"] > 0.9 and tex["iou"] > got["iou"] - 0.05
    assert tex["m_psnr"] > base["m_psnr"] + 3


def test_live_events_and_cancel(fitted, tmp_path):
    proj = tmp_path / "p"
    shutil.copytree(fitted[0], proj)
    cancel = CancelToken()
    seen = {"losses": 0, "preview": None, "mesh": None}
    job = fit_job(proj, None, FitBudget(iters=FIT_STEPS + 100, preview_every=2, mesh_every=2, mesh_resolution=64,
                                        checkpoint_every=1000), cancel=cancel)
    with pytest.raises(Cancelled):
        for ev in job:
            if isinstance(ev, Losses):
                seen["losses"] += 1
                assert np.isfinite(ev.values["total"]) and ev.rays_per_s > 0
            elif isinstance(ev, Preview):
                seen["preview"] = ev
            elif isinstance(ev, MeshReady):
                seen["mesh"] = ev
                cancel.cancel()  # stop within one step
    assert seen["losses"] == 2
    pv = seen["preview"]
    assert pv.rgb.shape == pv.image.shape and pv.opacity.max() > 0.99 and pv.normals.shape == pv.rgb.shape
    assert len(seen["mesh"].faces) > 1000
    # Stopping kept the progress: the checkpoint is at the step reached.
    state = torch.load(checkpoint_path(proj), weights_only=True)
    assert state["step"] == FIT_STEPS + 2


def test_previews_take_a_bounded_share_of_training_time(fitted, tmp_path):
    """Asked for a preview every step, training still mostly trains: a full-frame render costs more than a
    step, so with a 10 % share the previews after the first wait for several steps."""
    proj = tmp_path / "p"
    shutil.copytree(fitted[0], proj)

    def previews(iters: int, share: float) -> list[int]:
        budget = FitBudget(iters=FIT_STEPS + iters, preview_every=1, preview_share=share, checkpoint_every=1000)
        return [ev.step for ev in fit_job(proj, None, budget) if isinstance(ev, Preview)]

    assert previews(3, 1.0) == [FIT_STEPS + 1, FIT_STEPS + 2, FIT_STEPS + 3]  # no limit: every step
    got = previews(15, 0.1)
    assert got[0] == FIT_STEPS + 4  # the first one comes at once
    assert got[-1] == FIT_STEPS + 15  # and the run ends showing its last step
    assert len(got) <= 4, got


def test_a_strided_render_is_a_cheap_twin_of_the_full_render(fitted):
    s = open_session(fitted[0])
    full, half = s.render_frame(0), s.render_frame(0, stride=2)
    for k in ("rgb", "opacity", "normals", "depth"):
        assert half[k].shape == full[k].shape, k
    # Close to the full render even on this tiny (96 × 128) frame, where 2-pixel blocks are coarse.
    assert psnr(half["rgb"], full["rgb"]) > 25
    assert abs(float((half["opacity"] > 0.5).mean() - (full["opacity"] > 0.5).mean())) < 0.01


def test_shell_sampler_agrees_with_dense_sampling(fitted):
    """The fast sampler's twin: many uniform + importance samples along the same rays."""
    s = open_session(fitted[0])
    fp = s.frame_pose(0)
    cam = s.cameras[0]
    g = np.random.default_rng(0)
    pix = np.stack([g.integers(0, cam.width, 600), g.integers(0, cam.height, 600)], 1)
    o, d = pixel_rays(cam, pix, "cpu")
    with torch.no_grad():
        fast = render_rays(s.avatar, s.deformer, fp, o, d, s.cfg.coarse_samples, s.cfg.fine_samples, "shell", s.cfg.shell)
        ref = render_rays(s.avatar, s.deformer, fp, o, d, 512, 256, "uniform", s.cfg.shell)
    assert (fast.opacity - ref.opacity).abs().mean() < 0.03
    both = (fast.opacity > 0.9) & (ref.opacity > 0.9)
    assert both.sum() > 50
    assert (fast.rgb[both] - ref.rgb[both]).abs().mean() < 0.03


def test_live_scores_match_scoring_full_renders(fitted):
    """The app's live held-out score renders colour only, on a stride grid; its twin scores the full image of
    `Session.render_frame`. Stride 1 draws the very same rays (the sampler's jitter seeded alike); stride 2, a
    quarter of them, estimates the same PSNR."""
    s = open_session(fitted[0], require_checkpoint=True)
    frames = live_frames(s.project)
    assert frames == [4, 9]
    torch.manual_seed(0)
    full = {i: s.render_frame(i)["rgb"] for i in frames}
    torch.manual_seed(0)
    lattice = s.render_frame(frames[0], stride=1, fill=False, normals=False)
    assert len(lattice["ys"]) == s.cameras[0].height and len(lattice["xs"]) == s.cameras[0].width
    np.testing.assert_allclose(lattice["rgb"], full[frames[0]], atol=1e-6)

    def score(rgb: dict) -> dict:
        rows = [(psnr(rgb[i], s.project.frame(i)), m_psnr(rgb[i], s.project.frame(i), s.project.mask(i)))
                for i in frames]
        return dict(zip(("psnr", "m_psnr"), np.mean(rows, 0)))

    ref = score(full)
    live = live_scores(s, frames)  # stride 2
    assert set(live) == {"psnr", "m_psnr"} and ref["m_psnr"] < ref["psnr"]
    for k in live:
        assert abs(live[k] - ref[k]) < 0.4, (k, live[k], ref[k])


def test_finite_difference_normals_match_autograd(fitted):
    s = open_session(fitted[0])
    fp = s.frame_pose(3)
    x = torch.as_tensor(fp.vertices[::200], dtype=torch.float32)
    fd = s.world_normals(x, fp, h=1e-3)
    xr = x.clone().requires_grad_(True)
    sdf, _ = s.avatar.sdf(s.deformer.to_canonical(xr, fp)[0])
    (grad,) = torch.autograd.grad(sdf.sum(), xr)
    ag = grad / grad.norm(dim=-1, keepdim=True)
    assert (fd * ag).sum(-1).median() > 0.98


def test_deformer_round_trip_near_the_body(fitted):
    s = open_session(fitted[0])
    fp = s.frame_pose(5)
    g = torch.Generator().manual_seed(0)
    xc = s.deformer.canonical_vertices[::20] + 0.01 * torch.randn(len(s.deformer.canonical_vertices[::20]), 3, generator=g)
    xw = s.deformer.to_posed(xc, fp)
    back, dist = s.deformer.to_canonical(xw, fp)
    err = (back - xc).norm(dim=-1)
    assert (err < 1e-3).float().mean() > 0.9  # nearest vertex in both spaces agrees for most points
    assert dist.max() < 0.1


def test_non_finite_step_is_skipped_and_changes_nothing(fitted, tmp_path):
    s = open_session(fitted[0])
    with torch.no_grad():
        s.avatar.log_beta.fill_(float("nan"))
    before = {k: v.clone() for k, v in s.avatar.state_dict().items()}
    opt = torch.optim.Adam(s.avatar.field_parameters(), lr=1e-2)
    out = train_step(s, opt, TrainData.of(s), 128, 8, 0.5, *random_streams(0, 0, s.device))
    assert out is None
    after = s.avatar.state_dict()
    assert all(torch.equal(before[k], after[k]) or torch.isnan(before[k]).all() for k in before)


def test_the_step_driver_rolls_back_after_repeated_non_finite_steps(fitted):
    """One divergence policy for fits and prior visits: skip non-finite steps; after MAX_BAD_STEPS in a row,
    go back to the last good state with halved learning rates, and train on from there."""
    s = open_session(fitted[0])
    opt = Optimizers.for_avatar(s.avatar, s.cfg)
    driver = StepDriver(s, opt, TrainData.of(s), opt.base_lrs(s.cfg), *random_streams(0, 0, s.device))
    good_beta = float(s.avatar.log_beta.detach())
    step0 = s.step
    with torch.no_grad():
        s.avatar.log_beta.fill_(float("nan"))
    warnings = []
    for _ in range(MAX_BAD_STEPS):
        values, warning = driver.step(0.5, 64, 8)
        assert values is None and warning
        warnings.append(warning)
    assert "rolled back" in warnings[-1] and all("skipped" in w for w in warnings[:-1])
    assert float(s.avatar.log_beta.detach()) == good_beta and s.step == step0
    assert driver.base_lrs == [lr * 0.5 for lr in opt.base_lrs(s.cfg)]
    values, warning = driver.step(0.5, 64, 8)
    assert values is not None and warning is None and np.isfinite(values["total"]) and s.step == step0 + 1


def test_optimizer_state_keeps_every_field_optimiser(fitted):
    s = open_session(fitted[0])
    a, b = list(s.avatar.sdf.parameters()), list(s.avatar.color.parameters())
    opt = Optimizers([torch.optim.Adam(a, lr=1e-3), torch.optim.Adam(b, lr=1e-3)], None)
    for p in a + b:
        p.grad = torch.ones_like(p)
    opt.step()
    state = opt.state_dict()
    assert len(state["fields"]) == 2
    fresh = Optimizers([torch.optim.Adam(a, lr=1e-3), torch.optim.Adam(b, lr=1e-3)], None)
    fresh.load_state_dict(state)
    assert all(len(o.state) == len(g) for o, g in zip(fresh.field_opts, (a, b)))


def test_export_read_back_by_trimesh(fitted, tmp_path):
    proj = fitted[0]
    cfg = ExportConfig(resolution=96)
    run_job(export_job(proj, tmp_path / "canon.obj", cfg))
    run_job(export_job(proj, tmp_path / "frame3.ply", ExportConfig(resolution=96, frame=3, faces=5000)))
    run_job(export_job(proj, tmp_path / "zup.ply", ExportConfig(resolution=96, up="z")))
    canon = trimesh.load(tmp_path / "canon.obj", process=False)
    assert len(canon.faces) > 1000
    ext = canon.vertices.max(0) - canon.vertices.min(0)
    assert ext[1] == ext.max() and 1.2 < ext[1] < 2.2  # Y-up, metres, a person's height
    assert canon.visual.vertex_colors[:, :3].std() > 5  # coloured, not one flat colour
    posed = trimesh.load(tmp_path / "frame3.ply", process=False)
    assert len(posed.faces) <= 5000 and posed.visual.vertex_colors is not None
    zup = trimesh.load(tmp_path / "zup.ply", process=False)
    ez = zup.vertices.max(0) - zup.vertices.min(0)
    assert ez[2] == ez.max()
    seq = tmp_path / "seq"
    run_job(export_job(proj, seq, ExportConfig(resolution=64), sequence=True, fmt="ply"))
    files = sorted(seq.glob("frame_*.ply"))
    assert len(files) == TINY.frames
    a, b = (trimesh.load(f, process=False).vertices for f in (files[0], files[5]))
    assert a.shape == b.shape and np.abs(a - b).max() > 0.05  # the body turned


def test_vid2avatar_preset_runs(tiny_scene, tmp_path):
    proj = tmp_path / "p"
    shutil.copytree(tiny_scene / "project", proj)
    result = run_job(fit_job(proj, load_preset("vid2avatar", rays=64), FitBudget(iters=3, preview_every=0)))
    assert result["step"] == 3
    state = torch.load(checkpoint_path(proj), weights_only=True)
    assert state["config"]["preset"] == "vid2avatar" and state["config"]["sdf"] == "mlp"


def _run(*args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), "-q", *args], capture_output=True, text=True,
                          cwd=ROOT, **kw)


def test_resume_after_sigkill(tiny_scene, tmp_path):
    proj = tmp_path / "p"
    shutil.copytree(tiny_scene / "project", proj)
    ck = checkpoint_path(proj)
    p = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "-q", "fit", str(proj), "--iters", "100000",
                          "--checkpoint-every", "5"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        step = 0
        while time.time() < deadline:
            if ck.exists():
                step = torch.load(ck, weights_only=True)["step"]
                if step >= 10:
                    break
            time.sleep(0.5)
        assert step >= 10, "no checkpoint written"
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    saved = torch.load(ck, weights_only=True)["step"]  # the last complete checkpoint survives the kill
    assert saved >= 10
    assert not [f for f in ck.parent.iterdir() if f.name != "last.pt"]  # no half-written leftovers
    r = _run("fit", str(proj), "--iters", str(saved + 5), "--checkpoint-every", "5")
    assert r.returncode == 0, r.stderr
    assert f"resuming from step {saved}" in r.stderr
    assert torch.load(ck, weights_only=True)["step"] == saved + 5


def test_bad_inputs_are_refused_cleanly(tiny_scene, tmp_path):
    r = _run("fit", str(tmp_path))
    assert r.returncode == 2 and "not a project folder" in r.stderr and "Traceback" not in r.stderr
    if not torch.cuda.is_available():
        proj = tmp_path / "p"
        shutil.copytree(tiny_scene / "project", proj)
        r = _run("fit", str(proj), "--device", "cuda", "--iters", "1")
        assert r.returncode == 2 and "CUDA" in r.stderr
        assert not checkpoint_path(proj).exists()  # untouched
    proj = tmp_path / "corrupt"
    shutil.copytree(tiny_scene / "project", proj)
    ck = checkpoint_path(proj)
    ck.parent.mkdir()
    ck.write_bytes(b"not a checkpoint at all")
    r = _run("fit", str(proj), "--iters", "1")
    assert r.returncode == 2 and "unreadable" in r.stderr and "Traceback" not in r.stderr
    assert ck.read_bytes() == b"not a checkpoint at all"
    r = _run("export", str(tmp_path / "corrupt"), str(tmp_path / "x.stl"))
    assert r.returncode == 2 and ".obj or .ply" in r.stderr


def test_checkpoint_from_another_body_model_is_refused(fitted, tmp_path):
    proj = tmp_path / "p"
    shutil.copytree(fitted[0], proj)
    ck = checkpoint_path(proj)
    state = torch.load(ck, weights_only=True)
    state["body_model"] = "smpl"
    torch.save(state, ck)
    with pytest.raises(UserError, match="body model"):
        open_session(proj)
