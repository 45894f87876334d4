"""Shared fixtures: one small synthetic scene per test session (real renderer, real body model)."""

from __future__ import annotations

import pytest

from engine.jobs import run_job
from engine.synth.scene import SynthConfig, synth_job

SMALL = SynthConfig(frames=10, size=128, motion="turn", garment="shirt", seed=7, pose_noise=3.0, voxel=0.012)


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory):
    """A 10-frame 128 px clothed scene; returns its output folder (read-only for tests)."""
    out = tmp_path_factory.mktemp("scene") / "s"
    run_job(synth_job(SMALL, out))
    return out
