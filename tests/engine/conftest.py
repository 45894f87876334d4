"""Shared fixtures: one small synthetic scene per test session (real renderer, real body model)."""

from __future__ import annotations

import shutil

import pytest

from engine.jobs import run_job
from engine.refine.config import load_preset
from engine.refine.loop import FitBudget, fit_job
from engine.synth.scene import SynthConfig, synth_job

SMALL = SynthConfig(frames=10, size=128, motion="turn", garment="shirt", seed=7, pose_noise=3.0, voxel=0.012)


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory):
    """A 10-frame 128 px clothed scene; returns its output folder (read-only for tests)."""
    out = tmp_path_factory.mktemp("scene") / "s"
    run_job(synth_job(SMALL, out))
    return out


@pytest.fixture(scope="session")
def fitted_tiny(small_scene, tmp_path_factory):
    """A copy of the small project fitted for a few steps (enough to mesh it); shared by the texture and rig
    tests (test_texture.py bakes into it: copy it before relying on it having no bake)."""
    root = tmp_path_factory.mktemp("texture")
    shutil.copytree(small_scene / "project", root / "project")
    proj = root / "project"
    run_job(fit_job(proj, load_preset("fast"), FitBudget(iters=30, preview_every=0, checkpoint_every=30)))
    return proj
