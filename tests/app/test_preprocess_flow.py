"""New project from a video, as a user does it: drop a clip on the window, pick where the project goes in
the folder dialog, watch the stages, check the fitted body over the frames, then refine a few steps.

Everything is real: the synthetic clip is an H.264 mp4 decoded by PyAV, mediapipe finds the person, the
Anny body is fitted, and the app's own preprocess job runs in its QThread."""

from __future__ import annotations

import numpy as np
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QFileDialog

from engine.jobs import run_job
from engine.preprocess.job import STAGES
from engine.refine.checkpoint import checkpoint_path
from engine.synth.scene import SynthConfig, synth_job
from tests.app.conftest import wait_until

# 8 frames of a turn, 192×256 portrait: mediapipe's detector finds nobody much smaller; frame 4 is held out.
CLIP = SynthConfig(frames=8, size=256, motion="turn", garment="shirt", seed=7, pose_noise=0.0, voxel=0.012)


def _answer_folder_dialog(app, folder, answered: list) -> None:
    """Answers the app's "Create the project in…" dialog with `folder`, as a user would (type, accept)."""
    dlg = app.activeModalWidget()
    if not isinstance(dlg, QFileDialog):
        QTimer.singleShot(50, lambda: _answer_folder_dialog(app, folder, answered))
        return
    answered.append(dlg.windowTitle())
    dlg.setDirectory(str(folder.parent))
    dlg.selectFile(str(folder))
    dlg.accept()


def test_new_project_from_dropped_video(window, qapp, tmp_path):
    w = window
    scene = tmp_path / "clip"
    run_job(synth_job(CLIP, scene))
    video = scene / "video.mp4"
    projects = tmp_path / "projects"
    projects.mkdir()

    # The user's working resolution for new projects: 128 px keeps the test quick (the clip is 192×256).
    w.controls.resolution.setValue(128)
    # Drop the video on the window; the app asks where the project goes.
    answered: list[str] = []
    QTimer.singleShot(50, lambda: _answer_folder_dialog(qapp, projects, answered))
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(video))])
    w.dropEvent(QDropEvent(QPointF(QPoint(400, 300)), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                           Qt.KeyboardModifier.NoModifier))
    assert answered == ["Create the project in…"]
    r = w.job_runner
    assert r is not None and r.name == "preprocess", w.last_error
    seen: list = []
    r.progress.connect(seen.append)
    assert w.controls.state == "busy" and w.controls.cancel_button.isVisible()
    assert not w.controls.start_button.isEnabled() and not w.controls.new_button.isEnabled()

    wait_until(qapp, lambda: w.job_runner is None, 300, "preprocessing to finish")
    assert w.last_error is None, w.last_error

    # Each stage was shown in order and ended complete (the first one may have begun before `seen` listened).
    stages = list(dict.fromkeys(ev.stage for ev in seen))
    assert stages == list(STAGES)[-len(stages):] and len(stages) >= 3, stages
    for s in stages:
        last = [ev for ev in seen if ev.stage == s][-1]
        assert last.done == last.total > 0, (s, last)
    log_text = w.log_panel.toPlainText()
    assert "preprocessed 8 frames" in log_text and all(s in log_text for s in STAGES), log_text[-2000:]

    # The project is open, at the chosen place, ready to refine.
    target = projects / "video"
    assert w.project is not None and w.project.root == target.resolve()
    assert w.project.num_frames == 8 and w.timeline.n == 8 and w.refine.heldout_frames == [4]
    assert w.controls.state == "idle" and w.controls.start_button.isEnabled()
    assert str(target.resolve()) in w.settings.recent
    assert w.frames.tiles["input"].image is not None

    # The fitted body over the frames is shown to the user before refining: a dialog with the contact sheet.
    dlg = w.preprocess.overlay_dialog
    assert dlg.isVisible() and "Body fit" in dlg.windowTitle()
    pm = dlg.sheet.pixmap()
    assert not pm.isNull() and pm.width() > 200 and pm.height() > 100
    screen = dlg.screen().availableGeometry()
    assert dlg.frameGeometry().width() <= screen.width() and dlg.frameGeometry().height() <= screen.height()
    shot = dlg.grab().toImage()
    px = np.array([[shot.pixelColor(x, y).red() for x in range(0, shot.width(), 7)]
                   for y in range(0, shot.height(), 7)])
    assert px.std() > 20, "the sheet shows pictures, not a blank dialog"
    sheet = np.array(Image.open(target / "overlay_sheet.png"))
    assert abs(pm.width() / pm.height() - sheet.shape[1] / sheet.shape[0]) < 0.02, "the whole sheet, undistorted"
    dlg.close()

    # Refine a few steps on the new project.
    w.refine.preview_every = w.refine.mesh_every = w.refine.checkpoint_every = 4  # one render and one mesh, at the last step
    w.refine.mesh_resolution = 64
    w.controls.steps.setValue(4)
    w.controls.minutes.setValue(0)
    w.controls.start_button.click()
    assert w.controls.state == "running"
    wait_until(qapp, lambda: w.refine.runner is None, 300, "the refine run to finish")
    assert w.last_error is None, w.last_error
    assert w.refine.step == 4 and w.losses.num_points == 4 and checkpoint_path(target).exists()
    assert w.controls.state == "resumable"
    assert all(np.isfinite(w.losses.data["total"]))
    step, imgs = w.frames.renders[0]
    assert step == 4 and imgs["rgb"].shape == (128, 96, 3) and w.frames.tiles["render"].image is not None
    wait_until(qapp, lambda: w.views.canonical is not None and w.views.canonical.step == 4, 120, "the mesh of the last step")
    assert w.mesh_view.num_faces > 100
