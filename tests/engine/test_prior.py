"""Prior across videos: training in one or two real gloo processes (torchrun), resume after a killed
rank, and fitting a new video from the prior in both modes."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import UserError
from engine.jobs import run_job
from engine.prior.train import PriorConfig, check_projects, prior_train_job
from engine.project import Project
from engine.refine.checkpoint import checkpoint_path
from engine.refine.config import load_preset
from engine.refine.loop import FitBudget, fit_job
from engine.refine.prior_file import PRIOR_FILE, load_prior, save_prior
from engine.refine.session import median_background, open_session
from engine.synth.scene import SynthConfig, synth_job

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["--rounds", "2", "--visit-steps", "3", "--eval-every", "1"]


@pytest.fixture(scope="module")
def projects(tmp_path_factory, small_scene):
    """Two different small videos (the session's shirt scene and a dress scene)."""
    other = tmp_path_factory.mktemp("prior") / "dress"
    run_job(synth_job(SynthConfig(frames=10, size=96, motion="walk", garment="dress", seed=11, voxel=0.012), other))
    return [small_scene / "project", other / "project"]


def _cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main.py", "-q", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _digests(text: str) -> list[str]:
    return re.findall(r"shared weights sha256 ([0-9a-f]+)", text)


@pytest.fixture(scope="module")
def trained(projects, tmp_path_factory):
    """A prior trained by two gloo processes launched with torchrun."""
    out = tmp_path_factory.mktemp("prior") / "p"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "main.py", "-q", "prior", "train", *map(str, projects), "--out", str(out), *TRAIN],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r.stdout + r.stderr


def test_two_ranks_end_with_identical_shared_weights(trained):
    out, text = trained
    digests = _digests(text)
    assert len(digests) == 2 and digests[0] == digests[1], text
    prior = load_prior(out)
    assert prior.body_model == "anny" and prior.info["rounds"] == 2 and prior.info["steps"] == 2 * 2 * 3
    assert (out / PRIOR_FILE).stat().st_size < 20e6
    # Every visit was logged, with held-out scores, by video and round.
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert sorted((r["round"], r["video"]) for r in rows) == [(1, "00-s"), (1, "01-dress"), (2, "00-s"),
                                                            (2, "01-dress")]
    assert all(np.isfinite(r["heldout_psnr"]) and r["steps"] == 3 for r in rows)


def test_killed_rank_stops_the_other_and_a_restart_resumes(projects, tmp_path):
    out = tmp_path / "p"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "main.py", "-q", "prior", "train", *map(str, projects), "--out", str(out),
           "--rounds", "50", "--visit-steps", "3", "--eval-every", "0"]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        state = out / "training" / "state.pt"
        deadline = time.time() + 600
        while not state.exists():
            assert time.time() < deadline and procs[0].poll() is None, "no round was completed"
            time.sleep(0.5)
        procs[1].kill()
        text = procs[0].communicate(timeout=120)[0]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 2, text
    assert "another training process stopped" in text and "run the same command again" in text, text
    done = torch.load(state, weights_only=True)["round"]
    assert done >= 1
    # Same command in one process (fewer rounds than the killed run asked for: it stops sooner).
    r = _cli("prior", "train", *map(str, projects), "--out", str(out), "--rounds", str(done + 1),
             "--visit-steps", "3", "--eval-every", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"resuming after round {done} of {done + 1}" in r.stdout + r.stderr
    assert torch.load(state, weights_only=True)["round"] == done + 1


def test_fit_from_prior_in_inference_and_refine_modes(trained, small_scene, tmp_path):
    out, _ = trained
    prior = load_prior(out)
    proj = tmp_path / "project"
    shutil.copytree(small_scene / "project", proj)
    meta = json.loads((proj / "project.json").read_text())
    meta.pop("ground_truth", None)
    (proj / "project.json").write_text(json.dumps(meta))

    # The prior shares geometry only: each video fits its own colour field, in inference mode too.
    assert prior.state and not any(n.startswith("color.") for n in prior.state)
    color0 = {n: p.detach().clone() for n, p in open_session(proj, prior=out, prior_mode="inference")
              .avatar.named_parameters() if n.startswith("color.")}
    run_job(fit_job(proj, load_preset("fast"), FitBudget(iters=4, preview_every=0), prior=out, prior_mode="inference"))
    ck = torch.load(checkpoint_path(proj), weights_only=True)
    assert ck["config"]["freeze_shared"]
    assert any(not torch.equal(ck["model"][n], v) for n, v in color0.items())
    for name, value in prior.state.items():  # the human fields are the prior's, untouched
        assert torch.equal(ck["model"][name], value), name
    start_bg = torch.logit(torch.as_tensor(median_background(Project.open(proj), list(range(10)))).clamp(1e-3, 1 - 1e-3))
    assert (ck["model"]["background"] - start_bg).abs().max() > 1e-3  # the per-video parts were fitted
    mean_code = torch.tensor(prior.info["video_code"])
    assert ck["model"]["sdf.code"].shape == (16,) and not torch.allclose(ck["model"]["sdf.code"], mean_code)

    shutil.rmtree(checkpoint_path(proj).parent)
    start = dict(open_session(proj, prior=out).avatar.named_parameters())
    for name, value in prior.state.items():  # a new fit starts from the prior
        assert torch.equal(start[name].detach(), value), name
    run_job(fit_job(proj, load_preset("fast"), FitBudget(iters=4, preview_every=0), prior=out, prior_mode="refine"))
    ck = torch.load(checkpoint_path(proj), weights_only=True)
    assert not ck["config"]["freeze_shared"] and ck["config"]["coarse_to_fine"] == 0
    assert any(not torch.equal(ck["model"][n], v) for n, v in prior.state.items())  # fields trained from the prior


def test_bad_priors_and_projects_are_refused_before_work(trained, projects, tmp_path):
    out, _ = trained
    prior = load_prior(out)
    # A prior of another body model.
    smpl = tmp_path / "smpl_prior"
    save_prior(smpl, prior.state, prior.config, "smpl", {"log_beta": prior.log_beta})
    r = _cli("fit", str(projects[0]), "--prior", str(smpl), "--iters", "1")
    assert r.returncode == 2 and "body model 'smpl'" in r.stderr
    # Another format version.
    data = torch.load(out / PRIOR_FILE, weights_only=True)
    data["version"] = 99
    (tmp_path / "v99").mkdir()
    torch.save(data, tmp_path / "v99" / PRIOR_FILE)
    with pytest.raises(UserError, match="another version"):
        load_prior(tmp_path / "v99")
    # Not a prior at all.
    r = _cli("fit", str(projects[0]), "--prior", str(tmp_path), "--iters", "1")
    assert r.returncode == 2 and "no prior at" in r.stderr
    r = _cli("fit", str(projects[0]), "--mode", "inference")
    assert r.returncode == 2 and "needs --prior" in r.stderr
    # A project that was never preprocessed, and a non-project.
    raw = tmp_path / "raw"
    shutil.copytree(projects[1], raw)
    (raw / "body.npz").unlink()
    with pytest.raises(UserError, match="body.npz"):
        check_projects([projects[0], raw])
    with pytest.raises(UserError):
        check_projects([projects[0], tmp_path])
    # Mixed body models.
    other = tmp_path / "other_model"
    shutil.copytree(projects[1], other)
    meta = json.loads((other / "project.json").read_text())
    meta["body_model"] = "smpl"
    (other / "project.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="different body models"):
        check_projects([projects[0], other])
    # A training folder of other videos is not silently mixed in.
    with pytest.raises(UserError, match="other videos"):
        run_job(prior_train_job([projects[1], projects[0]], out, PriorConfig(rounds=3, visit_steps=1)))


def test_a_prior_that_shares_colour_keeps_it_fixed_in_inference(projects, small_scene, tmp_path):
    out = tmp_path / "all"
    r = _cli("prior", "train", str(projects[0]), "--out", str(out), "--shares", "all", "--rounds", "1",
             "--visit-steps", "2", "--eval-every", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    prior = load_prior(out)
    assert prior.config.prior_shares == "all" and any(n.startswith("color.") for n in prior.state)
    proj = tmp_path / "project"
    shutil.copytree(small_scene / "project", proj)
    run_job(fit_job(proj, load_preset("fast"), FitBudget(iters=2, preview_every=0), prior=out, prior_mode="inference"))
    ck = torch.load(checkpoint_path(proj), weights_only=True)
    assert ck["config"]["prior_shares"] == "all"
    for name, value in prior.state.items():  # colour included
        assert torch.equal(ck["model"][name], value), name
