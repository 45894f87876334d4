"""`python main.py` (no command) or `python -m app`: the desktop app."""

from __future__ import annotations

import argparse
import logging
import os
import sys


def configure_threads() -> int:
    """Leaves one core to the GUI: on a 2-core machine training and the window would otherwise fight
    over both cores and the window would stutter. Returns the torch thread count chosen."""
    import torch

    n = max(1, (os.cpu_count() or 1) - 1)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set (parallel work ran before): harmless
    return n


def share_gl_contexts() -> None:
    """Must run before the QApplication exists: pyqtgraph caches compiled shader programs globally, so a
    second 3D view (a new window) needs the GL contexts to share resources."""
    from PySide6.QtCore import QCoreApplication, Qt

    QCoreApplication.setAttribute(Qt.ApplicationAttribute.AA_ShareOpenGLContexts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py", description="Avatar Studio desktop app. "
                                "Run `main.py --help-commands` for the headless commands.")
    p.add_argument("path", nargs="?", help="a project folder to open, or a video to preprocess")
    p.add_argument("--demo", action="store_true", help="open the built-in synthetic demo (generated on first use)")
    p.add_argument("--start", action="store_true", help="start refining as soon as the project is open")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threads = configure_threads()
    from PySide6.QtCore import QCoreApplication, Qt, QTimer
    from PySide6.QtGui import QGuiApplication, QIcon
    from PySide6.QtWidgets import QApplication

    from app.settings import APP, ORG
    from app.window import MainWindow
    from engine.refine.config import PRESETS_DIR

    share_gl_contexts()
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    QCoreApplication.setOrganizationName(ORG)
    QCoreApplication.setApplicationName(APP)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    icon = PRESETS_DIR.parent / "icons" / "avatar-studio.png"
    if icon.exists():
        app.setWindowIcon(QIcon(str(icon)))
    w = MainWindow()
    w.show()
    logging.getLogger(__name__).info("torch uses %d thread(s); one core is left to the window", threads)
    if args.demo:
        QTimer.singleShot(0, lambda: w.preprocess.open_demo(autostart=args.start))
    elif args.path:
        QTimer.singleShot(0, lambda: w.open_path(args.path) and args.start and w.refine.start())
    code = app.exec()
    # Delete the window while Qt still runs: left to interpreter shutdown, the order in which Python and
    # Qt objects go can crash at exit.
    import shiboken6

    shiboken6.delete(w)
    shiboken6.delete(app)
    import gc

    gc.collect()
    return code


if __name__ == "__main__":
    sys.exit(main())
