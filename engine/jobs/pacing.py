"""Pacing of occasional work (live previews, live meshes, held-out scoring) beside a long job."""

from __future__ import annotations

import time


class TimeShare:
    """Keeps an occasional task to a share of the wall-clock time.

    After a task that took t seconds, the next one is due only once the rest of the work has had
    t·(1 − share)/share seconds; share 1 means no limit. Use it as a context manager around the task:
    `with gate.timed(tag): ...`, and ask `ready()` (or `wait_s()`) before starting the next one.
    """

    def __init__(self, share: float) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1] (got {share})")
        self.factor = (1 - share) / share
        self.due = 0.0  # time.monotonic() before which the next task waits
        self.tag: object = None  # what the last task was about (a training step, a checkpoint)

    def ready(self) -> bool:
        return self.wait_s() <= 0

    def wait_s(self) -> float:
        """Seconds until the next task is due (≤ 0: now)."""
        return self.due - time.monotonic()

    def timed(self, tag: object = None) -> TimeShare:
        self.tag = tag
        return self

    def __enter__(self) -> TimeShare:
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        end = time.monotonic()
        self.due = end + (end - self._start) * self.factor
