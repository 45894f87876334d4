"""The baked texture in the app: the textured GL item, the 3D and 2D panels, the bake action and the bake
at the end of a run, on the tiny project fitted for one step (the fixtures of tests/app/conftest.py)."""

from __future__ import annotations

import numpy as np

from app.session_worker import TexturedArrays
from app.views.frames import COMPARE
from app.views.mesh3d import MeshView
from engine.mesh.textured import save_textured
from engine.refine.checkpoint import checkpoint_path
from engine.texture import load_bake, texture_dir
from tests.app.conftest import wait_until

MAGENTA, CYAN = np.array([255, 0, 255]), np.array([0, 255, 255])


def _share(img: np.ndarray, color: np.ndarray, tol: int = 12) -> float:
    """Share of the pixels of `img` [H, W, 3] uint8 within `tol` of `color` in every channel."""
    return float((np.abs(img.astype(int) - color).max(-1) <= tol).mean())


def _checker(size: int, square: int = 128) -> np.ndarray:
    """A magenta and cyan checkerboard texture [S, S, 3] float32 in [0, 1]."""
    k = (np.arange(size) // square)
    odd = (k[:, None] + k[None, :]) % 2 == 1
    return np.where(odd[..., None], CYAN / 255.0, MAGENTA / 255.0).astype(np.float32)


def _step(project) -> int:
    import torch

    return int(torch.load(checkpoint_path(project), weights_only=True)["step"])


def test_textured_item_draws_the_texture_the_right_way_up(qapp):
    """A quad facing the camera with a four-colour texture: each quarter of the image lands where the
    OBJ convention puts it (u to the right, v up; the texture's row 0 at the top)."""
    view = MeshView()
    view.resize(400, 440)
    view.show()
    quad = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float32)  # Y-up, facing +z
    tex = np.zeros((64, 64, 3), np.uint8)
    tex[:32, :32], tex[:32, 32:] = (255, 0, 0), (0, 255, 0)  # top: red | green
    tex[32:, :32], tex[32:, 32:] = (0, 0, 255), (255, 255, 0)  # bottom: blue | yellow
    mesh = TexturedArrays(quad, np.array([[0, 1, 2], [0, 2, 3]]), np.tile([0.0, 0.0, 1.0], (4, 1)),
                          np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32), tex)
    view.shading.setCurrentText("flat colours")
    view.set_mesh(mesh)
    view.grid.setVisible(False)
    qapp.processEvents()
    assert view.textured_shown
    img = view.grab_array(200, 200)
    inside = np.argwhere(np.abs(img.astype(int) - [40, 40, 46]).sum(-1) > 30)
    (r0, c0), (r1, c1) = inside.min(0), inside.max(0)
    assert r1 - r0 > 60 and c1 - c0 > 60, "the quad fills a good part of the view"
    at = lambda fy, fx: img[int(r0 + fy * (r1 - r0)), int(c0 + fx * (c1 - c0))]  # noqa: E731
    assert list(at(0.25, 0.25)) == [255, 0, 0] and list(at(0.25, 0.75)) == [0, 255, 0]
    assert list(at(0.75, 0.25)) == [0, 0, 255] and list(at(0.75, 0.75)) == [255, 255, 0]
    # The untextured shadings draw the same mesh without its texture.
    view.shading.setCurrentText("normals")
    assert not view.textured_shown
    view.close()


def test_textured_avatar_in_the_3d_and_2d_panels(window, qapp, baked_project):
    w = window
    tm, meta = load_bake(baked_project)
    tm.texture = _checker(tm.texture_size)
    save_textured(texture_dir(baked_project), tm, meta)  # a texture of known colours, same bake otherwise
    step = _step(baked_project)
    assert w.open_project(baked_project)

    # The bake is of the session's checkpoint: the 3D panel offers it and shows it posed at frame 0.
    wait_until(qapp, lambda: w.views.textured is not None and w.mesh_view.textured_shown and w.views.posed_frame == 0
               and w.views.shown_token == w.views.mesh_token, 60, "the textured mesh posed at frame 0")
    assert w.views.textured.step == step and w.mesh_view.texture_button.isVisible()
    assert "texture 1024²" in w.mesh_view.info.text()
    w.mesh_view.shading.setCurrentText("flat colours")  # unlit: the texture's own colours
    w.mesh_view.grid.setVisible(False)
    textured = w.mesh_view.grab_array(320, 320)
    assert _share(textured, MAGENTA) > 0.01 and _share(textured, CYAN) > 0.01, "the checker's colours show"

    # Texture off: the live mesh (vertex colours of the colour field), posed at the same frame.
    w.mesh_view.texture_button.setChecked(False)
    wait_until(qapp, lambda: w.views.canonical is not None and not w.mesh_view.textured_shown
               and w.views.posed_frame == 0 and w.views.shown_token == w.views.mesh_token, 60, "the untextured mesh")
    plain = w.mesh_view.grab_array(320, 320)
    assert _share(plain, MAGENTA) < 0.001 and _share(plain, CYAN) < 0.001
    assert float(np.abs(plain.astype(int) - textured.astype(int)).mean()) > 5

    # Texture on, canonical and then posed into another frame (posed in the session worker).
    w.mesh_view.texture_button.setChecked(True)
    w.mesh_view.mode.setCurrentText("canonical")
    assert w.mesh_view.textured_shown and w.views.posed_frame is None
    canonical = np.array(w.mesh_view.mesh.vertices)
    w.mesh_view.mode.setCurrentText("posed")
    w.timeline.set_frame(4)
    wait_until(qapp, lambda: w.views.posed_frame == 4 and w.mesh_view.textured_shown, 60, "the textured mesh at frame 4")
    assert float(np.abs(np.array(w.mesh_view.mesh.vertices) - canonical).max()) > 0.05
    assert _share(w.mesh_view.grab_array(320, 320), MAGENTA) > 0.01

    # The 2D panel: the textured mesh rendered into frame 4 beside the input and the neural render.
    w.frames.layout_mode.setCurrentText(COMPARE)
    wait_until(qapp, lambda: w.frames.tiles["textured"].image is not None, 60, "the textured render of frame 4")
    img = np.asarray(w.frames.tiles["textured"].image)
    assert img.shape == (128, 96, 3) and 4 in w.frames.textured_renders
    u8 = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    assert _share(u8, MAGENTA, 40) + _share(u8, CYAN, 40) > 0.03, "the person is drawn with the checker"

    # A live mesh of a newer step (training went on) makes the bake stale: no longer offered.
    from app.session_worker import MeshArrays

    c = w.views.canonical
    w.views.set_canonical(MeshArrays(c.vertices, c.faces, c.colors, step + 1))
    assert w.views.textured is None and not w.mesh_view.texture_button.isVisible()
    assert not w.frames.has_textured and w.frames.tiles["textured"].image is None


def test_bake_action(window, qapp, tiny_project, fitted_project):
    w = window
    # No fitted avatar: a message, no job.
    assert w.open_project(tiny_project)
    assert w.bake.show_dialog() is None and "no fitted avatar" in w.last_error
    assert w.job_runner is None

    assert w.open_project(fitted_project)
    wait_until(qapp, lambda: w.session_worker.has_session, 60, "the session")
    assert not w.mesh_view.texture_button.isVisible(), "nothing baked yet"
    w.bake.resolution = 64  # a coarse mesh: a quick bake
    dlg = w.bake.show_dialog()
    assert dlg.textValue() == "2048" and dlg.comboBoxItems() == ["1024", "2048", "4096"]
    stages = []
    dlg.setTextValue("1024")
    dlg.accept()
    r = w.job_runner
    assert r is not None and r.name == "bake" and w.controls.cancel_button.isVisible()
    r.progress.connect(lambda ev: stages.append(ev.stage))
    wait_until(qapp, lambda: w.job_runner is None, 60, "the bake")
    assert r.outcome == "done" and r.result["step"] == _step(fitted_project)
    assert any(s.startswith("bake") for s in stages)
    assert w.settings.get("bake_size") == 1024
    tm, meta = load_bake(fitted_project, _step(fitted_project))
    assert tm.texture_size == 1024

    # The app shows it: the 3D panel textured, the 2D panel input | render | textured.
    wait_until(qapp, lambda: w.views.textured is not None and w.mesh_view.textured_shown
               and w.views.shown_token == w.views.mesh_token, 60, "the baked mesh in the 3D panel")
    assert w.frames.layout_mode.currentText() == COMPARE
    wait_until(qapp, lambda: w.frames.tiles["textured"].image is not None, 60, "the textured render")
    rgb = np.asarray(w.frames.tiles["textured"].image)
    assert rgb.shape == (128, 96, 3) and float(rgb.std()) > 0.02
    assert float(np.abs(rgb - np.asarray(w.frames.tiles["input"].image)).mean()) < 0.15, "it looks like the frame"

    # Cancelled at once: nothing changes.
    before = (texture_dir(fitted_project) / "texture.json").stat().st_mtime_ns
    r = w.bake.start(1024)
    w.cancel_job()
    wait_until(qapp, lambda: w.job_runner is None, 60, "the cancelled bake")
    assert r.outcome == "cancelled"
    assert (texture_dir(fitted_project) / "texture.json").stat().st_mtime_ns == before


def test_bake_at_the_end_of_a_run(window, qapp, fitted_project):
    w = window
    assert not w.controls.bake_after.isChecked(), "off by default"
    w.controls.bake_after.setChecked(True)
    w.settings.set("bake_size", 1024)
    w.bake.resolution = 64
    assert w.open_project(fitted_project)
    w.controls.steps.setValue(1)
    w.controls.minutes.setValue(0)
    w.refine.preview_every = w.refine.mesh_every = 0
    assert w.refine.start()
    wait_until(qapp, lambda: w.refine.runner is None, 60, "the run")
    step = _step(fitted_project)
    assert w.job_runner is not None and w.job_runner.name == "bake", "the end of the run starts the bake"
    wait_until(qapp, lambda: w.job_runner is None, 60, "the bake")
    wait_until(qapp, lambda: w.views.textured is not None and w.views.textured.step == step, 60,
               "the bake of the run's last checkpoint")
    assert load_bake(fitted_project, step) is not None


def test_export_dialog_texture_and_glb(window, qapp, baked_project, tmp_path):
    """The dialog's texture and format choices reach `ExportConfig`; a textured OBJ (OBJ + MTL + PNG) and a
    GLB are written by the CLI's job from the project's bake (of this checkpoint, size and resolution)."""
    import trimesh

    w = window
    assert w.open_project(baked_project)
    wait_until(qapp, lambda: w.views.textured is not None, 60, "the bake")
    dlg = w.export.show_dialog()
    assert [dlg.fmt.itemText(i) for i in range(dlg.fmt.count())] == ["obj", "ply", "glb"]
    dlg.resolution.setValue(64)
    dlg.limit.setChecked(True)
    assert dlg.request().config.texture is None and dlg.request().config.faces == 50_000
    dlg.texture.setCurrentIndex(dlg.texture.findData(1024))
    cfg = dlg.request().config
    assert cfg.texture == 1024 and cfg.faces is None, "a textured mesh keeps its triangles"
    assert not dlg.limit.isEnabled()
    dlg.fmt.setCurrentText("ply")
    assert not dlg.texture.isEnabled() and dlg.request().config.texture is None
    assert dlg.out.text().endswith("avatar.ply") and dlg.limit.isEnabled()
    dlg.fmt.setCurrentText("glb")
    assert dlg.request().config.texture == 2048 and not dlg.texture.model().item(0).isEnabled()
    assert dlg.out.text().endswith("avatar.glb")
    dlg.texture.setCurrentIndex(dlg.texture.findData(1024))
    dlg.out.setText(str(tmp_path / "out" / "avatar.glb"))
    dlg._accept()
    wait_until(qapp, lambda: w.job_runner is None, 60, "the GLB export")
    scene = trimesh.load(tmp_path / "out" / "avatar.glb")
    geom = next(iter(scene.geometry.values()))
    assert geom.visual.material.baseColorTexture.size == (1024, 1024)

    dlg = w.export.show_dialog()
    dlg.resolution.setValue(64)
    dlg.texture.setCurrentIndex(dlg.texture.findData(1024))
    dlg.out.setText(str(tmp_path / "out" / "avatar.obj"))
    dlg._accept()
    wait_until(qapp, lambda: w.job_runner is None, 60, "the textured OBJ export")
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"avatar.obj", "avatar.mtl", "avatar.png"}
    m = trimesh.load(tmp_path / "out" / "avatar.obj", process=False)
    assert m.visual.uv is not None and len(m.faces) == load_bake(baked_project)[0].num_faces
