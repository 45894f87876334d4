"""The headless CLI as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.project import Project

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), "-q", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def assert_clean_error(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert needle in p.stderr, p.stderr


@pytest.mark.parametrize("cmd", [[], ["synth"], ["eval"], ["fit"], ["export"], ["demo"]])
def test_every_command_has_help(cmd):
    p = run(*cmd, "--help")
    assert p.returncode == 0 and "usage:" in p.stdout


def test_synth_then_eval_end_to_end(tmp_path):
    out = tmp_path / "scene"
    p = run("synth", str(out), "--frames", "5", "--size", "64", "--garment", "dress", "--motion", "walk",
            "--seed", "2", "--pose-noise", "2")
    assert p.returncode == 0, p.stderr
    proj = Project.open(out / "project")
    assert proj.num_frames == 5 and proj.held_out == [4]
    assert (out / "video.mp4").stat().st_size > 0
    report = tmp_path / "r.json"
    p = run("eval", str(out / "project"), "--json", str(report))
    assert p.returncode == 0, p.stderr
    data = json.loads(report.read_text())
    assert data["method"] == "body_only" and data["frames"] == [4]
    for key in ("psnr", "ssim", "m_psnr", "m_ssim", "iou", "chamfer_cm", "normal_consistency",
                "fscore_1cm", "fscore_2cm", "mpvpe_cm"):
        assert key in data["metrics"], key
    assert "m_psnr" in p.stderr  # the summary table is shown too


def test_existing_output_refused_without_overwrite(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "a.txt").write_text("keep")
    p = run("synth", str(out), "--frames", "2")
    assert_clean_error(p, "--overwrite")
    assert (out / "a.txt").read_text() == "keep"


def test_bad_option_values(tmp_path):
    assert_clean_error(run("synth", str(tmp_path / "x"), "--frames", "0"), "must be positive")
    assert_clean_error(run("synth", str(tmp_path / "x"), "--frames", "many"), "expected a whole number")
    assert_clean_error(run("synth", str(tmp_path / "x"), "--motion", "dance"), "invalid choice")
    assert_clean_error(run("synth", str(tmp_path / "x"), "--size", "8"), "--size")
    assert not (tmp_path / "x").exists()


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_clean_error(run("synth", str(blocker / "sub"), "--frames", "2"), "not a folder")
    assert_clean_error(run("synth", "/proc/avatar_test_out", "--frames", "2"), "cannot")


def test_eval_refuses_what_is_not_a_project(tmp_path):
    assert_clean_error(run("eval", str(tmp_path)), "not a project folder")
    assert_clean_error(run("eval", str(tmp_path / "missing")), "not a folder")
    (tmp_path / "project.json").write_text("{broken")
    assert_clean_error(run("eval", str(tmp_path)), "corrupt")


def test_eval_json_to_missing_folder(small_scene, tmp_path):
    p = run("eval", str(small_scene / "project"), "--json", str(tmp_path / "nope" / "r.json"))
    assert_clean_error(p, "does not exist")
