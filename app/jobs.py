"""Engine jobs in QThreads: events become Qt signals carrying immutable CPU copies, throttled.

A `JobRunner` drives one engine job generator (`fit_job`, `export_job`, ...) in its own thread. The
GUI thread only ever sees read-only numpy arrays, and at most ~30 previews and one mesh per second,
so a fast training loop cannot flood the event queue of a 2-core machine.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
import weakref
from collections.abc import Callable, Iterator

import numpy as np
from PySide6.QtCore import QThread, Signal

from engine.errors import UserError
from engine.jobs.events import Cancelled, CancelToken, Done, Event, Log, Losses, MeshReady, Preview, Progress

log = logging.getLogger(__name__)

PREVIEW_INTERVAL = 1 / 30  # s between preview signals (≤ 30 Hz)
MESH_INTERVAL = 1.0  # s between mesh signals (≤ 1 Hz)
SCALAR_INTERVAL = 1 / 30  # losses and progress are batched to ≤ 30 Hz too

# Every runner ever started and still referenced: tests assert none of them is left running.
LIVE_RUNNERS: weakref.WeakSet[QThread] = weakref.WeakSet()


def frozen(x):
    """A read-only CPU numpy copy of an array or tensor (other values as they are)."""
    if x is None or isinstance(x, (int, float, str, bool)):
        return x
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        a = np.array(x, copy=True)
        a.setflags(write=False)
        return a
    return x


def frozen_event(ev: Event) -> Event:
    """The event with every array replaced by a read-only copy (the job may reuse its buffers)."""
    if isinstance(ev, (Preview, MeshReady)):
        return dataclasses.replace(ev, **{f.name: frozen(getattr(ev, f.name)) for f in dataclasses.fields(ev)})
    if isinstance(ev, Losses):
        return dataclasses.replace(ev, values=dict(ev.values))
    return ev


class JobRunner(QThread):
    """Runs `factory(cancel_token)` (which returns an engine job generator) in a thread.

    Signals are emitted from the worker thread and delivered queued to GUI-thread receivers. Exactly
    one of `succeeded`, `cancelled` or `failed` comes last, then QThread's own `finished`.
    """

    progress = Signal(object)  # Progress (latest of its interval)
    losses = Signal(object)  # list[Losses] since the last signal
    preview = Signal(object)  # Preview
    mesh = Signal(object)  # MeshReady
    message = Signal(object)  # Log
    succeeded = Signal(object)  # the Done result
    cancelled = Signal()
    failed = Signal(str, str, bool)  # message, details (traceback), whether it is a UserError

    def __init__(self, name: str, factory: Callable[[CancelToken], Iterator[Event]], parent=None) -> None:
        super().__init__(parent)
        self.name = name
        self.setObjectName(f"job:{name}")
        self._factory = factory
        self.token = CancelToken()
        self.result: object = None
        self.outcome: str | None = None  # "done" | "cancelled" | "failed" once finished
        LIVE_RUNNERS.add(self)

    def cancel(self) -> None:
        """Asks the job to stop at its next check (it keeps what it saved, e.g. the checkpoint)."""
        self.token.cancel()

    def stop(self, timeout_ms: int = 120_000) -> bool:
        """Cancels and joins the thread; returns whether it ended in time."""
        self.cancel()
        return self.wait(timeout_ms)

    # ---- worker thread ------------------------------------------------------------------------
    def run(self) -> None:
        last: dict[str, float] = {}
        pending: dict[str, object] = {}
        batch: list[Losses] = []

        def flush(kind: str, force: bool = False) -> None:
            now = time.monotonic()
            interval = {"preview": PREVIEW_INTERVAL, "mesh": MESH_INTERVAL}.get(kind, SCALAR_INTERVAL)
            if not force and now - last.get(kind, -1e9) < interval:
                return
            if kind == "losses":
                if batch:
                    self.losses.emit(list(batch))
                    batch.clear()
                    last[kind] = now
                return
            ev = pending.pop(kind, None)
            if ev is not None:
                getattr(self, kind).emit(ev)
                last[kind] = now

        def flush_all(force: bool) -> None:
            for kind in ("progress", "losses", "preview", "mesh"):
                flush(kind, force)

        try:
            for ev in self._factory(self.token):
                if isinstance(ev, Losses):
                    batch.append(frozen_event(ev))
                elif isinstance(ev, Progress):
                    old = pending.get("progress")
                    if old is not None and old.stage != ev.stage:
                        flush("progress", force=True)  # never swallow the end of a stage
                    pending["progress"] = ev
                elif isinstance(ev, Preview):
                    pending["preview"] = frozen_event(ev)
                elif isinstance(ev, MeshReady):
                    pending["mesh"] = frozen_event(ev)
                elif isinstance(ev, Log):
                    self.message.emit(ev)
                elif isinstance(ev, Done):
                    self.result = ev.result
                flush_all(force=False)
            flush_all(force=True)
            self.outcome = "done"
            self.succeeded.emit(self.result)
        except Cancelled:
            flush_all(force=True)
            self.outcome = "cancelled"
            log.info("%s: cancelled", self.name)
            self.cancelled.emit()
        except UserError as e:
            flush_all(force=True)
            self.outcome = "failed"
            log.warning("%s: %s", self.name, e)
            self.failed.emit(str(e), "", True)
        except Exception as e:  # noqa: BLE001 - a worker crash must reach the user, never vanish
            flush_all(force=True)
            self.outcome = "failed"
            log.exception("%s failed", self.name)
            msg = f"{e.__class__.__name__}: {e}"
            if isinstance(e, MemoryError):
                msg = "out of memory; lower the rays or samples per ray (the last checkpoint is kept)."
            self.failed.emit(msg, traceback.format_exc(), False)


def running_runners() -> list[QThread]:
    """Job and view threads still running (a deleted one has finished)."""
    import shiboken6

    return [r for r in list(LIVE_RUNNERS) if shiboken6.isValid(r) and r.isRunning()]


def fmt_time(s: float) -> str:
    """Seconds as m:ss, or h:mm:ss from an hour on (ETAs in the status bar)."""
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
