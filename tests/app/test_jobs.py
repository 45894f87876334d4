"""JobRunner: throttled signals with read-only copies, cancel, readable failures, joined threads."""

from __future__ import annotations

import time

import numpy as np
import pytest

from app.jobs import JobRunner
from engine.errors import UserError
from engine.jobs.events import Done, Losses, MeshReady, Preview, Progress
from tests.app.conftest import wait_until


def _flood(cancel, n=3000):
    img = np.zeros((8, 8, 3), np.float32)
    for i in range(n):
        cancel.check()
        yield Losses(i + 1, {"total": 1.0 / (i + 1)})
        yield Progress("refine", i + 1, n)
        yield Preview(i + 1, 0, img, img, img, img[..., 0])
        yield MeshReady(i + 1, np.zeros((3, 3), np.float32), np.array([[0, 1, 2]]), None)
        img[:] = i  # the job reuses its buffer: what was sent must not change
        time.sleep(0.0005)
    yield Done("ok")


def test_runner_throttles_and_copies(qapp):
    got = {"losses": [], "preview": [], "mesh": [], "progress": []}
    r = JobRunner("flood", _flood)
    for k in got:
        getattr(r, k).connect(lambda ev, k=k: got[k].append(ev))
    results = []
    r.succeeded.connect(results.append)
    t0 = time.monotonic()
    r.start()
    wait_until(qapp, lambda: r.isFinished() and results, 60, "the flood job")
    qapp.processEvents()
    dt = time.monotonic() - t0
    assert results == ["ok"]
    assert sum(len(b) for b in got["losses"]) == 3000, "no loss point is dropped, only batched"
    assert len(got["losses"]) <= 30 * dt + 2 and len(got["preview"]) <= 30 * dt + 2
    assert len(got["mesh"]) <= dt + 2
    assert got["preview"][-1].step == 3000 and got["mesh"][-1].step == 3000, "the last one always arrives"
    first = got["preview"][0]
    assert not first.rgb.flags.writeable and float(first.rgb.max()) < first.step
    assert got["progress"][-1].done == 3000


def test_runner_cancels_and_reports_errors(qapp):
    r = JobRunner("flood", lambda tok: _flood(tok, n=10**6))
    cancelled = []
    r.cancelled.connect(lambda: cancelled.append(True))
    r.start()
    time.sleep(0.2)
    assert r.stop(10_000)
    qapp.processEvents()
    assert cancelled == [True] and r.outcome == "cancelled"

    def boom(tok):
        yield Progress("x", 0, 1)
        raise RuntimeError("kaputt")

    def user(tok):
        raise UserError("bad input, say so")
        yield

    for job, text, is_user in ((boom, "RuntimeError: kaputt", False), (user, "bad input, say so", True)):
        errs = []
        r = JobRunner("bad", job)
        r.failed.connect(lambda m, d, u, errs=errs: errs.append((m, d, u)))
        r.start()
        wait_until(qapp, r.isFinished, 10, "the failing job")
        qapp.processEvents()
        assert errs and errs[0][0] == text and errs[0][2] is is_user
        assert ("Traceback" in errs[0][1]) is (not is_user)


@pytest.mark.parametrize("n", [0])
def test_runner_with_empty_job(qapp, n):
    r = JobRunner("empty", lambda tok: iter(()))
    r.start()
    assert r.wait(5000) and r.outcome == "done"
