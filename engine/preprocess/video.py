"""Frames from a video file or a folder of images: chosen, upright, at working resolution.

Memory stays bounded whatever the source (1 h, 8K): the decoder streams, and swscale turns each
chosen frame straight from the decoder's YUV into a small RGB image (no full-size RGB copy). The
reader holds only the candidates of one target, small, plus the decoder's own buffers (measured:
8K H.264 read at 540 px peaks at ~280 MB process RSS, ~75 MB of it the imports).

Choice: `max_frames` frame numbers spread evenly over [start, end); each may give way to the
sharpest frame within ±`sharpness_window` frames (variance of the Laplacian), which skips
motion-blurred frames. Frames far ahead are reached by seeking to the keyframe before them (from
the container's index) instead of decoding everything in between; `seek=False` is the slow,
obvious twin, and a test checks both give the same frames.

Rotation: the stream's display matrix (or an old-style `rotate` tag) is applied, so portrait phone
clips come out upright; mirroring matrices are honoured too, case by case as FFmpeg does.

Frame numbers are `round(t * fps)` of the frame's time `t` since the first frame: exact for
constant-frame-rate video (phones record variable rate; there they are close).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from engine.errors import UserError
from engine.jobs.events import CancelToken

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mts", ".m2ts", ".3gp")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SEEK_MIN_GAP_S = 0.5  # seek only when it skips at least this much decoding
NO_INDEX_SEEK_GAP_S = 10.0  # without a keyframe index, keyframes may be this far apart
MAX_BAD_PACKETS = 100  # consecutive undecodable packets before giving up on the rest


@dataclass(frozen=True)
class DecodeConfig:
    """Which frames to take from the source, and at what size."""

    start: float = 0.0
    """First second of the source to use."""
    end: float | None = None
    """Second where the used range ends (None: the end of the source)."""
    max_frames: int = 150
    """Most frames to take, spread evenly over the range (all frames if the range has fewer)."""
    size: int = 540
    """Long side of the working resolution in pixels; smaller sources keep their size (never upscaled)."""
    sharpness_window: int = 2
    """A chosen frame may give way to a sharper one up to this many frames away (0: off; shrinks so windows never overlap)."""
    image_fps: float = 30.0
    """Frame rate assumed for a folder of images (turns start/end seconds into image numbers)."""
    seek: bool = True
    """Seek to the keyframe before far-apart frames instead of decoding everything (False: decode all; same frames)."""

    def validate(self) -> None:
        if not (math.isfinite(self.start) and self.start >= 0):
            raise UserError(f"--start must be 0 or more seconds (got {self.start}).")
        if self.end is not None and not (math.isfinite(self.end) and self.end > self.start):
            raise UserError(f"--end ({self.end} s) must be after --start ({self.start} s).")
        if not 1 <= self.max_frames <= 5000:
            raise UserError(f"--max-frames must be between 1 and 5000 (got {self.max_frames}).")
        if not 32 <= self.size <= 4096:
            raise UserError(f"--size must be between 32 and 4096 pixels (got {self.size}).")
        if not 0 <= self.sharpness_window <= 15:
            raise UserError(f"sharpness window must be between 0 and 15 frames (got {self.sharpness_window}).")
        if not 0 < self.image_fps <= 1000:
            raise UserError(f"image frame rate must be in (0, 1000] (got {self.image_fps}).")


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` finds out about a source (sizes in the upright, displayed orientation)."""

    path: Path
    kind: str  # "video" or "images"
    width: int  # full-resolution display width (pixel aspect ratio applied)
    height: int
    fps: float
    duration: float  # seconds from the first frame to the end
    frame_count: int  # exact for images, an estimate for video (header or duration x fps)
    rotation: int  # degrees counter-clockwise applied to stored frames to show them upright: 0, 90, 180, -90
    mirror: bool  # then mirrored left-right (display matrices of some front cameras)
    codec: str  # e.g. "h264", "hevc"; "images" for a folder
    first_time: float = 0.0  # stream time of the first frame (s); frame times count from it


@dataclass(frozen=True)
class Frame:
    """One chosen frame."""

    index: int  # source frame number (0 = first frame of the source)
    time: float  # seconds since the first frame of the source
    rgb: np.ndarray  # [H, W, 3] uint8, upright, working resolution
    sharpness: float  # variance of the Laplacian of the grey image (higher = sharper)


def working_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) with long side ≈ `size`, never larger than the source, both even (H.264 needs it)."""
    s = min(1.0, size / max(width, height))
    w = min(2 * round(width * s / 2), width - width % 2)
    h = min(2 * round(height * s / 2), height - height % 2)
    return max(2, w), max(2, h)


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: low for blurred frames."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def natural_key(name: str) -> list:
    """Sort key so that img2.png comes before img10.png."""
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder (not recursive, hidden files skipped), naturally sorted."""
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


# ---- probing -------------------------------------------------------------------------------------

def probe(path: str | Path, image_fps: float = 30.0) -> VideoInfo:
    """Opens a video file or an image folder and reports its size, timing and rotation.

    The first frame is decoded, so a file that opens but holds nothing decodable fails here.

    Raises:
        UserError: missing, not a video, audio only, unsupported codec, no decodable frames,
            or a folder without readable images.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path} does not exist.")
    if path.is_dir():
        return _probe_images(path, image_fps)
    return _probe_video(path)


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except PermissionError as e:
        raise UserError(f"cannot read {path}: permission denied.") from e
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path.name} is not a video FFmpeg can read (not a video, or damaged / truncated): "
                        f"{getattr(e, 'strerror', None) or e}.") from e


def _video_stream(container, path: Path):
    if not container.streams.video:
        if container.streams.audio:
            raise UserError(f"{path.name} contains only audio; it needs a video track.")
        raise UserError(f"{path.name} contains no video track (is it a video? it may be damaged or truncated).")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        name = getattr(stream.codec, "name", None) or "unknown"
        raise UserError(f"{path.name}: its video codec ({name}) cannot be decoded by this FFmpeg build; "
                        "convert it first, e.g. `ffmpeg -i IN -c:v libx264 -crf 18 OUT.mp4`.")
    return stream


def _orientation(frame: av.VideoFrame, stream) -> tuple[int, bool]:
    """How to show stored frames upright: (counter-clockwise degrees, then mirror left-right).

    Follows FFmpeg's own autorotate (fftools/ffmpeg_filter.c) case by case, so mirrored display
    matrices come out as `ffmpeg` shows them. Without a matrix, an old-style `rotate` tag
    (clockwise degrees) is used.
    """
    m = None
    for sd in frame.side_data:
        if str(getattr(sd, "type", "")).endswith("DISPLAYMATRIX"):
            m = np.frombuffer(bytes(sd), dtype="<i4")  # 3x3 row-major, 16.16 fixed point
    if m is not None:
        theta = -int(getattr(frame, "rotation", 0) or 0)  # clockwise, like FFmpeg's get_rotation
    else:
        try:
            theta = int(float(stream.metadata.get("rotate", 0)))
        except ValueError:
            theta = 0
    theta = int(round(theta / 90.0)) * 90 % 360
    if theta == 90:  # FFmpeg: transpose=cclock_flip if m[3] > 0 else clock
        return (-90, True) if m is not None and m[3] > 0 else (-90, False)
    if theta == 270:  # transpose=clock_flip if m[3] < 0 else cclock
        return (90, True) if m is not None and m[3] < 0 else (90, False)
    if theta == 180:  # hflip if m[0] < 0, vflip if m[4] < 0
        if m is None:
            return 180, False
        h, v = m[0] < 0, m[4] < 0
        return (180, False) if h and v else (0, True) if h else (180, True) if v else (0, False)
    return (180, True) if m is not None and m[4] < 0 else (0, False)  # vflip if m[4] < 0


def _probe_video(path: Path) -> VideoInfo:
    with _open(path) as container:
        stream = _video_stream(container, path)
        tb = float(stream.time_base) if stream.time_base else 0.0
        first = None
        for f in _decoded(container, stream, []):
            first = f
            break
        if first is None:
            raise UserError(f"{path.name}: its video track has no decodable frames (empty or damaged file).")
        rotation, mirror = _orientation(first, stream)
        first_time = float(first.time) if first.time is not None else 0.0
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        duration = 0.0
        if stream.duration and tb:
            start = stream.start_time * tb if stream.start_time is not None else first_time
            duration = stream.duration * tb + start - first_time
        elif container.duration:
            duration = container.duration / av.time_base - max(first_time, 0.0)
        if not (0 < fps <= 1000) and stream.frames and duration > 0:
            fps = stream.frames / duration
        if not 0 < fps <= 1000:
            log.warning("%s has no usable frame rate; assuming 30 fps", path.name)
            fps = 30.0
        if duration <= 0:
            duration = _scan_duration(path, first_time)
        frames = int(stream.frames) if stream.frames else 0
        if frames <= 0:
            frames = max(1, round(duration * fps))
        cc = stream.codec_context
        sar = float(stream.sample_aspect_ratio or cc.sample_aspect_ratio or 1) or 1.0
        sw, sh = int(round(cc.width * sar)), int(cc.height)
        w, h = (sh, sw) if rotation % 180 else (sw, sh)
        return VideoInfo(path, "video", w, h, fps, duration, frames, rotation, mirror, cc.name, first_time)


def _scan_duration(path: Path, first_time: float) -> float:
    """Duration from the last packet's end time (for containers without one in the header)."""
    end = first_time
    with _open(path) as container:
        stream = container.streams.video[0]
        tb = float(stream.time_base)
        try:
            for packet in container.demux(stream):
                if packet.pts is not None:
                    end = max(end, (packet.pts + (packet.duration or 0)) * tb)
        except av.FFmpegError:
            pass
    return max(end - first_time, 1e-3)


def _probe_images(folder: Path, image_fps: float) -> VideoInfo:
    files = list_images(folder)
    if not files:
        raise UserError(f"{folder} contains no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}).")
    for f in files:
        img = _read_image(f)
        if img is not None:
            h, w = img.shape[:2]
            n = len(files)
            return VideoInfo(folder, "images", w, h, image_fps, n / image_fps, n, 0, False, "images")
    raise UserError(f"none of the {len(files)} images in {folder} could be read.")


def _read_image(path: Path) -> np.ndarray | None:
    """uint8 RGB, EXIF orientation applied (IMREAD_COLOR does it); None if unreadable."""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # imread cannot open non-ASCII paths on Windows
    except OSError:
        return None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if img is None else img[..., ::-1]


# ---- decoding ------------------------------------------------------------------------------------

def _decoded(container, stream, problems: list[str]) -> Iterator[av.VideoFrame]:
    """Decoded frames; damaged packets are skipped, a truncated container ends the stream."""
    demux = container.demux(stream)
    bad = 0
    while True:
        try:
            packet = next(demux)
        except StopIteration:
            return
        except av.FFmpegError as e:
            problems.append(f"reading stopped early ({e})")
            return
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            bad += 1
            if bad == 1:
                problems.append(f"damaged data skipped ({e})")
            if bad >= MAX_BAD_PACKETS:
                problems.append(f"{bad} damaged packets in a row: reading stopped")
                return
            continue
        bad = 0
        yield from frames


def _set_threads(stream) -> None:
    """Frame threads hold one decoded frame each: fine up to 4K, too much memory above.

    Measured (2-core machine, 8K H.264): frame threads 18–24 fps at 505 MB peak, slice threads
    25 fps at 280 MB; 1080p: 134–160 fps either way.
    """
    cc = stream.codec_context
    if cc.width * cc.height > 3840 * 2160:
        stream.thread_type = "SLICE"
    else:
        stream.thread_type = "AUTO"
        cc.thread_count = min(4, os.cpu_count() or 1)


class _Pick:
    """The frame chosen for one target so far: the centre one unless a neighbour is clearly sharper."""

    def __init__(self) -> None:
        self.centre: Frame | None = None
        self.best: Frame | None = None

    def offer(self, frame: Frame, is_centre: bool) -> None:
        if is_centre and self.centre is None:
            self.centre = frame
        elif self.best is None or frame.sharpness > self.best.sharpness:
            self.best = frame

    def result(self) -> Frame | None:
        if self.centre is None:
            return self.best
        # 10 % hysteresis: a still, sharp clip keeps its even spacing.
        if self.best is not None and self.best.sharpness > 1.1 * self.centre.sharpness:
            return self.best
        return self.centre

    @property
    def empty(self) -> bool:
        return self.centre is None and self.best is None


class FrameReader:
    """The chosen frames of one source (see the module docstring).

    Usage::

        reader = FrameReader("clip.mov", DecodeConfig(max_frames=150))   # probes; UserError on bad input
        for frame in reader.frames(cancel):   # Frame(index, time, rgb uint8 [H, W, 3], sharpness)
            ...
        reader.warnings   # problems met on the way (truncated file, unreadable images, ...)

    Attributes:
        info: `VideoInfo` of the source.
        size: (w, h) working resolution of every frame.
        indices: planned source frame numbers (at most `max_frames`); fewer frames come out
            when the file ends early or is damaged (then `warnings` says so).
        window: the sharpness window actually used (frames each side).
    """

    def __init__(self, path: str | Path, config: DecodeConfig | None = None, indices: list[int] | None = None) -> None:
        """`indices`: read exactly these source frame numbers (sorted; no sharper neighbour stands in)
        instead of the ones `config` spreads over its range."""
        self.config = config = config or DecodeConfig()
        config.validate()
        self.info = info = probe(path, config.image_fps)
        self.size = working_size(info.width, info.height, config.size)
        self.warnings: list[str] = []
        fps, n_total = info.fps, info.frame_count
        if info.kind == "video":
            n_total = max(1, math.ceil(info.duration * fps - 1e-6))
        if config.start >= info.duration:
            raise UserError(f"--start {config.start:g} s is at or after the end of {info.path.name} "
                            f"({info.duration:.2f} s).")
        end = info.duration if config.end is None else min(config.end, info.duration)
        first = math.ceil(config.start * fps - 1e-6)
        stop = min(math.ceil(end * fps - 1e-6), n_total)  # exclusive
        if stop <= first:
            raise UserError(f"the range {config.start:g}–{end:g} s of {info.path.name} contains no frame.")
        n = stop - first
        if n <= config.max_frames:
            idx = np.arange(first, stop)
        elif config.max_frames == 1:
            idx = np.array([(first + stop - 1) // 2])
        else:
            idx = np.unique(np.round(np.linspace(first, stop - 1, config.max_frames)).astype(np.int64))
        if indices is not None:
            idx = np.unique(np.asarray(indices, np.int64))
            if len(idx) == 0 or idx[0] < 0 or idx[-1] >= n_total:
                raise UserError(f"{info.path.name} has no frame numbers {int(idx.min(initial=0))}–"
                                f"{int(idx.max(initial=0))} (it has {n_total} frames).")
        self.indices: list[int] = [int(i) for i in idx]
        min_step = int(np.diff(idx).min()) if len(idx) > 1 else 10**9
        self.window = 0 if indices is not None else min(config.sharpness_window, (min_step - 1) // 2)
        log.info("%s: %dx%d %.2f fps %.2f s (rotation %d) → %d frames at %dx%d", info.path.name, info.width,
                 info.height, fps, info.duration, info.rotation, len(self.indices), *self.size)

    @property
    def total(self) -> int:
        """Number of frames planned (an upper bound on what `frames` yields)."""
        return len(self.indices)

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def frames(self, cancel: CancelToken | None = None) -> Iterator[Frame]:
        """Yields the chosen frames in time order.

        Raises:
            UserError: no chosen frame could be decoded.
            Cancelled: `cancel` was set (checked between frames).
        """
        gen = self._images(cancel) if self.info.kind == "images" else self._video(cancel)
        count = 0
        for frame in gen:
            count += 1
            yield frame
        if count == 0:
            raise UserError(f"{self.info.path.name}: none of the chosen frames could be read (damaged file?).")
        if count < self.total:
            self._warn(f"only {count} of the {self.total} chosen frames could be read; going on with those.")

    def _warn(self, message: str) -> None:
        log.warning("%s: %s", self.info.path.name, message)
        self.warnings.append(message)

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        w, h = self.size
        rot = self.info.rotation
        sw, sh = (h, w) if rot % 180 else (w, h)  # scale in the stored orientation, then rotate
        rgb = frame.reformat(width=sw, height=sh, format="rgb24", interpolation="AREA").to_ndarray()
        if rot:
            rgb = np.rot90(rgb, k=rot // 90)  # np.rot90 turns counter-clockwise, like `rotation`
        if self.info.mirror:
            rgb = rgb[:, ::-1]
        return np.ascontiguousarray(rgb)

    def _video(self, cancel: CancelToken | None) -> Iterator[Frame]:
        info, fps, win = self.info, self.info.fps, self.window
        targets = self.indices
        problems: list[str] = []
        corrupt = 0
        with _open(info.path) as container:
            stream = _video_stream(container, info.path)
            _set_threads(stream)
            tb = float(stream.time_base)
            keys = self._keyframe_times(stream) if self.config.seek else None
            frames = _decoded(container, stream, problems)
            k, pos, pick = 0, 0.0, _Pick()
            while k < len(targets):
                if cancel is not None:
                    cancel.check()
                if pick.empty and keys is not None and self._should_seek(keys, (targets[k] - win - 0.5) / fps, pos):
                    t_need = (targets[k] - win - 0.5) / fps
                    try:
                        container.seek(max(0, int((t_need + info.first_time) / tb)), stream=stream, backward=True)
                    except av.FFmpegError as e:  # unseekable after all: decode on
                        log.debug("seek failed (%s); decoding sequentially", e)
                        keys = None
                    else:
                        frames.close()
                        frames = _decoded(container, stream, problems)
                        pos = t_need  # (nothing before the target window is needed any more)
                        log.debug("seek to %.2f s for frame %d", t_need, targets[k])
                try:
                    f = next(frames)
                except StopIteration:
                    break
                t = float(f.time) - info.first_time if f.time is not None else pos + 1.0 / fps
                pos = t
                j = round(t * fps)
                while k < len(targets) and j > targets[k] + win:
                    chosen = pick.result()
                    if chosen is not None:
                        yield chosen
                    k, pick = k + 1, _Pick()
                if k >= len(targets) or j < targets[k] - win:
                    continue
                if getattr(f, "is_corrupt", False):  # concealed decode errors: let a neighbour stand in
                    corrupt += 1
                    continue
                rgb = self._to_rgb(f)
                pick.offer(Frame(j, t, rgb, sharpness(rgb)), j == targets[k])
            chosen = pick.result()
            if k < len(targets) and chosen is not None:
                yield chosen
        for p in problems:
            self._warn(p)
        if corrupt:
            self._warn(f"{corrupt} damaged frame(s) skipped.")

    def _keyframe_times(self, stream) -> np.ndarray | None:
        """Sorted keyframe times (s since the first frame) from the container index, or None."""
        try:
            entries = stream.index_entries
            tb = float(stream.time_base)
            times = [e.timestamp * tb for e in entries if e.is_keyframe]
        except (AttributeError, TypeError):  # PyAV < 14 has no index access
            return np.zeros(0)
        if not times:
            return np.zeros(0)
        return np.sort(np.asarray(times)) - self.info.first_time

    @staticmethod
    def _should_seek(keys: np.ndarray, t_need: float, pos: float) -> bool:
        """Seek when the keyframe before `t_need` lies well past the last decoded time `pos`."""
        if len(keys) == 0:  # no index: only jump when very far
            return t_need - pos > NO_INDEX_SEEK_GAP_S
        i = np.searchsorted(keys, t_need, side="right") - 1
        return i >= 0 and keys[i] - pos > SEEK_MIN_GAP_S

    def _images(self, cancel: CancelToken | None) -> Iterator[Frame]:
        files = list_images(self.info.path)
        w, h = self.size
        fps, win = self.info.fps, self.window
        aspect = self.info.width / self.info.height
        skipped: list[str] = []
        for k in self.indices:
            if cancel is not None:
                cancel.check()
            pick = _Pick()
            for j in range(max(0, k - win), min(len(files), k + win + 1)):
                img = _read_image(files[j])
                if img is None or abs(img.shape[1] / img.shape[0] - aspect) > 0.01 * aspect:
                    skipped.append(files[j].name)
                    continue
                interp = cv2.INTER_AREA if img.shape[1] > w else cv2.INTER_LINEAR
                rgb = np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=interp))
                pick.offer(Frame(j, j / fps, rgb, sharpness(rgb)), j == k)
            chosen = pick.result()
            if chosen is not None:
                yield chosen
        if skipped:
            names = ", ".join(sorted(set(skipped), key=natural_key)[:5])
            self._warn(f"{len(set(skipped))} image(s) unreadable or of another shape, skipped: {names}"
                       + (", ..." if len(set(skipped)) > 5 else ""))
