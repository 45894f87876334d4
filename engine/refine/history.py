"""A fit's curves kept in the project (`history.json`): the loss terms of its steps and its held-out scores.

The fit loop adds every step's losses and saves them with its checkpoints; whoever scores the held-out
frames while it trains (the app's view thread) adds the scores. Reopening the project draws both again.

The file stays small however long the fit: losses are kept on a grid of every `stride`-th step (plus
always the newest step), and whenever more than `MAX_LOSSES` are kept the stride doubles and every other
one goes, so between half of `MAX_LOSSES` and `MAX_LOSSES` points remain, evenly spread over the run.
Values are kept to 6 significant digits. Held-out scores come every so many steps and are all kept.

Two writers in one process (the fit thread and the view thread) each hold their own `RunHistory`, so
`save` merges what is on disk first: scores at steps it lacks, and losses newer than its own (a
truncation this object made is applied to the file's entries too, once).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path

from engine.io import atomic

log = logging.getLogger(__name__)

VERSION = 1
_SAVE_LOCK = threading.Lock()  # one read-merge-write at a time within this process


def _num(v: float) -> float:
    v = float(v)
    return float(f"{v:.6g}") if math.isfinite(v) else v


def _entries(raw) -> list[dict]:
    """Validated entries (each a dict with an int step and float values), sorted by step."""
    if not isinstance(raw, list):
        raise ValueError("not a list")
    out = []
    for e in raw:
        if not isinstance(e, dict) or not isinstance(e.get("step"), int):
            raise ValueError(f"bad entry {e!r:.80}")
        out.append({"step": e["step"], **{k: float(v) for k, v in e.items() if k != "step"}})
    return sorted(out, key=lambda e: e["step"])


class RunHistory:
    """Losses and held-out scores of a project's fit, by step; `load` and `save` the project's file."""

    FILE = "history.json"  # in the project folder
    MAX_LOSSES = 2000  # loss entries kept at most (plus the newest step)

    def __init__(self) -> None:
        self.losses: list[dict] = []  # each {"step": int, **values, optionally "rays_per_s"}
        self.scores: list[dict] = []  # each {"step": int, **scores}
        self.stride = 1  # losses are kept at steps that are multiples of it (and the newest step)
        self._cut: int | None = None  # a truncation not yet applied to the file

    # ---- file ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, project_root: str | Path) -> RunHistory:
        """The project's history; empty when there is none or it cannot be read (with a warning)."""
        h = cls()
        path = Path(project_root) / cls.FILE
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            losses, scores = _entries(data.get("losses", [])), _entries(data.get("scores", []))
            stride = int(data.get("loss_stride", 1))
            if stride < 1:
                raise ValueError(f"loss_stride {stride}")
        except FileNotFoundError:
            return h
        except (OSError, ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
            log.warning("cannot read the fit's history %s (%s); starting an empty one", path, e)
            return h
        h.losses, h.scores, h.stride = losses, scores, stride
        return h

    def save(self, project_root: str | Path) -> None:
        """Writes the file atomically, after merging in what another writer saved meanwhile."""
        root = Path(project_root)
        with _SAVE_LOCK:
            disk = RunHistory.load(root) if (root / self.FILE).exists() else RunHistory()
            if self._cut is not None:
                disk.truncate(self._cut)
                self._cut = None
            mine = {e["step"] for e in self.scores}
            self.scores = sorted(self.scores + [e for e in disk.scores if e["step"] not in mine],
                                 key=lambda e: e["step"])
            last = self.losses[-1]["step"] if self.losses else -1
            newer = [e for e in disk.losses if e["step"] > last]
            if newer:
                self.stride = max(self.stride, disk.stride)
                self.losses = self.losses + newer
                self._thin()
            atomic.write_json(root / self.FILE, {"version": VERSION, "loss_stride": self.stride,
                                                 "losses": self.losses, "scores": self.scores})

    # ---- adding -------------------------------------------------------------------------------
    def add_losses(self, step: int, values: dict[str, float], rays_per_s: float | None = None) -> None:
        """The loss terms of one step (a step at or before the newest one starts over from there)."""
        step = int(step)
        if self.losses and step <= self.losses[-1]["step"]:
            self.truncate(step - 1)
        if self.losses and self.losses[-1]["step"] % self.stride:
            self.losses.pop()  # the newest entry was off the grid: this one replaces it
        entry = {"step": step, **{k: _num(v) for k, v in values.items()}}
        if rays_per_s is not None:
            entry["rays_per_s"] = _num(rays_per_s)
        self.losses.append(entry)
        if len(self.losses) > self.MAX_LOSSES + 1:
            self._thin()

    def add_scores(self, step: int, scores: dict[str, float]) -> None:
        """Held-out scores (psnr, m_psnr) of the checkpoint of `step`; replaces a point at that step."""
        step = int(step)
        self.scores = sorted([e for e in self.scores if e["step"] != step]
                             + [{"step": step, **{k: _num(v) for k, v in scores.items()}}], key=lambda e: e["step"])

    def truncate(self, step: int) -> None:
        """Drops every entry after `step` (a resumed checkpoint is older than the history)."""
        self.losses = [e for e in self.losses if e["step"] <= step]
        self.scores = [e for e in self.scores if e["step"] <= step]
        self._cut = step if self._cut is None else min(self._cut, step)

    def _thin(self) -> None:
        while True:
            last = self.losses[-1:] if self.losses and self.losses[-1]["step"] % self.stride else []
            self.losses = [e for e in self.losses if e["step"] % self.stride == 0] + last
            if len(self.losses) <= self.MAX_LOSSES + 1:
                return
            self.stride *= 2
