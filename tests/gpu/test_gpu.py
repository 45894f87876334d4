"""End-to-end checks on CUDA, each compared with the same run on the CPU (`pytest -m gpu`; skipped
without CUDA). Tolerances, stated once here:

- fit: 50 steps of the fast preset on a small synthetic scene. The two devices draw different random
  rays, so the runs are not bit-equal: the mean total loss of the last 10 steps agrees within 20 %, and
  the exported meshes (marching cubes of each run's SDF) lie within 1 cm of each other (mean symmetric
  chamfer distance).
- render: one frame of the same checkpoint rendered on each device: PSNR of one against the other
  ≥ 35 dB, opacity within 0.02 on average.
- export: the same checkpoint exported on each device and read back: vertex counts within 2 %, mean
  symmetric chamfer distance under 2 mm (float rounding moves the marching-cubes surface, not more).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from engine.export import export_job
from engine.jobs import Losses, run_job
from engine.metrics import psnr
from engine.refine.config import load_preset
from engine.refine.loop import FitBudget, fit_job
from engine.refine.session import open_session
from engine.synth.scene import SynthConfig, synth_job

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)"),
]

# The small scene of tests/engine/conftest.py (`SMALL`).
SCENE = SynthConfig(frames=10, size=128, motion="turn", garment="shirt", seed=7, pose_noise=3.0, voxel=0.012)
STEPS = 50
RENDER_FRAME = 3


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_scene") / "s"
    run_job(synth_job(SCENE, out))
    return out


def _fit(scene, root, device: str):
    """A copy of the scene's project fitted for STEPS steps on `device`; (project, total losses)."""
    proj = root / f"project_{device}"
    shutil.copytree(scene / "project", proj)
    budget = FitBudget(iters=STEPS, preview_every=0, checkpoint_every=STEPS)
    losses = [ev.values["total"] for ev in fit_job(proj, load_preset("fast"), budget, device=device)
              if isinstance(ev, Losses)]
    return proj, losses


@pytest.fixture(scope="module")
def fitted(scene, tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_fit")
    return {dev: _fit(scene, root, dev) for dev in ("cpu", "cuda")}


def _export(proj, out, device: str) -> trimesh.Trimesh:
    run_job(export_job(proj, out, device=device, overwrite=True))
    return trimesh.load(out, process=False, file_type="obj")


def _chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Mean symmetric nearest-vertex distance between two vertex sets [N, 3], [M, 3] (metres)."""
    return 0.5 * float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def test_fit_cuda_matches_cpu(fitted, tmp_path):
    (p_cpu, l_cpu), (p_gpu, l_gpu) = fitted["cpu"], fitted["cuda"]
    assert len(l_gpu) >= STEPS - 5 and np.isfinite(l_gpu).all()
    last_cpu, last_gpu = float(np.mean(l_cpu[-10:])), float(np.mean(l_gpu[-10:]))
    assert abs(last_gpu - last_cpu) <= 0.2 * abs(last_cpu), (last_cpu, last_gpu)
    m_cpu = _export(p_cpu, tmp_path / "cpu.obj", "cpu")
    m_gpu = _export(p_gpu, tmp_path / "cuda.obj", "cuda")
    assert _chamfer(np.asarray(m_cpu.vertices), np.asarray(m_gpu.vertices)) < 0.01


def test_render_cuda_matches_cpu(fitted):
    proj = fitted["cpu"][0]
    frames = {dev: open_session(proj, device=dev, require_checkpoint=True).render_frame(RENDER_FRAME, stride=2)
              for dev in ("cpu", "cuda")}
    a, b = frames["cpu"], frames["cuda"]
    assert a["rgb"].shape == b["rgb"].shape and np.isfinite(b["rgb"]).all()
    assert psnr(b["rgb"], a["rgb"]) >= 35.0
    assert float(np.abs(a["opacity"] - b["opacity"]).mean()) <= 0.02


def test_export_cuda_matches_cpu(fitted, tmp_path):
    proj = fitted["cpu"][0]
    m_cpu = _export(proj, tmp_path / "cpu.obj", "cpu")
    m_gpu = _export(proj, tmp_path / "cuda.obj", "cuda")
    assert len(m_gpu.faces) > 1000
    assert abs(len(m_gpu.vertices) - len(m_cpu.vertices)) <= 0.02 * len(m_cpu.vertices)
    assert _chamfer(np.asarray(m_cpu.vertices), np.asarray(m_gpu.vertices)) < 0.002
