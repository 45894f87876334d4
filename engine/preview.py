"""`render`: a video of the rigged, textured avatar for a user without the app: the captured motion (the
glTF's animation, posed by the glTF skinning equation from the rig's own data) seen from the video's camera
direction, or a turntable of its bind pose (the app's `Save turntable video` draws with the same
engine/render/turntable.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from engine.errors import UserError
from engine.export import RigConfig, rig_session
from engine.io.atomic import atomic_path
from engine.io.video import Mp4Writer
from engine.jobs.events import CancelToken, Done, Event, Progress
from engine.project import check_output_file
from engine.refine.session import open_session
from engine.render.turntable import framing_camera, picture, turntable_frames
from engine.settings import check_choices

log = logging.getLogger(__name__)

PreviewMode = Literal["motion", "turntable"]
TURNTABLE_FPS = 24.0


@dataclass(frozen=True)
class PreviewConfig:
    """What video `render` makes."""

    mode: PreviewMode = "motion"
    """motion (the avatar through the video's motion) or turntable (one turn around its bind pose)."""
    size: int = 512
    """Width and height of the video in pixels (even)."""
    fps: float | None = None
    """Frames per second (None: the project's for the motion, 24 for a turntable)."""
    turn_frames: int = 72
    """Pictures in one turn of a turntable."""
    rig: RigConfig = field(default_factory=RigConfig)
    """The rigged avatar drawn (mesh, texture, bind pose)."""

    def validate(self) -> None:
        if not (64 <= self.size <= 4096 and self.size % 2 == 0):
            raise UserError(f"--size must be an even number between 64 and 4096 (got {self.size}).")
        if not 2 <= self.turn_frames <= 3600:
            raise UserError(f"--turn-frames must be between 2 and 3600 (got {self.turn_frames}).")
        check_choices(self)
        self.rig.validate()


def preview_job(project_dir: str | Path, out: str | Path, cfg: PreviewConfig = PreviewConfig(), overwrite: bool = False,
                device: str = "cpu", body_model_dir: str | None = None,
                cancel: CancelToken | None = None) -> Iterator[Event]:
    """Writes the preview video `out` (.mp4)."""
    cancel = cancel or CancelToken()
    out = check_output_file(out, ".mp4", "the video", overwrite)
    cfg.validate()
    session = open_session(project_dir, None, device, body_model_dir, require_checkpoint=True)
    motion = cfg.mode == "motion"
    rig = yield from rig_session(session, RigConfig(**{**cfg.rig.__dict__, "animation": motion}), cancel)
    look = {"colors": rig.colors, "uvs": rig.uvs, "texture": rig.texture}
    if motion:
        n = rig.num_frames
        fps = cfg.fps or rig.fps
        posed = [rig.posed(k) for k in range(n)]
        cam0 = session.cameras[0]
        # The video's viewing direction and image up, framing the whole clip so the camera stays still.
        camera = framing_camera(np.concatenate(posed), cfg.size, cam0.R[2], -cam0.R[1])
        pictures = (picture(v, rig.faces, camera, **look) for v in posed)
    else:
        n = cfg.turn_frames
        fps = cfg.fps or TURNTABLE_FPS
        pictures = turntable_frames(rig.vertices, rig.faces, cfg.size, n, **look)
    with atomic_path(out) as tmp, Mp4Writer(tmp, fps) as writer:
        for k, image in enumerate(pictures):
            cancel.check()
            writer.write(image)
            yield Progress("render", k + 1, n)
    log.info("%s video: %d frames at %g fps, %s", cfg.mode, n, fps, out)
    yield Done({"files": [str(out)], "frames": n, "fps": fps, "mode": cfg.mode,
                "textured": rig.texture is not None})
