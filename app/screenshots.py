"""Makes the README's screenshots with the real app: `python -m app.screenshots` (under a desktop or Xvfb).

Generates the built-in demo scene, refines it for a while in the window, then saves the window, the 2D
panel and the 3D panel as PNGs in resources/docs/; then bakes the texture (File ▸ Bake texture…) and saves
the textured 3D panel and the 2D panel's input | render | textured (nothing here is drawn by hand).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("app.screenshots")
DOCS = Path(__file__).resolve().parents[1] / "resources" / "docs"


def _wait(app, cond, timeout: float) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("the app did not get there in time")
        app.processEvents()
        time.sleep(0.02)


def _textured_shots(app, w, frame: int, size: int, out: Path) -> None:
    """Bakes the texture, then the textured 3D panel (lit) and the 2D panel with the textured render."""
    w.mesh_view.shading.setCurrentText("colours")
    if w.bake.start(size) is None:
        raise RuntimeError(f"the bake did not start: {w.last_error}")
    _wait(app, lambda: w.job_runner is None, 1800)
    _wait(app, lambda: w.views.textured is not None and w.mesh_view.textured_shown
          and w.views.posed_frame == frame and w.views.shown_token == w.views.mesh_token
          and frame in w.frames.textured_renders and frame in w.frames.renders, 600)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    w.capture.save_screenshot("3D panel", out / "app_mesh_textured.png")
    w.capture.save_screenshot("2D panel", out / "app_frames_textured.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=200, help="refinement steps before the pictures")
    p.add_argument("--frame", type=int, default=3, help="frame shown when the pictures are taken")
    p.add_argument("--user-dir", help="where the demo scene goes (default: a temporary folder)")
    p.add_argument("--texture", type=int, default=2048, help="size of the baked texture (0: no textured pictures)")
    p.add_argument("--out-dir", default=str(DOCS))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from app.main import configure_threads, share_gl_contexts

    configure_threads()
    share_gl_contexts()
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from app.settings import Settings
    from app.window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    tmp = tempfile.mkdtemp(prefix="avatar-shots-")
    user = Path(args.user_dir or tmp)
    w = MainWindow(Settings(QSettings(f"{tmp}/settings.ini", QSettings.Format.IniFormat)), user_dir=user)
    w.assume_yes = True
    w.resize(1280, 800)
    w.show()
    w.refine.preview_every = w.refine.mesh_every = 50
    w.refine.mesh_resolution = 128
    w.controls.steps.setValue(args.steps)
    w.controls.minutes.setValue(0)
    w.preprocess.open_demo(autostart=False)
    _wait(app, lambda: w.project is not None and w.job_runner is None, 600)
    w.refine.start()
    _wait(app, lambda: w.refine.runner is None, 1800)
    w.timeline.set_frame(args.frame)
    _wait(app, lambda: w.session_worker.has_session, 600)  # a short run's first checkpoint is its last
    w.views.render_frame(args.frame)
    _wait(app, lambda: args.frame in w.frames.renders and w.views.posed_frame == args.frame
          and w.views.shown_token == w.views.mesh_token and w.losses.held_steps[-1:] == [w.refine.step], 600)
    w.mesh_view.reset_view()  # framed as the posed mesh of that frame
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w.capture.save_screenshot("window", out / "app_window.png")
    w.mesh_view.shading.setCurrentText("normals")
    app.processEvents()
    w.capture.save_screenshot("3D panel", out / "app_mesh_normals.png")
    if args.texture:
        _textured_shots(app, w, args.frame, args.texture, out)
    w.close()
    import shiboken6

    shiboken6.delete(w)
    shiboken6.delete(app)
    import gc

    gc.collect()  # before interpreter shutdown (see app.main)
    log.info("screenshots written to %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
