"""Reopening a fitted project draws its loss and PSNR curves again, from the history kept in the project."""

from __future__ import annotations

import numpy as np

from engine.refine.history import RunHistory


def test_opening_a_project_draws_its_history(window, tiny_project):
    w = window
    h = RunHistory()
    for s in range(1, 41):
        h.add_losses(s, {"total": 0.1 / s, "rgb": 0.05 / s, "mask": 0.02 / s, "psnr_batch": 15.0 + s / 10},
                     rays_per_s=5000.0)
    h.add_scores(20, {"psnr": 18.0, "m_psnr": 14.0})
    h.add_scores(40, {"psnr": 19.5, "m_psnr": 15.5})
    h.save(tiny_project)

    assert w.open_project(tiny_project)
    lp = w.losses
    assert lp.num_points == 40 and lp.steps[-1] == 40
    assert set(lp.curves) == {"total", "rgb", "mask"}, "rays_per_s and psnr_batch are not loss terms"
    items = lp.plot.listDataItems()
    assert len(items) == 3
    for item in items:
        x, y = item.getData()
        assert x is not None and len(x) == 40 and np.isfinite(y).all(), item.name()
    assert np.allclose(lp.curves["total"].yData, [0.1 / s for s in range(1, 41)], rtol=1e-5)  # getData: log10
    x, y = lp.psnr_curve.getData()
    assert len(x) == 40 and y[-1] == 19.0
    assert lp.held_steps == [20, 40] and lp.held["m_psnr"] == [14.0, 15.5]
    for k, curve in lp.held_curves.items():
        x, y = curve.getData()
        assert list(x) == [20, 40] and list(y) == lp.held[k]
    assert "held-out PSNR 19.5 dB" in lp.summary.text()

    # Another project without a history shows empty plots.
    other = tiny_project.parent / "other"
    import shutil

    shutil.copytree(tiny_project, other)
    (other / RunHistory.FILE).unlink()
    assert w.open_project(other)
    assert lp.num_points == 0 and lp.num_held_out == 0
    assert all(item.getData()[0] is None or len(item.getData()[0]) == 0 for item in lp.plot.listDataItems())
