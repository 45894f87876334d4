"""Project folders and atomic writes: nothing saved is damaged by a failed write or a bad file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from engine.errors import UserError
from engine.io import atomic
from engine.project import Project, held_out_frames


def test_held_out_every_fifth():
    assert held_out_frames(12) == [4, 9]
    assert held_out_frames(3) == []


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "data.json"
    atomic.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]  # no temp file left


def test_staged_folder_swaps_in_only_when_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.staged_folder(out, overwrite=True) as stage:
            (stage / "new.txt").write_text("new")
            raise RuntimeError("cancelled")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "old.txt").exists() and not (out / "new.txt").exists()
    with atomic.staged_folder(out, overwrite=True) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]


def test_images_round_trip(tmp_path):
    rgb = (np.random.default_rng(0).random((5, 7, 3)) * 255).astype(np.uint8)
    atomic.write_image(tmp_path / "a.png", rgb)
    assert np.array_equal(atomic.read_image(tmp_path / "a.png"), rgb)


@pytest.fixture
def project_copy(small_scene, tmp_path):
    dst = tmp_path / "p"
    shutil.copytree(small_scene / "project", dst)
    return dst


def test_newer_schema_is_refused(project_copy):
    meta = json.loads((project_copy / "project.json").read_text())
    meta["schema"] = 99
    (project_copy / "project.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="newer version"):
        Project.open(project_copy)


def test_incomplete_project_is_refused(project_copy):
    (project_copy / "body.npz").unlink()
    with pytest.raises(UserError, match="body.npz is missing"):
        Project.open(project_copy)


def test_foreign_json_is_refused(tmp_path):
    (tmp_path / "project.json").write_text(json.dumps({"name": "something else"}))
    with pytest.raises(UserError, match="not an avatar project"):
        Project.open(tmp_path)
