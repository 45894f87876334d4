"""The headless CLI as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import UserError
from engine.jobs.events import Progress
from engine.project import Project

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), "-q", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def assert_clean_error(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert needle in p.stderr, p.stderr


@pytest.mark.parametrize("cmd", [[], ["synth"], ["eval"], ["fit"], ["export"], ["render"], ["demo"]])
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


def test_a_synth_folder_stands_for_its_project(small_scene, tmp_path):
    # `synth OUT` writes OUT/project; every command that reads a project takes OUT too, and says so.
    p = run("eval", str(small_scene), "--json", str(tmp_path / "r.json"))
    assert p.returncode == 0, p.stderr
    assert f"using the project {small_scene / 'project'}" in p.stderr
    assert json.loads((tmp_path / "r.json").read_text())["frames"] == [4, 9]
    with pytest.raises(UserError, match=f"did you mean {small_scene / 'project'}"):
        Project.open(small_scene)


def test_export_canonical_is_the_unposed_mesh_only(tmp_path):
    out = str(tmp_path / "a.obj")
    assert_clean_error(run("export", str(tmp_path), out, "--canonical", "--frame", "1"), "--canonical")
    assert_clean_error(run("export", str(tmp_path), "--sequence", str(tmp_path / "seq"), "--canonical"), "--sequence")
    assert not (tmp_path / "a.obj").exists() and not (tmp_path / "seq").exists()


def _option(parser: argparse.ArgumentParser, *commands: str, flag: str) -> argparse.Action:
    for name in commands:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return next(a for a in parser._actions if flag in a.option_strings)


def test_option_choices_come_from_the_declarations():
    from engine.cli import build_parser
    from engine.evaluation import EvalConfig
    from engine.export import EXPORT_FORMATS, ExportConfig, RigConfig
    from engine.preprocess.job import PreprocessConfig
    from engine.prior.train import PriorConfig
    from engine.refine.config import PriorMode, RefineConfig, load_preset
    from engine.settings import Device, choices
    from engine.synth.garments import GARMENTS
    from engine.synth.motion import MOTIONS
    from engine.texture import BakeConfig

    p = build_parser()
    expected = {
        ("fit", "--preset"): choices(RefineConfig, "preset"),
        ("fit", "--incremental"): choices(RefineConfig, "incremental"),
        ("fit", "--time-consistency"): choices(RefineConfig, "time_consistency"),
        ("fit", "--morph-loss"): choices(RefineConfig, "morph_loss"),
        ("fit", "--mode"): choices(PriorMode),
        ("fit", "--device"): choices(Device),
        ("prior", "train", "--preset"): choices(PriorConfig, "preset"),
        ("prior", "train", "--shares"): choices(PriorConfig, "shares"),
        ("preprocess", "--body"): choices(PreprocessConfig, "body"),
        ("preprocess", "--device"): choices(PreprocessConfig, "device"),
        ("eval", "--method"): choices(EvalConfig, "method"),
        ("export", "--up"): choices(ExportConfig, "up"),
        ("export", "--format"): EXPORT_FORMATS,
        ("export", "--rest"): choices(RigConfig, "rest"),
        ("render", "--rest"): choices(RigConfig, "rest"),
        ("bake", "--source"): choices(BakeConfig, "source"),
        ("synth", "--motion"): MOTIONS,
        ("synth", "--garment"): GARMENTS,
    }
    for (*commands, flag), allowed in expected.items():
        assert allowed, (commands, flag)
        assert tuple(_option(p, *commands, flag=flag).choices) == tuple(allowed), (commands, flag)
    assert choices(RefineConfig, "preset") == choices(PriorConfig, "preset")
    assert choices(RefineConfig, "rays") == ()  # not a fixed set
    # validate() checks the same declaration.
    with pytest.raises(UserError, match="--incremental must be none, linear or squared"):
        load_preset("fast", incremental="cubic")
    with pytest.raises(UserError, match="--body must be anny, smpl or smplx"):
        PreprocessConfig(body="mannequin").validate()


def test_old_saved_settings_still_load(caplog):
    # A checkpoint of an older version may hold settings that are gone (e.g. `background`).
    from engine.refine.config import RefineConfig

    old = {**RefineConfig().to_dict(), "background": "plate", "test_only_gone_setting": 1}
    with caplog.at_level("WARNING"):
        assert RefineConfig.from_dict(old) == RefineConfig()
    assert "background" in caplog.text


def test_progress_to_a_pipe_is_plain_lines(small_scene, tmp_path):
    # Not a terminal: no carriage-return bar updates, only a line per stage (the body model cache is warm).
    p = subprocess.run([sys.executable, str(ROOT / "main.py"), "synth", str(tmp_path / "s"), "--frames", "30",
                        "--size", "64"], capture_output=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert b"\r" not in p.stderr + p.stdout
    lines = p.stderr.decode().splitlines()
    render = [line for line in lines if line.startswith("render:")]
    assert render and render[-1].startswith("render: 30/30 (100 %)"), lines
    assert len(render) <= 10 and len(lines) <= 20, lines  # not one per frame


def test_plain_progress_throttles_and_ends_each_stage():
    from engine.cli import PlainProgress

    lines, now = [], [0.0]
    progress = PlainProgress(lines.append, every=5.0, clock=lambda: now[0])
    for i in range(1, 81):  # 80 steps over 20 s
        now[0] = i * 0.25
        progress.update(Progress("refine", i, 80))
        if i == 30:
            progress.losses({"total": 0.5, "psnr_batch": 20.0})
    progress.update(Progress("mesh", 0, 1))  # the finished stage already said where it ended
    now[0] += 1.0
    progress.update(Progress("mesh", 1, 1))
    progress.update(Progress("frames", 3, 0))  # no total: its end is shown when it ends
    progress.close()
    assert lines == [
        "refine: 21/80 (26 %), 5 s",
        "refine: 41/80 (51 %), 10 s, loss 0.5000, psnr 20.0",
        "refine: 61/80 (76 %), 15 s, loss 0.5000, psnr 20.0",
        "refine: 80/80 (100 %), 20 s, loss 0.5000, psnr 20.0",
        "mesh: 1/1 (100 %), 1 s",
        "frames: 3, 0 s",
    ]
