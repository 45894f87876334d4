"""Bad input gets a clear message and the window stays usable; settings and recent projects persist."""

from __future__ import annotations

import dataclasses
import json

from PySide6.QtCore import QMimeData, QPoint, QPointF, QSettings, Qt, QUrl
from PySide6.QtGui import QDropEvent

from app.settings import Settings
from app.window import MainWindow
from engine.refine.config import RefineConfig, load_preset
from engine.settings import field_docs
from tests.app.conftest import wait_until


def test_bad_folders_and_files_leave_the_app_usable(window, qapp, tiny_project, tmp_path):
    w = window
    (tmp_path / "empty").mkdir()
    assert not w.open_path(tmp_path / "empty")
    assert "not a project folder" in w.last_error and w.project is None

    newer = tmp_path / "newer"
    import shutil

    shutil.copytree(tiny_project, newer)
    meta = json.loads((newer / "project.json").read_text())
    meta["schema"] = 99
    (newer / "project.json").write_text(json.dumps(meta))
    assert not w.open_path(newer)
    assert "newer version" in w.last_error

    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(notes))])
    drop = QDropEvent(QPointF(QPoint(400, 300)), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                      Qt.KeyboardModifier.NoModifier)
    w.dropEvent(drop)
    assert "not a video" in w.last_error

    # A file named like a video that is not one: preprocessing refuses it with a message, nothing is made.
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\0garbage" * 100)
    assert w.preprocess.new_project_from_video(broken, target=tmp_path / "from_broken")
    w.last_error = None
    wait_until(qapp, lambda: w.job_runner is None, 120, "preprocessing to refuse the file")
    assert w.last_error and "broken.mp4" in w.last_error
    assert not (tmp_path / "from_broken").exists()
    assert w.controls.state == "no project"

    assert w.open_path(tiny_project)  # still usable
    assert w.controls.state == "idle" and w.timeline.n == 8


def test_settings_tooltips_and_recent_projects_persist(qapp, tiny_project, tmp_path):
    path = str(tmp_path / "settings.ini")
    w = MainWindow(Settings(QSettings(path, QSettings.Format.IniFormat)), user_dir=tmp_path / "user")
    c = w.controls
    assert c.fields["rays"].toolTip() == field_docs(RefineConfig)["rays"]
    assert c.preset.toolTip() == field_docs(RefineConfig)["preset"]
    assert not c.advanced.isVisible() or not c.adv_toggle.isChecked()  # advanced settings start collapsed
    c.preset.setCurrentText("vid2avatar")
    c.fields["rays"].setValue(777)
    c.steps.setValue(1234)
    c.minutes.setValue(2.5)
    assert c.refine_config().rays == 777 and c.refine_config().preset == "vid2avatar"
    # Every RefineConfig field has a widget (ints, floats, bools, choices) that gives its value back unchanged
    # (the preset has its own control; the chosen prior and its mode set freeze_shared and prior_shares).
    assert set(c.fields) == {f.name for f in dataclasses.fields(RefineConfig)} - {"preset", "freeze_shared",
                                                                                  "prior_shares"}
    assert c.refine_config() == load_preset("vid2avatar", rays=777)
    assert w.open_project(tiny_project)
    w.close()

    w2 = MainWindow(Settings(QSettings(path, QSettings.Format.IniFormat)), user_dir=tmp_path / "user")
    c2 = w2.controls
    assert c2.preset.currentText() == "vid2avatar" and c2.fields["rays"].value() == 777
    assert c2.steps.value() == 1234 and c2.minutes.value() == 2.5
    assert str(tiny_project.resolve()) in w2.settings.recent
    assert [a.text() for a in w2.recent_menu.actions()] == [str(tiny_project.resolve())]
    w2.close()
