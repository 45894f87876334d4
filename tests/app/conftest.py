"""GUI tests: a private Xvfb screen (Mesa GL), one QApplication, a tiny synthetic project, and a check
that no test leaves a thread running."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time

import pytest

from engine.jobs import run_job
from engine.synth.scene import SynthConfig, synth_job

TINY = SynthConfig(frames=8, size=128, motion="turn", garment="shirt", seed=7, pose_noise=0.0, voxel=0.012)


@pytest.fixture(scope="session")
def xvfb():
    """Starts `Xvfb` on a free display (it reports the number itself) and points Qt at it."""
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (Debian: xvfb); the GUI tests need a virtual X screen")
    r, w = os.pipe()
    proc = subprocess.Popen([exe, "-displayfd", str(w), "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        display = f.readline().strip()
    if not display:
        proc.kill()
        pytest.skip("Xvfb did not start")
    old = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    os.environ["DISPLAY"] = f":{display}"
    os.environ["QT_QPA_PLATFORM"] = "xcb"  # GL widgets stay blank with the offscreen platform
    os.environ.pop("WAYLAND_DISPLAY", None)
    yield f":{display}"
    proc.terminate()
    proc.wait(10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def qapp(xvfb):
    from PySide6.QtWidgets import QApplication

    from app.main import configure_threads, share_gl_contexts

    configure_threads()
    share_gl_contexts()
    app = QApplication.instance() or QApplication(["avatar-studio-tests"])
    yield app
    # Close the X connection before Xvfb goes away (else Qt aborts at interpreter exit).
    import shiboken6
    from PySide6.QtCore import QCoreApplication, QEvent

    app.closeAllWindows()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    app.processEvents()
    shiboken6.delete(app)


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory):
    """An 8-frame 128 px synthetic scene (read-only: copy its project before writing into it)."""
    out = tmp_path_factory.mktemp("tiny") / "scene"
    run_job(synth_job(TINY, out))
    return out


@pytest.fixture
def tiny_project(tiny_scene, tmp_path):
    dst = tmp_path / "project"
    shutil.copytree(tiny_scene / "project", dst)
    return dst


@pytest.fixture(scope="session")
def fitted_scene(tiny_scene, tmp_path_factory):
    """The tiny project with a checkpoint after one step (read-only: copy it before writing into it).
    A fresh fit precomputes the body's SDF (most of the ~40 s); sessions opened from the checkpoint do not."""
    from engine.refine.loop import FitBudget, fit_job

    dst = tmp_path_factory.mktemp("fitted") / "project"
    shutil.copytree(tiny_scene / "project", dst)
    run_job(fit_job(dst, None, FitBudget(iters=1, preview_every=0, mesh_every=0)))
    return dst


@pytest.fixture(scope="session")
def baked_scene(fitted_scene, tmp_path_factory):
    """The fitted tiny project with a 1024² texture baked from its checkpoint (read-only)."""
    from engine.texture import BakeConfig, bake_job

    dst = tmp_path_factory.mktemp("baked") / "project"
    shutil.copytree(fitted_scene, dst)
    run_job(bake_job(dst, BakeConfig(size=1024, resolution=64, register=False)))
    return dst


@pytest.fixture
def fitted_project(fitted_scene, tmp_path):
    dst = tmp_path / "fitted"
    shutil.copytree(fitted_scene, dst)
    return dst


@pytest.fixture
def baked_project(baked_scene, tmp_path):
    dst = tmp_path / "baked"
    shutil.copytree(baked_scene, dst)
    return dst


@pytest.fixture
def window(qapp, tmp_path):
    """The real main window with settings in a private file, shown at 1280×800."""
    from PySide6.QtCore import QSettings

    from app.settings import Settings
    from app.window import MainWindow

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # as main.py configures logging: the Log tab shows INFO records
    settings = Settings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    w = MainWindow(settings, user_dir=tmp_path / "user")
    w.assume_yes = True
    w.resize(1280, 800)
    w.show()
    qapp.processEvents()
    yield w
    w.close()
    qapp.processEvents()
    root.setLevel(level)


@pytest.fixture(autouse=True)
def no_thread_left():
    """Fails a test that leaves a job thread or a Python thread running."""
    before = set(threading.enumerate())
    yield
    from app.jobs import running_runners

    deadline = time.monotonic() + 5
    while running_runners() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running_runners(), f"threads left running: {[r.objectName() for r in running_runners()]}"
    extra = [t for t in threading.enumerate() if t not in before and t.is_alive()
             and not isinstance(t, threading._DummyThread)]
    assert not extra, f"Python threads left running: {extra}"


def wait_until(app, cond, timeout: float, what: str) -> None:
    """Processes Qt events until cond() is true; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        app.processEvents()
        time.sleep(0.02)
