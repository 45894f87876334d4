"""The Qt bindings keep Python's reference counts straight.

PySide6 6.12.0 dropped a reference to None each time a bound method returned a null object (e.g.
`QObject.parent()`, which pyqtgraph calls all the time) and one to True at every `Signal.emit()`. The
app ran fine until those counts reached zero, then died with "Fatal Python error: none_dealloc" (or
bool_dealloc), typically at exit after a few hundred training steps. pyproject.toml pins a release
without the bug; this test fails if an upgrade brings it back (only lost references are checked: a lost
one is fatal, an extra one merely leaks)."""

from __future__ import annotations

import gc
import sys

from PySide6.QtCore import QObject, QThread, Signal


class _Emitter(QObject):
    sig = Signal(object)


def _counts() -> tuple[int, int, int]:
    gc.collect()
    return sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False)


def test_null_object_returns_and_emits_keep_refcounts(qapp):
    n = 200
    o = QObject()
    before = _counts()
    for _ in range(n):
        assert o.parent() is None
    after = _counts()
    assert after[0] > before[0] - n // 4, f"None lost {before[0] - after[0]} references in {n} calls"

    e = _Emitter()
    got = []
    e.sig.connect(got.append)
    before = _counts()
    for i in range(n):
        e.sig.emit(None if i % 2 else i)
    after = _counts()
    assert len(got) == n
    del got
    assert all(a > b - n // 4 for a, b in zip(after[1:], before[1:])), f"bools: {before[1:]} → {after[1:]}"

    # Emitted from a worker thread (queued to this one), as the job runners do.
    class Worker(QThread):
        def run(self) -> None:
            for _ in range(n):
                e.sig.emit(None)

    seen = []
    e.sig.connect(seen.append)
    before = _counts()
    w = Worker()
    w.start()
    assert w.wait(10_000)
    qapp.processEvents()
    assert len(seen) == n
    seen.clear()
    after = _counts()
    assert all(a > b - n // 4 for a, b in zip(after, before)), f"None, True, False: {before} → {after}"
