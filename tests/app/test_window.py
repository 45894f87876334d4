"""The real window driven like a user: refine the tiny project, watch it, scrub, pause/resume, export."""

from __future__ import annotations

import numpy as np
import trimesh
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from tqdm import tqdm

from engine.cli import main as cli_main
from engine.refine.checkpoint import checkpoint_path
from engine.refine.history import RunHistory
from tests.app.conftest import wait_until


def test_refine_scrub_pause_resume_export(window, qapp, tiny_project, tmp_path):
    w = window
    # Live views often enough to see them in a few steps (the app's defaults are every 50 steps).
    w.refine.preview_every = w.refine.mesh_every = w.refine.checkpoint_every = w.refine.heldout_every = 4
    w.refine.mesh_resolution = 64
    assert w.open_project(tiny_project)
    assert w.controls.state == "idle" and w.timeline.n == 8
    assert w.refine.heldout_frames == [4]
    assert w.frames.tiles["input"].image is not None

    w.controls.steps.setValue(8)
    w.controls.minutes.setValue(0)
    w.controls.start_button.click()
    assert w.controls.state == "running"
    wait_until(qapp, lambda: w.losses.num_points >= 2, 240, "the first loss points")
    assert "total" in w.losses.curves and "rgb" in w.losses.curves

    w.controls.pause_button.click()
    wait_until(qapp, lambda: w.controls.state == "paused", 120, "the pause")
    paused = w.refine.step
    assert paused >= 2 and checkpoint_path(tiny_project).exists()
    assert w.controls.resume_button.isEnabled() and not w.controls.start_button.isEnabled()

    w.controls.resume_button.click()
    wait_until(qapp, lambda: w.refine.runner is None, 240, "the resumed run to finish")
    assert w.refine.step == paused + 8, "a resumed run continues from the checkpoint's step"
    assert w.losses.num_points == w.refine.step
    assert w.controls.state == "resumable"

    # A training preview: a real render of frame 0 with the person in it.
    step, imgs = w.frames.renders[0]
    assert step >= 4 and imgs["rgb"].shape == (128, 96, 3)
    assert float(np.std(imgs["rgb"])) > 0.02 and float(imgs["opacity"].max()) > 0.9
    assert w.frames.tiles["render"].image is not None

    # The 3D view: after the run, the session re-opens from the checkpoint and poses the mesh at frame 0.
    wait_until(qapp, lambda: w.views.canonical is not None and w.views.canonical.step == w.refine.step and w.views.posed_frame == 0
               and w.views.shown_token == w.views.mesh_token, 120, "the newest mesh posed at frame 0")
    assert w.mesh_view.num_faces > 1000

    # Held-out PSNR while it trains: the newest checkpoint is scored while the runs go and at their end.
    wait_until(qapp, lambda: w.losses.num_held_out >= 2 and w.losses.held_steps[-1] == w.refine.step, 60,
               "held-out scores up to the last step")
    assert w.losses.held_steps == sorted(set(w.losses.held_steps)) and w.losses.held_steps[0] < w.refine.step
    for k in ("psnr", "m_psnr"):
        assert all(5 < v < 60 for v in w.losses.held[k]), (k, w.losses.held[k])
    assert w.losses.held["m_psnr"][-1] < w.losses.held["psnr"][-1], "the person is harder than the background"
    assert "held-out" in w.losses.summary.text() and "interpolated" in w.losses.psnr_area.toolTip()
    # The view thread keeps each score in the project's history, which a reopened project draws again.
    wait_until(qapp, lambda: [e["step"] for e in RunHistory.load(tiny_project).scores][-1:] == [w.refine.step], 30,
               "the last held-out score in history.json")
    saved = {e["step"]: e for e in RunHistory.load(tiny_project).scores}
    assert set(w.losses.held_steps) <= set(saved)
    assert abs(saved[w.refine.step]["psnr"] - w.losses.held["psnr"][-1]) < 1e-4
    v0 = np.array(w.mesh_view.mesh.vertices)
    w.timeline.set_frame(4)
    wait_until(qapp, lambda: w.views.posed_frame == 4, 60, "the mesh posed at frame 4")
    v4 = np.array(w.mesh_view.mesh.vertices)
    assert v4.shape == v0.shape and float(np.abs(v4 - v0).max()) > 0.05, "frame 4 is a quarter turn away"
    assert w.frames.frame == 4

    # Reset view frames the shown mesh: it fills most of the 3D view's height, and none of it is cut off.
    w.mesh_view.reset_button.click()
    w.mesh_view.grid.setVisible(False)  # the floor grid is not the mesh
    qapp.processEvents()
    fb = _rgb(w.mesh_view.view.grabFramebuffer())
    w.mesh_view.grid.setVisible(True)
    rows = np.flatnonzero((np.abs(fb.astype(int) - np.array([40, 40, 46])).sum(-1) > 30).any(1))
    assert 0.75 < (rows[-1] - rows[0] + 1) / fb.shape[0] < 0.92, (rows[0], rows[-1], fb.shape)
    assert rows[0] > 0 and rows[-1] < fb.shape[0] - 1

    w.activateWindow()
    w.setFocus()
    QTest.keyClick(w, Qt.Key.Key_Right)
    assert w.timeline.frame == 5
    QTest.keyClick(w, Qt.Key.Key_Left)
    assert w.timeline.frame == 4

    # The 3D panel is not blank: many colours, and the mesh's pixels differ from the background.
    shot = w.mesh_view.grab_array(320, 320)
    assert shot.shape == (320, 320, 3)
    bg = np.array([40, 40, 46])
    assert (np.abs(shot.astype(int) - bg).sum(-1) > 30).mean() > 0.03
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50
    assert w.capture.save_screenshot("3D panel", tmp_path / "shot3d.png") and (tmp_path / "shot3d.png").stat().st_size > 1000

    # A turntable video of the mesh: drawn by the engine (engine/render/turntable.py, as `render --turntable`), encoded
    # by the engine's mp4 writer.
    assert w.capture.save_turntable(tmp_path / "turn.mp4", frames=8, size=128)
    import av

    with av.open(str(tmp_path / "turn.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (128, 128, 3)
    assert float(np.abs(frames[0].astype(int) - frames[2].astype(int)).mean()) > 0.5, "the view turns"

    # Export through the dialog the menu opens: canonical OBJ, then the current frame as PLY.
    out_obj, out_ply = tmp_path / "gui" / "avatar.obj", tmp_path / "gui" / "frame4.ply"
    dlg = w.export.show_dialog()
    dlg.resolution.setValue(64)
    wait_until(qapp, lambda: dlg.count.text().endswith("per mesh"), 60, "the triangle count")
    count = int(dlg.count.text().split()[0].replace(",", ""))
    assert count > 1000
    dlg.out.setText(str(out_obj))
    dlg._accept()
    wait_until(qapp, lambda: w.job_runner is None, 120, "the OBJ export")
    m = trimesh.load(out_obj, process=False)
    assert len(m.faces) == count

    dlg = w.export.show_dialog()
    dlg.resolution.setValue(64)
    dlg.fmt.setCurrentText("ply")
    dlg.what.setCurrentIndex(1)
    dlg.out.setText(str(out_ply))
    dlg._accept()
    wait_until(qapp, lambda: w.job_runner is None, 120, "the PLY export")
    p = trimesh.load(out_ply, process=False)
    assert len(p.faces) == count and p.visual.vertex_colors.shape[0] == len(p.vertices)

    # The CLI's export of the same project gives the same bytes (its progress-bar monitor thread is off:
    # it would outlive the test).
    tqdm.monitor_interval = 0
    assert cli_main(["-q", "export", str(tiny_project), str(tmp_path / "cli.obj"), "--resolution", "64"]) == 0
    assert (tmp_path / "cli.obj").read_bytes() == out_obj.read_bytes()
    assert cli_main(["-q", "export", str(tiny_project), str(tmp_path / "cli.ply"), "--resolution", "64",
                     "--frame", "4"]) == 0
    assert (tmp_path / "cli.ply").read_bytes() == out_ply.read_bytes()

    # Closing during a run asks (answered yes here), cancels and joins; the checkpoint keeps the steps.
    before = w.refine.step
    w.controls.resume_button.click()
    wait_until(qapp, lambda: w.refine.step > before, 120, "a step of the last run")
    assert w.close()
    assert w.refine.runner is None or not w.refine.runner.isRunning()
    import torch

    assert torch.load(checkpoint_path(tiny_project), weights_only=True)["step"] >= before + 1


def _rgb(image) -> np.ndarray:
    """A QImage as [H, W, 3] uint8."""
    from PySide6.QtGui import QImage

    img = image.convertToFormat(QImage.Format.Format_RGB888)
    a = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())
    return a[:, : img.width() * 3].reshape(img.height(), img.width(), 3).copy()
