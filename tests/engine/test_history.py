"""A fit's history (engine/refine/history.py): kept in the project, small, and never a reason to fail."""

from __future__ import annotations

import json
import logging

from engine.refine.history import RunHistory


def _losses(h: RunHistory, steps) -> None:
    for s in steps:
        h.add_losses(s, {"total": 1.0 / s, "rgb": 0.5 / s}, rays_per_s=1000.0 + s)


def test_round_trip(tmp_path):
    h = RunHistory()
    _losses(h, range(1, 11))
    h.add_scores(5, {"psnr": 21.25, "m_psnr": 17.5})
    h.add_scores(10, {"psnr": 22.0, "m_psnr": 18.0})
    h.save(tmp_path)
    assert (tmp_path / RunHistory.FILE).exists()
    back = RunHistory.load(tmp_path)
    assert back.losses == h.losses and back.scores == h.scores
    assert back.losses[0] == {"step": 1, "total": 1.0, "rgb": 0.5, "rays_per_s": 1001.0}
    assert [e["step"] for e in back.scores] == [5, 10] and back.scores[0]["m_psnr"] == 17.5
    assert not [p.name for p in tmp_path.iterdir() if p.name != RunHistory.FILE]  # no temp file left
    # A score at a step already scored replaces it.
    back.add_scores(10, {"psnr": 23.0, "m_psnr": 19.0})
    assert [e["psnr"] for e in back.scores] == [21.25, 23.0]


def test_missing_file_is_empty(tmp_path):
    h = RunHistory.load(tmp_path)
    assert h.losses == [] and h.scores == []


def test_unreadable_file_is_empty_with_a_warning(tmp_path, caplog):
    for text in ("{not json", json.dumps([1, 2]), json.dumps({"losses": [{"step": "x"}]})):
        (tmp_path / RunHistory.FILE).write_text(text)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="engine.refine.history"):
            h = RunHistory.load(tmp_path)
        assert h.losses == [] and h.scores == []
        assert any("history" in r.getMessage() for r in caplog.records), text
    # Saving over it works.
    _losses(h, [1, 2])
    h.save(tmp_path)
    assert [e["step"] for e in RunHistory.load(tmp_path).losses] == [1, 2]


def test_truncate_drops_what_a_resumed_checkpoint_redoes(tmp_path):
    h = RunHistory()
    _losses(h, range(1, 101))
    h.add_scores(50, {"psnr": 20.0})
    h.add_scores(100, {"psnr": 21.0})
    h.save(tmp_path)
    resumed = RunHistory.load(tmp_path)
    resumed.truncate(60)
    assert resumed.losses[-1]["step"] == 60 and [e["step"] for e in resumed.scores] == [50]
    _losses(resumed, range(61, 71))
    resumed.save(tmp_path)  # the file's entries after step 60 go too
    back = RunHistory.load(tmp_path)
    assert [e["step"] for e in back.losses] == list(range(1, 71))
    assert [e["step"] for e in back.scores] == [50]
    # Losses of a step at or before the newest start over from there as well.
    _losses(back, [65])
    assert back.losses[-1]["step"] == 65 and len(back.losses) == 65


def test_thinning_keeps_the_file_small_and_the_newest_step(tmp_path):
    h = RunHistory()
    n = 20 * RunHistory.MAX_LOSSES + 7
    _losses(h, range(1, n + 1))
    steps = [e["step"] for e in h.losses]
    assert RunHistory.MAX_LOSSES // 2 <= len(steps) <= RunHistory.MAX_LOSSES + 1
    assert steps[-1] == n, "the newest step is always kept"
    assert all(s % h.stride == 0 for s in steps[:-1]) and h.stride > 1, "evenly spread over the run"
    assert steps == sorted(steps)
    h.save(tmp_path)
    assert (tmp_path / RunHistory.FILE).stat().st_size < 1_000_000
    back = RunHistory.load(tmp_path)
    assert back.stride == h.stride and back.losses == h.losses
    _losses(back, [n + 1])  # the off-grid newest step is replaced by the next
    assert [e["step"] for e in back.losses][-2:] == [steps[-2], n + 1]


def test_two_writers_keep_each_others_entries(tmp_path):
    """The fit loop (losses) and the view thread (held-out scores) each save their own RunHistory."""
    fit = RunHistory()
    _losses(fit, range(1, 11))
    fit.save(tmp_path)
    view = RunHistory.load(tmp_path)
    _losses(fit, range(11, 21))
    fit.save(tmp_path)  # meanwhile, the loop saved newer losses
    view.add_scores(10, {"psnr": 20.0, "m_psnr": 15.0})
    view.save(tmp_path)
    _losses(fit, range(21, 31))
    fit.save(tmp_path)
    back = RunHistory.load(tmp_path)
    assert [e["step"] for e in back.losses] == list(range(1, 31))
    assert [e["step"] for e in back.scores] == [10]
