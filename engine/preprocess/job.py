"""`preprocess`: a video of one person → a project folder the `fit` command accepts unchanged.

Stages (each a `Progress` stage, so the CLI shows one bar per stage and the GUI an ETA):

    decode+person   frames chosen and decoded (video.py), person mask + keypoints per frame (person.py)
    body fit        shared shape, per-frame pose and placement, static camera (bodyfit.py)
    write project   frames/, masks/, cameras.json, body.npz, keypoints.npy, project.json, reports
    overlay         the fitted body over every frame: overlay.mp4 and overlay_sheet.png

Everything that can be wrong with the input or the target (output folder taken or not writable,
missing SMPL files, not a video) is checked before the long work starts. The project is built in a
hidden staging folder beside the target and swapped in only when complete, so a failure or a
cancel leaves whatever was there untouched.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.body import BodyConfig, BodyModelName, create_body_model
from engine.errors import UserError
from engine.io import atomic
from engine.io.video import Mp4Writer
from engine.jobs.events import CancelToken, Done, Event, Log, Progress
from engine.preprocess.bodyfit import BodyFitConfig, BodyFitResult, fit_body_job, real_video_camera
from engine.preprocess.person import PersonConfig, PersonTrack, describe_frames, detect_person
from engine.preprocess.video import DecodeConfig, FrameReader
from engine.project import Project, check_output_dir
from engine.project_body import write_project_body
from engine.settings import Device, check_choices

log = logging.getLogger(__name__)

STAGES = ("decode+person", "body fit", "write project", "overlay")
REPORT_FILE = "preprocess_report.json"
CONFIG_FILE = "preprocess_config.json"
OVERLAY_VIDEO = "overlay.mp4"
OVERLAY_SHEET = "overlay_sheet.png"

# Seconds per step of the body fit's own stages, relative (measured on 2 CPU cores): the iterations
# cost in proportion to the frame count, the evaluation per frame. They weight its steps into the one
# "body fit" bar (in thousandths), so that the bar advances evenly and its ETA holds.
_BODYFIT_COST_PER_FRAME = {"initialise": 0.25, "fit poses": 1.0, "refine": 1.65}
_BODYFIT_EVAL_COST = 15.0
_BAR = 1000


@dataclass(frozen=True)
class PreprocessConfig:
    """How a video becomes a project (the CLI's `preprocess` options, plus the stages' own settings)."""

    start: float = 0.0
    """First second of the video to use."""
    end: float | None = None
    """Second where the used part ends (None: the end of the video)."""
    max_frames: int = 150
    """Most frames to take, spread evenly over the used part."""
    size: int = 540
    """Long side of the working resolution in pixels (never upscaled)."""
    sharpness_window: int = 2
    """A chosen frame may give way to a sharper one up to this many frames away (0: off)."""
    focal: float | None = None
    """Focal length in pixels of the full-resolution video (None: max(H, W), as Vid2Avatar assumes)."""
    body: BodyModelName = "anny"
    """Body model: anny (built in), smpl or smplx (need body_model_dir)."""
    body_model_dir: str | None = None
    """Folder with the SMPL / SMPL-X model files."""
    device: Device = "cpu"
    """Torch device of the body fit: cpu or cuda."""
    overwrite: bool = False
    """Replace an existing project at the target (only once the new one is complete)."""
    overlay: bool = True
    """Write overlay.mp4 and overlay_sheet.png (the fitted body drawn over the frames)."""
    sheet_frames: int = 8
    """Frames on the overlay contact sheet (evenly spread, the last two the worst fitted)."""
    poor_iou: float = 0.5
    """Frames whose body silhouette overlaps the mask less than this (IoU) are named in a warning."""
    person: PersonConfig = field(default_factory=PersonConfig)
    """Person detection settings (masks, keypoints, gaps)."""
    bodyfit: BodyFitConfig = field(default_factory=BodyFitConfig)
    """Body-fit settings (its `device` is replaced by `device` above)."""

    def decode_config(self) -> DecodeConfig:
        return DecodeConfig(start=self.start, end=self.end, max_frames=self.max_frames, size=self.size,
                            sharpness_window=self.sharpness_window)

    def bodyfit_config(self) -> BodyFitConfig:
        return dataclasses.replace(self.bodyfit, device=self.device)

    def validate(self) -> None:
        """Raises UserError naming the first bad value."""
        self.decode_config().validate()
        check_choices(self)
        if self.focal is not None and not (math.isfinite(self.focal) and self.focal > 0):
            raise UserError(f"--focal must be a positive number of pixels (got {self.focal}).")
        if not 1 <= self.sheet_frames <= 64:
            raise UserError(f"sheet frames must be between 1 and 64 (got {self.sheet_frames}).")
        if not 0 <= self.poor_iou <= 1:
            raise UserError(f"poor IoU threshold must be in [0, 1] (got {self.poor_iou}).")
        self.person.validate()
        self.bodyfit_config().validate()  # also checks the device (cuda requested but absent)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _substage(gen: Generator[Event, None, object], stage: str) -> Generator[Event, None, object]:
    """Passes a sub-job's events on with its Progress renamed to `stage`; returns its return value."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        yield Progress(stage, ev.done, ev.total) if isinstance(ev, Progress) else ev


def _body_fit(body, track: PersonTrack, camera, cfg: BodyFitConfig, cancel: CancelToken,
              sub_seconds: dict[str, float]) -> Generator[Event, None, BodyFitResult]:
    """The body-fit sub-job as one "body fit" stage (its own stages weighted into one bar of 1000).

    Seconds spent in each of the body fit's own stages are added to `sub_seconds`.
    """
    n = track.num_frames
    n_pose = max(1, cfg.iters // 3)
    steps = {"initialise": cfg.init_iters, "fit poses": n_pose, "refine": cfg.iters - n_pose, "evaluate": n}
    weight = {**{k: c * n for k, c in _BODYFIT_COST_PER_FRAME.items()}, "evaluate": _BODYFIT_EVAL_COST}
    offsets, acc = {}, 0.0
    for name, count in steps.items():
        offsets[name] = acc
        acc += weight[name] * count
    weight = {k: w * _BAR / acc for k, w in weight.items()}
    offsets = {k: o * _BAR / acc for k, o in offsets.items()}
    total = _BAR
    result, shown, current, t_sub = None, 0, None, time.perf_counter()
    yield Progress("body fit", 0, total)
    for ev in fit_body_job(body, track.keypoints, track.masks, camera, cfg, cancel):
        if isinstance(ev, Progress):
            if ev.stage != current:
                now = time.perf_counter()
                if current is not None:
                    sub_seconds[current] = round(now - t_sub, 2)
                current, t_sub = ev.stage, now
            if ev.stage in offsets:
                done = min(total, round(offsets[ev.stage] + weight[ev.stage] * ev.done))
                if done != shown:  # one event per visible step, not per iteration
                    shown = done
                    yield Progress("body fit", done, total)
        elif isinstance(ev, Done):
            result = ev.result
        else:
            yield ev
    if current is not None:
        sub_seconds[current] = round(time.perf_counter() - t_sub, 2)
    if not isinstance(result, BodyFitResult):
        raise RuntimeError("the body fit ended without a result")
    if shown != total:
        yield Progress("body fit", total, total)
    return result


def _source_info(reader: FrameReader, track: PersonTrack, focal_src: float, focal_work: float) -> dict:
    info = reader.info
    return {
        "type": "video" if info.kind == "video" else "images",
        "path": str(info.path.resolve()),
        "codec": info.codec,
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "duration": info.duration,
        "rotation": info.rotation,
        "mirror": info.mirror,
        "focal": focal_src,
        "focal_working": focal_work,
        "frame_indices": [int(i) for i in track.indices],
        "frame_times": [round(float(t), 6) for t in track.times],
        "interpolated": [int(i) for i in track.interpolated],
        "dropped": [int(i) for i in track.dropped],
        "warnings": list(track.warnings),
    }


def _quality_report(track: PersonTrack, fit: BodyFitResult, seconds: dict, warnings: list[str]) -> dict:
    interp = set(track.interpolated)
    frames = [{"frame": i, "source_frame": int(track.indices[i]), "time": round(float(track.times[i]), 6),
               "keypoint_error_px": _num(fit.keypoint_error_px[i]), "mask_iou": _num(fit.mask_iou[i]),
               "interpolated": i in interp} for i in range(track.num_frames)]
    return {
        "summary": {
            "frames": track.num_frames,
            "keypoint_error_px_mean": _num(np.nanmean(fit.keypoint_error_px)),
            "keypoint_error_px_median": _num(np.nanmedian(fit.keypoint_error_px)),
            "mask_iou_mean": _num(np.nanmean(fit.mask_iou)),
            "mask_iou_min": _num(np.nanmin(fit.mask_iou)),
        },
        "seconds": seconds,
        "warnings": warnings,
        "frames": frames,
    }


def _num(x) -> float | None:
    """JSON-safe float (NaN → None)."""
    x = float(x)
    return round(x, 4) if math.isfinite(x) else None


def _label(i: int, track: PersonTrack, fit: BodyFitResult) -> str:
    kp, iou = fit.keypoint_error_px[i], fit.mask_iou[i]
    text = f"#{i} src {int(track.indices[i])}"
    if math.isfinite(kp):
        text += f"  kp {kp:.1f}px"
    if math.isfinite(iou):
        text += f"  IoU {iou:.2f}"
    return text + ("  (filled)" if i in track.interpolated else "")


def preprocess_job(video: str | Path, project_dir: str | Path, config: PreprocessConfig = PreprocessConfig(),
                   cancel: CancelToken | None = None) -> Iterator[Event]:
    """Turns a video (or a folder of images) of one person into a project folder.

    Args:
        video: the clip (mp4/mov/avi/mkv/webm...) or a folder of images.
        project_dir: the project folder to create (refused if it exists, unless `config.overwrite`).
        config: settings; see `PreprocessConfig`.
        cancel: checked between frames and iterations; raises `Cancelled`, leaving no partial project.

    Yields:
        Progress for the stages in `STAGES`, Log events (warnings about the video, the person and the
        fit), and finally Done(dict) with: project (path), frames, keypoint_error_px and mask_iou
        (means over frames), seconds (per stage and total), body_fit_seconds (per body-fit step) and
        warnings.

    Raises:
        UserError: bad settings, input or output folder, missing SMPL files, no person in the video.
    """
    config.validate()
    cancel = cancel or CancelToken()
    t_all = time.perf_counter()
    seconds: dict[str, float] = {}

    # ---- everything that can refuse, before the long work -----------------------------------
    t0 = time.perf_counter()
    out = check_output_dir(project_dir, config.overwrite)
    src = Path(video).expanduser().resolve()
    if src == out or out in src.parents:
        raise UserError(f"the video {src} is inside the output folder {out}; choose another output folder.")
    body = create_body_model(BodyConfig(config.body, config.body_model_dir))  # missing SMPL files: UserError
    reader = FrameReader(src, config.decode_config())  # not a video, audio only, empty range: UserError
    info = reader.info
    w, h = reader.size
    focal_src = float(config.focal if config.focal is not None else max(info.width, info.height))
    focal = focal_src * max(w, h) / max(info.width, info.height)  # same field of view at working size
    camera = real_video_camera(w, h, focal)
    seconds["setup"] = round(time.perf_counter() - t0, 2)
    yield Log(f"{info.path.name}: {info.width}x{info.height}, {info.fps:.2f} fps, {info.duration:.1f} s, "
              f"{info.codec}{f', rotated {info.rotation}°' if info.rotation else ''} → {reader.total} frames "
              f"at {w}x{h}, focal {focal:.0f} px, body model {body.name}")

    # ---- frames and the person ---------------------------------------------------------------
    t0 = time.perf_counter()
    track: PersonTrack = yield from _substage(detect_person(reader, config.person, cancel), STAGES[0])
    seconds[STAGES[0]] = round(time.perf_counter() - t0, 2)
    n = track.num_frames
    warnings = list(track.warnings)

    # ---- body ---------------------------------------------------------------------------------
    t0 = time.perf_counter()
    fit_seconds: dict[str, float] = {}
    fit: BodyFitResult = yield from _body_fit(body, track, camera, config.bodyfit_config(), cancel, fit_seconds)
    seconds[STAGES[1]] = round(time.perf_counter() - t0, 2)
    log.debug("body fit stages (s): %s", fit_seconds)
    poor = np.flatnonzero(fit.mask_iou < config.poor_iou)
    if len(poor):
        msg = (f"the body fits the mask poorly (IoU < {config.poor_iou:g}) in {len(poor)} of {n} frames (source frames "
               f"{describe_frames(track.indices, poor)}); check {OVERLAY_SHEET} / {OVERLAY_VIDEO}.")
        warnings.append(msg)
        yield Log(msg, "warning")  # (the CLI logs Log events; logging it here too would print it twice)

    # ---- the project, built beside the target and swapped in when complete ---------------------
    span = float(track.times[-1] - track.times[0]) if n > 1 else 0.0
    fps = (n - 1) / span if span > 0 else info.fps  # rate of the chosen frames
    try:
        with atomic.staged_folder(out, config.overwrite) as stage:
            t0 = time.perf_counter()
            proj = Project.create(stage, body_model=body.name, num_frames=n, width=w, height=h, fps=round(fps, 4),
                                  source=_source_info(reader, track, focal_src, focal))
            yield Progress(STAGES[2], 0, n)
            for i in range(n):
                cancel.check()
                proj.write_frame(i, track.frames[i])
                proj.write_mask(i, track.masks[i])
                yield Progress(STAGES[2], i + 1, n)
            proj.write_cameras([camera] * n)
            proj.write_body(fit.params)
            write_project_body(proj, body, fit.params.shape)
            atomic.save_npy(stage / "keypoints.npy", track.keypoints.astype(np.float32))
            atomic.write_json(stage / CONFIG_FILE, config.to_dict())
            seconds[STAGES[2]] = round(time.perf_counter() - t0, 2)

            if config.overlay:
                t0 = time.perf_counter()
                yield from _write_overlay(stage, body, track, fit, camera, fps, config, cancel)
                seconds[STAGES[3]] = round(time.perf_counter() - t0, 2)
            seconds["total"] = round(time.perf_counter() - t_all, 2)
            report = _quality_report(track, fit, seconds, warnings)
            report["body_fit_seconds"] = fit_seconds
            atomic.write_json(stage / REPORT_FILE, report)
            check_output_dir(out, config.overwrite)  # nobody put anything there meanwhile
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UserError(f"the disk is full: no space left to write {out}; nothing was changed.") from e
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"cannot write {out}: {e.strerror}; nothing was changed.") from e
        raise

    result = {
        "project": str(out),
        "frames": n,
        "keypoint_error_px": _num(np.nanmean(fit.keypoint_error_px)),
        "mask_iou": _num(np.nanmean(fit.mask_iou)),
        "seconds": seconds,
        "body_fit_seconds": fit_seconds,
        "warnings": warnings,
    }
    yield Log(f"project written to {out}: {n} frames, keypoint error {result['keypoint_error_px']} px, "
              f"mask IoU {result['mask_iou']}, {seconds['total']:.0f} s")
    yield Done(result)


def _write_overlay(stage: Path, body, track: PersonTrack, fit: BodyFitResult, camera, fps: float,
                   config: PreprocessConfig, cancel: CancelToken) -> Iterator[Event]:
    """overlay.mp4 (every frame) and overlay_sheet.png (a few frames, the worst fitted among them)."""
    # Imported here: rendering the overlay loads open3d (1.5 s), which refusals of bad input should not wait for.
    from engine.preprocess.overlay import OverlayRenderer, contact_sheet, sheet_frames

    n = track.num_frames
    renderer = OverlayRenderer(body.faces, camera)
    quality = fit.mask_iou if np.isfinite(fit.mask_iou).any() else -fit.keypoint_error_px
    picks = set(sheet_frames(n, quality, config.sheet_frames))
    tiles: dict[int, np.ndarray] = {}
    yield Progress(STAGES[3], 0, n)
    with Mp4Writer(stage / OVERLAY_VIDEO, min(max(fps, 1.0), 60.0)) as writer, torch.no_grad():
        _, posed = body.posed(fit.params)  # [N, V, 3]
        for i in range(n):
            cancel.check()
            verts = posed[i].numpy()
            img = renderer.draw(track.frames[i], verts, track.masks[i], _label(i, track, fit))
            writer.write(img)
            if i in picks:
                tiles[i] = img
            yield Progress(STAGES[3], i + 1, n)
    order = sheet_frames(n, quality, config.sheet_frames)
    atomic.write_image(stage / OVERLAY_SHEET, contact_sheet([tiles[i] for i in order]))
