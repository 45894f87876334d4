"""The person in every chosen frame: 23 keypoints and a mask, from mediapipe's pose tracker.

Model: mediapipe's legacy `solutions.pose.Pose` in tracking mode, model_complexity=1 (the only
model inside the wheel: 0 and 2 try to download and fail offline), with its segmentation output.

Keypoint mapping, BlazePose's 33 landmarks → `KEYPOINT_NAMES` (COCO-17, then big toe, small toe
and heel per foot); left/right are the person's own, as in COCO:

    nose ← 0 nose                        eyes ← 2 / 5 (eye centres; inner/outer corners unused)
    ears ← 7 / 8                         shoulders ← 11 / 12, elbows ← 13 / 14, wrists ← 15 / 16
    hips ← 23 / 24                       knees ← 25 / 26, ankles ← 27 / 28
    big toes ← 31 / 32 ("foot index", the tip of the foot: the big/second toe)
    heels ← 29 / 30
    small toes: BlazePose has none; placed at the foot tip with confidence 0 (for drawing only)

Confidence is BlazePose's visibility, set to 0 for points outside the image. Positions are pixels
at working resolution (pixel (0, 0) covers [0, 1)², as in engine.geometry.camera).

Several people: the tracker follows one person. It detects the most prominent one when it starts
or loses track, then follows that person's landmarks; the mask is predicted in a crop around
them, so people elsewhere never enter it (measured: a second person beside the first gets 0 %
of the mask). Extra large mask regions without the tracked person's keypoints (someone
overlapping) are dropped (`masks.clean_mask`). To warn about others, on `others_check_frames`
frames spread over the clip the tracked person is painted out and the detector runs again.

Frames without a person: runs of at most `max_gap` chosen frames are filled from their neighbours
(keypoints interpolated in time, confidence scaled down; soft masks blended), longer runs are
dropped from the track; if more than `max_missing_fraction` of the frames have no person, it stops
with a `UserError` naming them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from engine.body.base import KEYPOINT_NAMES
from engine.errors import UserError
from engine.jobs.events import CancelToken, Event, Log, Progress
from engine.preprocess.masks import clean_mask
from engine.preprocess.video import Frame, FrameReader

log = logging.getLogger(__name__)

# BlazePose landmark per KEYPOINT_NAMES entry; the small toes (None) borrow the foot tip at confidence 0.
MEDIAPIPE_INDEX = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28, 31, 32, None, None, 29, 30)
_SMALL_TOE_STANDIN = {19: 31, 20: 32}
assert len(MEDIAPIPE_INDEX) == len(KEYPOINT_NAMES)


@dataclass(frozen=True)
class PersonConfig:
    """How the person is found in each frame and how gaps are handled."""

    mask_threshold: float = 0.5
    """Soft-mask value above which a pixel is the person."""
    hole_fraction: float = 0.02
    """Holes in the mask smaller than this fraction of the person's area are filled."""
    other_fraction: float = 0.25
    """Dropped mask regions at least this fraction of the person's area count as another person (warned)."""
    min_keypoints: int = 4
    """A detection with fewer keypoints of confidence ≥ 0.5 counts as no person."""
    min_detection_confidence: float = 0.5
    """mediapipe's person-detector threshold (used when starting or after losing track)."""
    min_tracking_confidence: float = 0.5
    """mediapipe's threshold below which tracking is lost and the detector runs again."""
    others_check_frames: int = 10
    """Frames (spread over the clip) on which to look for other people, to warn about them (0: never)."""
    smooth: bool = True
    """Temporal smoothing of landmarks and masks (mediapipe's filters, fed the real frame times)."""
    max_gap: int = 5
    """Runs of at most this many frames without a person are filled from neighbours; longer runs are dropped."""
    gap_confidence: float = 0.3
    """Keypoint confidences of filled frames are scaled by this."""
    max_missing_fraction: float = 0.5
    """If more than this fraction of frames has no person, stop with an error."""

    def validate(self) -> None:
        if not 0 < self.mask_threshold < 1:
            raise UserError(f"mask threshold must be in (0, 1) (got {self.mask_threshold}).")
        if self.max_gap < 0:
            raise UserError(f"max gap must be 0 or more frames (got {self.max_gap}).")
        if not 0 <= self.max_missing_fraction <= 1:
            raise UserError(f"max missing fraction must be in [0, 1] (got {self.max_missing_fraction}).")


@dataclass
class PersonFrame:
    """The person in one frame (all zero when `found` is False)."""

    keypoints: np.ndarray  # [23, 3] float32 (x, y, confidence), pixels
    soft_mask: np.ndarray  # [H, W] uint8, mediapipe's probability x 255
    mask: np.ndarray  # [H, W] bool, cleaned
    found: bool
    other_regions: int = 0  # large dropped regions (another person?)


@dataclass
class PersonTrack:
    """Frames, keypoints and masks of a whole clip (index i of every array is the same frame)."""

    indices: np.ndarray  # [N] int64 source frame numbers
    times: np.ndarray  # [N] float64 seconds since the source's first frame
    frames: np.ndarray  # [N, H, W, 3] uint8 RGB at working resolution
    keypoints: np.ndarray  # [N, 23, 3] float32 (x, y, confidence), KEYPOINT_NAMES order
    soft_masks: np.ndarray  # [N, H, W] uint8 (probability x 255)
    masks: np.ndarray  # [N, H, W] bool
    interpolated: list[int] = field(default_factory=list)  # positions filled from neighbours
    dropped: list[int] = field(default_factory=list)  # source frame numbers removed (no person)
    warnings: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.indices.shape[0])


def blazepose_to_keypoints(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """[33, 3] BlazePose (x, y normalised, visibility) → [23, 3] (x, y pixels, confidence)."""
    out = np.zeros((len(KEYPOINT_NAMES), 3), np.float32)
    for k, m in enumerate(MEDIAPIPE_INDEX):
        if m is None:
            out[k, :2] = landmarks[_SMALL_TOE_STANDIN[k], :2]
            continue
        out[k] = landmarks[m]
    out[:, 0] *= width
    out[:, 1] *= height
    outside = (out[:, 0] < 0) | (out[:, 0] > width) | (out[:, 1] < 0) | (out[:, 1] > height)
    out[outside, 2] = 0.0
    out[:, 2] = np.clip(out[:, 2], 0.0, 1.0)
    return out


class PersonDetector:
    """mediapipe pose + segmentation in tracking mode; feed frames in time order.

    Usage: `with PersonDetector(cfg) as det: pf = det.process(rgb, time)`.
    """

    def __init__(self, config: PersonConfig | None = None) -> None:
        self.config = config = config or PersonConfig()
        config.validate()
        os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ info chatter
        import mediapipe as mp

        self._pose = mp.solutions.pose.Pose(
            static_image_mode=False, model_complexity=1, enable_segmentation=True,
            smooth_landmarks=config.smooth, smooth_segmentation=config.smooth,
            min_detection_confidence=config.min_detection_confidence,
            min_tracking_confidence=config.min_tracking_confidence)
        self._last_us = 0
        self._static = None  # second detector for `other_person`, made on first use

    def close(self) -> None:
        self._pose.close()
        if self._static is not None:
            self._static.close()

    def __enter__(self) -> PersonDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def process(self, rgb: np.ndarray, time: float | None = None) -> PersonFrame:
        """Finds the person in one frame.

        Args:
            rgb: [H, W, 3] uint8.
            time: seconds (increasing); the legacy API otherwise stamps frames 1/30 s apart, which
                misleads its smoothing filters when frames are picked far apart.
        """
        h, w = rgb.shape[:2]
        if time is not None and hasattr(self._pose, "_simulated_timestamp"):
            us = max(self._last_us + 1, int(round(time * 1e6)))
            self._pose._simulated_timestamp = us - 33333  # process() adds 33333 µs
        res = self._pose.process(np.ascontiguousarray(rgb, dtype=np.uint8))
        self._last_us = getattr(self._pose, "_simulated_timestamp", self._last_us)
        empty = PersonFrame(np.zeros((len(KEYPOINT_NAMES), 3), np.float32), np.zeros((h, w), np.uint8),
                            np.zeros((h, w), bool), False)
        if res.pose_landmarks is None or res.segmentation_mask is None:
            return empty
        lm = np.array([(p.x, p.y, p.visibility) for p in res.pose_landmarks.landmark], np.float32)  # [33, 3]
        kp = blazepose_to_keypoints(lm, w, h)
        soft = np.clip(np.round(res.segmentation_mask * 255), 0, 255).astype(np.uint8)
        cm = clean_mask(soft, self.config.mask_threshold, kp, self.config.hole_fraction, self.config.other_fraction)
        if int((kp[:, 2] >= 0.5).sum()) < self.config.min_keypoints or not cm.mask.any():
            return empty
        return PersonFrame(kp, soft, cm.mask, True, cm.other_regions)


    def other_person(self, rgb: np.ndarray, person: PersonFrame) -> bool:
        """Whether someone else is in the frame: paints the tracked person out and detects again."""
        import mediapipe as mp

        if self._static is None:
            self._static = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                                  enable_segmentation=False)
        h, w = rgb.shape[:2]
        hide = person.mask.astype(np.uint8)
        r = max(3, int(0.03 * max(h, w)))
        hide = cv2.dilate(hide, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0
        kp = person.keypoints[person.keypoints[:, 2] >= 0.5]
        if len(kp):  # their keypoints' box too: hair or a hand outside the mask would be found again
            (x0, y0), (x1, y1) = kp[:, :2].min(0), kp[:, :2].max(0)
            mx, my = 0.1 * (x1 - x0) + r, 0.1 * (y1 - y0) + r
            hide[max(0, int(y0 - my)): int(y1 + my) + 1, max(0, int(x0 - mx)): int(x1 + mx) + 1] = True
        painted = rgb.copy()
        painted[hide] = 127
        res = self._static.process(painted)
        if res.pose_landmarks is None:
            return False
        lm = np.array([(p.x, p.y, p.visibility) for p in res.pose_landmarks.landmark], np.float32)
        other = blazepose_to_keypoints(lm, w, h)
        ok = other[other[:, 2] >= 0.5]
        if len(ok) < self.config.min_keypoints:
            return False
        inside = hide[np.clip(ok[:, 1].astype(int), 0, h - 1), np.clip(ok[:, 0].astype(int), 0, w - 1)]
        return bool(inside.mean() < 0.5)  # mostly in the painted area: the tracked person again


def format_frames(indices: Iterable[int], limit: int = 12) -> str:
    """Frame numbers as runs: [1, 2, 3, 7, 9, 10] → '1–3, 7, 9–10' (at most `limit` runs, then '...')."""
    return _format_runs(sorted(set(int(i) for i in indices)), lambda a, b: b == a + 1, limit)


def _format_runs(values: list[int], follows, limit: int) -> str:
    groups: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and follows(values[j], values[j + 1]):
            j += 1
        groups.append(str(values[i]) if i == j else f"{values[i]}–{values[j]}")
        i = j + 1
    return ", ".join(groups[:limit]) + (", ..." if len(groups) > limit else "")


def describe_frames(indices: np.ndarray, positions: Iterable[int], limit: int = 12) -> str:
    """Source frame numbers of track positions, grouped by runs of consecutive chosen frames.

    With every 3rd source frame chosen, positions 1..6 read '3–18', not '3, 6, 9, 12, 15, 18'.
    """
    pos = sorted(set(int(p) for p in positions))
    label = {int(indices[p]): p for p in pos}
    return _format_runs([int(indices[p]) for p in pos], lambda a, b: label[b] == label[a] + 1, limit)


def _runs(missing: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop)) runs of True."""
    runs, i, n = [], 0, len(missing)
    while i < n:
        if missing[i]:
            j = i
            while j < n and missing[j]:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    return runs


def fill_gaps(track: PersonTrack, found: np.ndarray, config: PersonConfig) -> PersonTrack:
    """Fills short runs of frames without a person from their neighbours and drops long ones.

    Args:
        track: per-frame results (frames without a person are all zero).
        found: [N] bool, whether the person was found in each frame.

    Raises:
        UserError: more than `max_missing_fraction` of the frames have no person.
    """
    n = track.num_frames
    missing = ~found
    if missing.all():
        raise UserError(f"no person found in any of the {n} frames. Is a whole person visible in the video?")
    if missing.sum() > config.max_missing_fraction * n:
        raise UserError(f"no person found in {int(missing.sum())} of the {n} frames (source frames "
                        f"{describe_frames(track.indices, np.flatnonzero(missing))}). Choose a part of the video where the "
                        "person is visible with --start/--end.")
    keep = np.ones(n, bool)
    filled: list[int] = []
    for a, b in _runs(missing):
        if b - a > config.max_gap:
            keep[a:b] = False
            continue
        prev_i = a - 1 if a > 0 else None
        next_i = b if b < n else None
        for i in range(a, b):
            if prev_i is not None and next_i is not None:
                s = (track.times[i] - track.times[prev_i]) / max(track.times[next_i] - track.times[prev_i], 1e-9)
                kp = (1 - s) * track.keypoints[prev_i] + s * track.keypoints[next_i]
                kp[:, 2] = np.minimum(track.keypoints[prev_i, :, 2], track.keypoints[next_i, :, 2])
                soft = (1 - s) * track.soft_masks[prev_i].astype(np.float32) + s * track.soft_masks[next_i]
            else:
                src = prev_i if prev_i is not None else next_i
                kp = track.keypoints[src].copy()
                soft = track.soft_masks[src].astype(np.float32)
            kp[:, 2] *= config.gap_confidence
            track.keypoints[i] = kp
            track.soft_masks[i] = np.clip(np.round(soft), 0, 255).astype(np.uint8)
            track.masks[i] = clean_mask(track.soft_masks[i], config.mask_threshold, kp,
                                        config.hole_fraction, config.other_fraction).mask
            filled.append(i)
    if filled:
        track.warnings.append(f"person not found in {len(filled)} frame(s) (source frames "
                              f"{describe_frames(track.indices, filled)}); filled in from their neighbours "
                              "with low confidence.")
    if not keep.all():
        dropped = track.indices[~keep]
        track.warnings.append(f"person not found for more than {config.max_gap} frames in a row; "
                              f"dropped source frames {describe_frames(track.indices, np.flatnonzero(~keep))}.")
        new_pos = np.cumsum(keep) - 1
        track = PersonTrack(track.indices[keep], track.times[keep], track.frames[keep], track.keypoints[keep],
                            track.soft_masks[keep], track.masks[keep], [int(new_pos[i]) for i in filled if keep[i]],
                            track.dropped + [int(i) for i in dropped], track.warnings)
    else:
        track.interpolated = filled
    return track


def detect_person(frames: FrameReader | Iterable[Frame], config: PersonConfig | None = None,
                  cancel: CancelToken | None = None, total: int | None = None
                  ) -> Generator[Event, None, PersonTrack]:
    """Sub-job: decodes the chosen frames and finds the person in each, then fills gaps.

    Use inside a job as `track = yield from detect_person(reader, cfg, cancel)`. Yields
    `Progress("person", done, total)` per frame (decoding and detection are interleaved, so this
    one stage covers both) and `Log` warnings (damaged video, gaps, a second person).

    Args:
        frames: a `FrameReader` (its warnings are passed on) or any iterable of `Frame`s.
        total: number of frames for progress (taken from a `FrameReader` when omitted).

    Raises:
        UserError: bad video (from the reader) or no person in most frames.
        Cancelled: `cancel` was set (checked between frames).
    """
    config = config or PersonConfig()
    config.validate()
    cancel = cancel or CancelToken()
    reader = frames if isinstance(frames, FrameReader) else None
    if reader is not None:
        total = reader.total
        source = reader.frames(cancel)
    else:
        source = iter(frames)
    total = total or 0
    warnings: list[str] = []
    n_warned = 0
    idx, times, found, others, seen_others = [], [], [], [], []
    check_every = max(1, (total or 150) // config.others_check_frames) if config.others_check_frames else 0
    buf: dict[str, np.ndarray] = {}  # preallocated (total known): no second copy of all frames
    yield Progress("person", 0, total)
    with PersonDetector(config) as det:
        for fr in source:
            cancel.check()
            pf = det.process(fr.rgb, fr.time)
            n = len(idx)
            for name, arr in (("frames", fr.rgb), ("keypoints", pf.keypoints), ("soft_masks", pf.soft_mask),
                              ("masks", pf.mask)):
                if name not in buf or buf[name].shape[0] <= n:
                    grown = np.zeros((max(total, 2 * n, 8), *arr.shape), arr.dtype)
                    if name in buf:
                        grown[:n] = buf[name][:n]
                    buf[name] = grown
                if buf[name].shape[1:] != arr.shape:
                    raise UserError(f"frame {fr.index} has size {arr.shape[:2]}, others {buf[name].shape[1:3]}.")
                buf[name][n] = arr
            if check_every and pf.found and n % check_every == check_every // 2 and det.other_person(fr.rgb, pf):
                seen_others.append(n)
            idx.append(fr.index)
            times.append(fr.time)
            found.append(pf.found)
            others.append(pf.other_regions)
            if reader is not None and len(reader.warnings) > n_warned:
                for w in reader.warnings[n_warned:]:
                    warnings.append(w)
                    yield Log(w, "warning")
                n_warned = len(reader.warnings)
            yield Progress("person", len(idx), max(total, len(idx)))
    if reader is not None:
        for w in reader.warnings[n_warned:]:
            warnings.append(w)
            yield Log(w, "warning")
    if not idx:
        raise UserError("no frames to look for a person in.")
    n = len(idx)
    track = PersonTrack(np.asarray(idx, np.int64), np.asarray(times, np.float64), buf["frames"][:n],
                        buf["keypoints"][:n], buf["soft_masks"][:n], buf["masks"][:n])
    multi = [i for i, o in enumerate(others) if o > 0]
    if multi:
        warnings.append(f"another large region (a second person?) was dropped from the mask in {len(multi)} "
                        f"frame(s) (source frames {describe_frames(track.indices, multi)}); the tracked person "
                        "is kept.")
        log.warning(warnings[-1])
        yield Log(warnings[-1], "warning")
    if seen_others:
        warnings.append(f"another person is visible (source frames {describe_frames(track.indices, seen_others)}); "
                        "only the tracked person is used. Crop or trim the video if it follows the wrong one.")
        log.warning(warnings[-1])
        yield Log(warnings[-1], "warning")
    track.warnings = warnings
    n_before = len(track.warnings)
    track = fill_gaps(track, np.asarray(found, bool), config)
    for w in track.warnings[n_before:]:
        log.warning(w)
        yield Log(w, "warning")
    return track
