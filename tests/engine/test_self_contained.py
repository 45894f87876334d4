"""A project carries its body (engine/project_body.py): `fit`, `export`, `eval`, `render` and `prior train` run where
Anny, open3d and mediapipe cannot be imported (a GPU node), and an older project without the body file
either gains it or says clearly what to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import trimesh

from engine.project import Project
from engine.project_body import BODY_MODEL_FILE, load_project_body

RUNNER = Path(__file__).with_name("no_desktop_stack.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True, env=env, timeout=600)


def _ok(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"


def test_fit_export_eval_render_without_the_desktop_stack(small_scene, tmp_path):
    shutil.copytree(small_scene, tmp_path / "scene")  # with its ground truth: eval scores the meshes
    proj = tmp_path / "scene" / "project"
    _ok(_run("fit", str(proj), "--iters", "15", "--checkpoint-every", "15"))
    assert (proj / "checkpoints" / "last.pt").exists()

    _ok(_run("export", str(proj), str(tmp_path / "avatar.obj"), "--resolution", "96"))
    mesh = trimesh.load(tmp_path / "avatar.obj", force="mesh", process=False)
    extent = mesh.bounds[1] - mesh.bounds[0]
    assert len(mesh.faces) > 2000 and 1.2 < extent[1] < 2.2  # a person-sized mesh, metres, Y up

    _ok(_run("export", str(proj), str(tmp_path / "avatar.glb"), "--frame", "4", "--texture", "1024",
             "--resolution", "96"))
    scene = trimesh.load(tmp_path / "avatar.glb")
    textured = next(iter(scene.geometry.values()))
    assert textured.visual.kind == "texture" and textured.visual.material.baseColorTexture.size == (1024, 1024)

    _ok(_run("export", str(proj), str(tmp_path / "rigged.glb"), "--rigged", "--resolution", "96"))
    assert (tmp_path / "rigged.glb").stat().st_size > 100_000

    res = _run("eval", str(proj), "--json", str(tmp_path / "eval.json"))
    _ok(res)
    report = __import__("json").loads((tmp_path / "eval.json").read_text())
    assert np.isfinite(report["metrics"]["chamfer_cm"]) and report["metrics"]["chamfer_cm"] < 5.0

    _ok(_run("render", str(proj), "--video", str(tmp_path / "motion.mp4")))
    assert (tmp_path / "motion.mp4").stat().st_size > 10_000

    _ok(_run("prior", "train", str(small_scene / "project"), "--out", str(tmp_path / "prior"), "--rounds", "1",
             "--visit-steps", "2", "--eval-every", "0"))
    assert (tmp_path / "prior" / "prior.pt").exists()


def test_an_older_project_gains_its_body_file_or_says_what_to_do(small_scene, tmp_path):
    proj = tmp_path / "project"
    shutil.copytree(small_scene / "project", proj)
    stored = dict(np.load(proj / BODY_MODEL_FILE))
    (proj / BODY_MODEL_FILE).unlink()

    res = _run("fit", str(proj), "--iters", "2")
    assert res.returncode != 0
    assert "body_model.npz" in res.stderr and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert not (proj / BODY_MODEL_FILE).exists() and not (proj / "checkpoints").exists()

    body = load_project_body(Project.open(proj))  # the body model is installed here: made and stored
    remade = dict(np.load(proj / BODY_MODEL_FILE))
    assert set(remade) == set(stored)
    for k in ("rest_vertices", "skin_weights", "pre", "post", "sdf_volume"):
        assert np.allclose(remade[k], stored[k], atol=1e-5), k
    assert body.model.num_bones == len(stored["bone_names"])
