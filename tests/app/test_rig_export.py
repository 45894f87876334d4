"""Export animated avatar…: the menu's dialog builds the `RigConfig` of `export --rigged` and runs the same job;
the file is the one the CLI's job writes."""

from __future__ import annotations

from engine.export import RigConfig, rigged_job
from engine.jobs import run_job
from engine.rig import REST_POSES
from tests.app.conftest import wait_until


def test_export_animated_avatar(window, qapp, baked_project, tmp_path):
    w = window
    assert w.open_project(baked_project)
    w.act_export_rig.trigger()
    dlg = w.export.rig_dialog
    assert dlg is not None and dlg.isVisible()
    assert tuple(dlg.rest.itemData(i) for i in range(dlg.rest.count())) == REST_POSES
    assert dlg.texture.currentData() is None  # the project's bake (or vertex colours without one)
    dlg.resolution.setValue(64)
    dlg.rest.setCurrentIndex(dlg.rest.findData("t-pose"))
    cfg = dlg.request().config
    assert cfg == RigConfig(resolution=64, rest="t-pose"), cfg  # the project's frame rate: fps None
    dlg.fps.setValue(12.0)
    assert dlg.request().config.fps == 12.0
    dlg.animation.setChecked(False)
    assert not dlg.fps.isEnabled() and dlg.request().config.animation is False
    dlg.animation.setChecked(True)
    dlg.out.setText(str(tmp_path / "gui" / "avatar.glb"))
    dlg._accept()
    wait_until(qapp, lambda: w.job_runner is None, 120, "the rigged export")
    got = (tmp_path / "gui" / "avatar.glb").read_bytes()
    run_job(rigged_job(baked_project, tmp_path / "cli.glb", RigConfig(resolution=64, rest="t-pose", fps=12.0)))
    assert got == (tmp_path / "cli.glb").read_bytes()
