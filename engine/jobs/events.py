"""Job events and the cancel token.

A job is a generator function `job(config, ..., cancel: CancelToken) -> Iterator[Event]`. It
checks the token between steps and raises `Cancelled` (after leaving saved work intact). The
CLI drives it with a progress bar, the GUI from a QThread; both see the same events.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass


class Cancelled(Exception):
    """Raised inside a job when its cancel token is set."""


class CancelToken:
    """Thread-safe cancel flag shared by a job and whoever drives it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raises `Cancelled` if cancellation was requested."""
        if self._event.is_set():
            raise Cancelled()


@dataclass(frozen=True)
class Event:
    """Base class of all job events."""


@dataclass(frozen=True)
class Progress(Event):
    """`done` of `total` units of the named stage are finished."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class Log(Event):
    """A human-readable message."""

    message: str
    level: str = "info"


@dataclass(frozen=True)
class Done(Event):
    """The job finished; `result` is its outcome (e.g. an output path or a metrics dict)."""

    result: object = None


def run_job(events: Iterator[Event]) -> object:
    """Drains a job without any UI; returns the `Done` result."""
    result = None
    for ev in events:
        if isinstance(ev, Done):
            result = ev.result
    return result


def run_stage(events: Generator[Event, None, object]) -> object:
    """Drains a job stage that returns its outcome (`yield from`-style, e.g. `bake_session`); returns it."""
    try:
        while True:
            next(events)
    except StopIteration as stop:
        return stop.value


@dataclass(frozen=True)
class Losses(Event):
    """Loss terms after an optimisation step (plain floats), plus throughput."""

    step: int
    values: dict
    rays_per_s: float = 0.0


@dataclass(frozen=True)
class Preview(Event):
    """Renders of one frame (CPU float32 arrays, [H, W, 3] / [H, W])."""

    step: int
    frame: int
    image: object
    rgb: object
    normals: object
    opacity: object


@dataclass(frozen=True)
class MeshReady(Event):
    """A canonical mesh of the current avatar (numpy arrays)."""

    step: int
    vertices: object
    faces: object
    colors: object
