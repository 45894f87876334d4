"""The log panel: Python logging records (from any thread) shown in the window."""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QPlainTextEdit


class _Emitter(QObject):
    record = Signal(str, int)


class QtLogHandler(logging.Handler):
    """Forwards records as a Qt signal (queued to the GUI thread when emitted from a worker)."""

    def __init__(self) -> None:
        super().__init__()
        self.emitter = _Emitter()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.emitter.record.emit(self.format(record), record.levelno)
        except RuntimeError:
            pass  # the panel is gone (window closed while a late thread still logs)


class LogPanel(QPlainTextEdit):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(5000)
        self.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.handler = QtLogHandler()
        self.handler.setLevel(logging.INFO)
        self.handler.emitter.record.connect(self.append_record)

    def append_record(self, text: str, level: int) -> None:
        if level >= logging.WARNING:
            color = "#c00" if level >= logging.ERROR else "#a60"
            self.appendHtml(f'<span style="color:{color}">{_escape(text)}</span>')
        else:
            self.appendPlainText(text)

    def attach(self, logger: logging.Logger | None = None) -> None:
        (logger or logging.getLogger()).addHandler(self.handler)

    def detach(self, logger: logging.Logger | None = None) -> None:
        (logger or logging.getLogger()).removeHandler(self.handler)


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
