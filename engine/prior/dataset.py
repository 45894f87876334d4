"""Synthetic training sets for a prior: scenes the engine generates, varied in body shape, garment,
motion, colours, patterns and background (each scene's seed)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.jobs.events import CancelToken, Done, Event, Progress
from engine.project import check_output_dir
from engine.synth.garments import GARMENTS
from engine.synth.motion import MOTIONS
from engine.synth.scene import SynthConfig, synth_job


@dataclass(frozen=True)
class SynthSetConfig:
    """Which synthetic scenes a training set holds."""

    scenes: int = 6
    """Number of scenes (videos)."""
    frames: int = 30
    """Frames per scene."""
    size: int = 256
    """Long side of the images in pixels."""
    first_seed: int = 100
    """Seed of the first scene; scene k uses first_seed + k (keep benchmark scenes' seeds out of this range)."""

    def validate(self) -> None:
        if not 1 <= self.scenes <= 1000:
            raise UserError(f"--scenes must be between 1 and 1000 (got {self.scenes}).")


def scene_config(cfg: SynthSetConfig, k: int) -> SynthConfig:
    """Scene k: garments cycle shirt, dress, none; motions alternate turn and walk (so every garment is
    seen in both); shape, colours and background come from the seed."""
    garments = ("shirt", "dress", "none")
    assert set(garments) == set(GARMENTS)
    return SynthConfig(frames=cfg.frames, size=cfg.size, motion=MOTIONS[(k // len(garments)) % len(MOTIONS)],
                       garment=garments[k % len(garments)], seed=cfg.first_seed + k, pose_noise=0.0)


def synth_set_job(cfg: SynthSetConfig, out_dir: str | Path, overwrite: bool = False,
                  cancel: CancelToken | None = None) -> Iterator[Event]:
    """Writes OUT_DIR/scene_KK/{project, ground_truth, video.mp4} for every scene; returns the project folders."""
    cfg.validate()
    cancel = cancel or CancelToken()
    out = check_output_dir(out_dir, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    projects = []
    for k in range(cfg.scenes):
        yield Progress("synthetic scenes", k, cfg.scenes)
        for ev in synth_job(scene_config(cfg, k), out / f"scene_{k:02d}", overwrite=overwrite, cancel=cancel):
            if not isinstance(ev, (Progress, Done)):
                yield ev
        projects.append(str(out / f"scene_{k:02d}" / "project"))
    yield Progress("synthetic scenes", cfg.scenes, cfg.scenes)
    yield Done({"projects": projects})
