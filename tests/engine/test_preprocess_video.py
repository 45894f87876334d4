"""Preprocessing, stage 1: decoding (choice, size, rotation, bad input) and the person (masks, keypoints)."""

from __future__ import annotations

import logging
import struct

import av
import cv2
import numpy as np
import pytest
import torch

from engine.body import create_body_model
from engine.body.base import KEYPOINT_NAMES
from engine.errors import UserError
from engine.geometry.camera import project
from engine.jobs import Cancelled, CancelToken, Log, Progress, run_job
from engine.metrics import iou
from engine.preprocess.masks import clean_mask
from engine.preprocess.person import (
    PersonConfig,
    PersonTrack,
    blazepose_to_keypoints,
    describe_frames,
    detect_person,
    fill_gaps,
    format_frames,
)
from engine.preprocess.video import DecodeConfig, Frame, FrameReader, list_images, probe
from engine.project import Project
from engine.synth.ground_truth import GroundTruth
from engine.synth.scene import SynthConfig, synth_job

# 192x256 portrait: large enough for mediapipe's person detector (it finds nobody much smaller).
SCENE = SynthConfig(frames=12, size=256, motion="turn", garment="shirt", seed=7, voxel=0.012)
W, H, FPS = 192, 256, 25.0


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "s"
    run_job(synth_job(SCENE, out))
    return out


@pytest.fixture(scope="module")
def true_frames(scene):
    proj = Project.open(scene / "project")
    return [np.round(proj.frame(i) * 255).astype(np.uint8) for i in range(SCENE.frames)]


def _write_mp4(path, frames, rotation=None, keyint=None, faststart=False, codec="libx264", options=None,
               hflip=False):
    """A clip via PyAV (container from the suffix) with optional display rotation (counter-clockwise
    degrees) and keyframe interval."""
    fmt = "mp4" if str(path).endswith(".mp4") else None
    with av.open(str(path), "w", format=fmt, options={"movflags": "faststart"} if faststart else {}) as c:
        h, w = frames[0].shape[:2]
        s = c.add_stream(codec, rate=int(FPS))
        s.width, s.height = w, h
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        opts = dict(options if options is not None else {"crf": "18"})
        if keyint:
            opts["x264-params"] = f"keyint={keyint}:min-keyint={keyint}:scenecut=0"
        s.options = opts
        if rotation is not None:
            s.set_display_rotation(rotation, hflip=hflip)
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _mad(a, b) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def _drain(gen):
    """Runs a sub-job; returns (events, return value)."""
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        return events, stop.value


# ---- decoding ------------------------------------------------------------------------------------

def test_probe_and_evenly_spread_choice(scene, true_frames):
    info = probe(scene / "video.mp4")
    assert (info.width, info.height, info.frame_count, info.rotation, info.codec) == (W, H, 12, 0, "h264")
    assert info.fps == pytest.approx(FPS) and info.duration == pytest.approx(12 / FPS)
    reader = FrameReader(scene / "video.mp4", DecodeConfig(max_frames=4, sharpness_window=0))
    assert reader.indices == [0, 4, 7, 11] and reader.size == (W, H)
    frames = list(reader.frames())
    assert [f.index for f in frames] == [0, 4, 7, 11]
    assert [f.time for f in frames] == pytest.approx([i / FPS for i in (0, 4, 7, 11)])
    for f in frames:
        assert f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8
        mads = [_mad(f.rgb, t) for t in true_frames]
        neighbours = [mads[j] for j in (f.index - 1, f.index + 1) if 0 <= j < 12]  # (11 ≈ 0: a full turn)
        assert mads[f.index] < 4.0 and mads[f.index] < min(neighbours)
    assert reader.warnings == []


def test_start_end_and_working_size(scene):
    reader = FrameReader(scene / "video.mp4", DecodeConfig(start=0.1, end=0.3, size=128))
    frames = list(reader.frames())
    assert [f.index for f in frames] == [3, 4, 5, 6, 7]  # frames whose time is in [0.1, 0.3)
    assert frames[0].rgb.shape == (128, 96, 3)
    # never upscaled: a size above the source keeps the source size
    assert FrameReader(scene / "video.mp4", DecodeConfig(size=1024)).size == (W, H)


@pytest.mark.parametrize("cfg, words", [
    (DecodeConfig(start=0.3, end=0.2), "must be after"),
    (DecodeConfig(start=5.0), "after the end"),
    (DecodeConfig(max_frames=0), "--max-frames"),
])  # fmt: skip
def test_bad_ranges(scene, cfg, words):
    with pytest.raises(UserError, match=words):
        FrameReader(scene / "video.mp4", cfg)


@pytest.mark.parametrize("rotation, hflip", [(-90, False), (90, False), (180, False), (0, True), (-90, True)])
def test_rotated_clip_comes_out_upright(scene, true_frames, tmp_path, rotation, hflip):
    """Stored sideways with a display matrix, as phones do; -90 is an iPhone held upright.

    PyAV's writer documents the matrix as: turn counter-clockwise by `rotation`, then mirror.
    """
    # display = mirror(rot90(stored, rotation / 90))  ⇒  stored = rot90(mirror(display), -rotation / 90)
    stored = [np.rot90(f[:, ::-1] if hflip else f, k=-rotation // 90) for f in true_frames[:4]]
    path = tmp_path / "phone.mp4"
    _write_mp4(path, stored, rotation=rotation, hflip=hflip)
    if (rotation, hflip) == (-90, False):  # the track header matrix of a portrait iPhone clip: a=0, b=1, c=-1, d=0
        data = path.read_bytes()
        i = data.find(b"tkhd")
        a, b, _, c, d = struct.unpack(">5i", data[i + 44: i + 64])
        assert (a, b, c, d) == (0, 1 << 16, -(1 << 16), 0)
    info = probe(path)
    assert (info.width, info.height) == (W, H)
    if not hflip:
        assert (info.rotation, info.mirror) == (rotation, False)
    frames = list(FrameReader(path, DecodeConfig(sharpness_window=0)).frames())
    assert len(frames) == 4
    for f, t in zip(frames, true_frames):
        assert f.rgb.shape == (H, W, 3) and _mad(f.rgb, t) < 4.0


@pytest.mark.parametrize("name, codec, options", [
    ("clip.avi", "mjpeg", {"q:v": "2"}),
    ("clip.mkv", "libx264", {"crf": "18"}),
    ("clip.webm", "libvpx-vp9", {"crf": "15", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
    ("clip.mov", "libx265", {"crf": "12", "x265-params": "log-level=error"}),  # HEVC
])  # fmt: skip
def test_other_containers_and_codecs(true_frames, tmp_path, name, codec, options):
    try:
        av.codec.Codec(codec, "w")
    except Exception:  # noqa: BLE001 - encoder missing from this FFmpeg build
        pytest.skip(f"no {codec} encoder here")
    _write_mp4(tmp_path / name, true_frames[:4], codec=codec, options=options)
    frames = list(FrameReader(tmp_path / name, DecodeConfig(sharpness_window=0)).frames())
    assert [f.index for f in frames] == [0, 1, 2, 3]
    for f, t in zip(frames, true_frames):
        assert f.rgb.shape == (H, W, 3) and _mad(f.rgb, t) < 5.0


def test_seeking_gives_the_same_frames_as_decoding_everything(true_frames, tmp_path, caplog):
    path = tmp_path / "gop.mp4"
    _write_mp4(path, [true_frames[i % 12] for i in range(100)], keyint=4)  # 4 s, a keyframe every 0.16 s
    cfg = DecodeConfig(max_frames=4, sharpness_window=1)
    with caplog.at_level(logging.DEBUG, logger="engine.preprocess.video"):
        fast = list(FrameReader(path, cfg).frames())
    assert any("seek to" in r.message for r in caplog.records)
    slow = list(FrameReader(path, DecodeConfig(max_frames=4, sharpness_window=1, seek=False)).frames())
    assert [f.index for f in fast] == [f.index for f in slow] and len(fast) == 4
    for a, b in zip(fast, slow):
        assert np.array_equal(a.rgb, b.rgb)


def test_blurred_frame_gives_way_to_a_sharp_neighbour(true_frames, tmp_path):
    frames = [true_frames[i % 12].copy() for i in range(15)]
    frames[7] = cv2.GaussianBlur(frames[7], (0, 0), 3.0)
    path = tmp_path / "blur.mp4"
    _write_mp4(path, frames)
    sharp = list(FrameReader(path, DecodeConfig(max_frames=3, sharpness_window=2)).frames())
    assert [f.index for f in sharp][::2] == [0, 14] and sharp[1].index in (5, 6, 8, 9)
    plain = list(FrameReader(path, DecodeConfig(max_frames=3, sharpness_window=0)).frames())
    assert [f.index for f in plain] == [0, 7, 14]


def test_image_folder(true_frames, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, f in enumerate(true_frames):  # img1 .. img12: natural order, not img1, img10, img11, img2
        cv2.imwrite(str(folder / f"img{i + 1}.png"), f[..., ::-1])
    (folder / "notes.txt").write_text("not an image")
    cv2.imwrite(str(folder / ".hidden.png"), true_frames[0])
    assert [p.name for p in list_images(folder)][:3] == ["img1.png", "img2.png", "img3.png"]
    reader = FrameReader(folder, DecodeConfig(sharpness_window=0))
    assert (reader.info.kind, reader.info.frame_count, reader.size) == ("images", 12, (W, H))
    frames = list(reader.frames())
    assert all(np.array_equal(f.rgb, t) for f, t in zip(frames, true_frames)) and len(frames) == 12
    small = list(FrameReader(folder, DecodeConfig(max_frames=3, size=128, sharpness_window=0)).frames())
    assert [f.index for f in small] == [0, 6, 11] and small[0].rgb.shape == (128, 96, 3)


def test_image_exif_orientation_is_applied(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:10, :10] = 255  # top-left of the stored (landscape) image
    for i in range(2):
        im = Image.fromarray(stored)
        exif = im.getexif()
        exif[0x0112] = 6  # "rotate 90° clockwise to display", as phones write
        im.save(tmp_path / f"{i}.jpg", exif=exif.tobytes(), quality=95)
    frames = list(FrameReader(tmp_path, DecodeConfig(sharpness_window=0)).frames())
    assert frames[0].rgb.shape == (80, 40, 3)
    assert frames[0].rgb[:10, -10:].mean() > 200 and frames[0].rgb[-10:, :10].mean() < 50  # now top-right


def _audio_only(path):
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=44100)
        s.layout = "mono"
        for i in range(10):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 44100, i * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_bad_inputs_give_one_clear_message(true_frames, tmp_path):
    (tmp_path / "text.mp4").write_text("hello, not a video\n" * 50)
    (tmp_path / "empty.mp4").write_bytes(b"")
    _audio_only(tmp_path / "audio.m4a")
    _write_mp4(tmp_path / "full.mp4", true_frames)  # index (moov) at the end: a cut file loses it
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "txt_dir").mkdir()
    (tmp_path / "txt_dir" / "a.txt").write_text("x")
    cases = {"text.mp4": "not a video", "empty.mp4": "not a video", "audio.m4a": "only audio",
             "cut.mp4": "truncated", "missing.mp4": "does not exist", "empty_dir": "contains no images",
             "txt_dir": "contains no images"}
    for name, words in cases.items():
        with pytest.raises(UserError, match=words):
            FrameReader(tmp_path / name)


def test_truncated_file_with_index_first_keeps_what_is_readable(true_frames, tmp_path):
    _write_mp4(tmp_path / "fs.mp4", true_frames, faststart=True)
    data = (tmp_path / "fs.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    reader = FrameReader(tmp_path / "cut.mp4", DecodeConfig(sharpness_window=0))
    frames = list(reader.frames())
    assert 1 <= len(frames) < 12
    assert [f.index for f in frames] == list(range(len(frames)))
    assert any("could be read" in w for w in reader.warnings)
    assert _mad(frames[0].rgb, true_frames[0]) < 4.0
    # The person sub-job passes the reader's warnings on as Log events and keeps going.
    events, track = _drain(detect_person(FrameReader(tmp_path / "cut.mp4", DecodeConfig(sharpness_window=0))))
    assert track.num_frames == len(frames)
    assert any(isinstance(e, Log) and e.level == "warning" and "could be read" in e.message for e in events)


# ---- the person ----------------------------------------------------------------------------------

def test_mediapipe_masks_and_keypoints_match_the_truth(scene):
    reader = FrameReader(scene / "video.mp4", DecodeConfig(size=256))
    events, track = _drain(detect_person(reader, PersonConfig()))
    assert isinstance(track, PersonTrack) and track.num_frames == 12
    assert track.interpolated == [] and track.dropped == [] and track.warnings == []
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1] == Progress("person", 12, 12)
    assert track.keypoints.shape == (12, len(KEYPOINT_NAMES), 3) and track.masks.shape == (12, H, W)

    proj = Project.open(scene / "project")
    ious = [iou(track.masks[i], proj.mask(int(track.indices[i]))) for i in range(12)]
    assert np.mean(ious) >= 0.93 and min(ious) >= 0.9  # measured: mean 0.956, min 0.942

    gt = GroundTruth.load(scene / "ground_truth")
    body = create_body_model()
    with torch.no_grad():
        truth = project(body.keypoints(body.posed_vertices(gt.body)).numpy(), proj.cameras()[0])  # [N, 23, 2]
    err = np.linalg.norm(track.keypoints[..., :2] - truth[track.indices], axis=-1)  # [N, 23]
    conf = track.keypoints[..., 2]
    small_toes = [KEYPOINT_NAMES.index(n) for n in ("left_small_toe", "right_small_toe")]
    assert np.all(conf[:, small_toes] == 0)
    # The person is ~220 px tall; measured: 3.9 px mean over confident points, 3.4 px shoulders..ankles.
    assert err[conf >= 0.5].mean() < 5.0
    assert err[:, 5:17].mean() < 4.5


def test_no_person_anywhere_is_a_user_error(scene, tmp_path):
    bg = (GroundTruth.load(scene / "ground_truth").background * 255).round().astype(np.uint8)
    _write_mp4(tmp_path / "empty_room.mp4", [bg] * 5)
    with pytest.raises(UserError, match="no person found in any of the 5 frames"):
        _drain(detect_person(FrameReader(tmp_path / "empty_room.mp4")))


def test_a_second_person_is_warned_about(true_frames):
    """Two people side by side: one is tracked (the mask never spills onto the other), with a warning."""
    frames = [Frame(i, i / FPS, np.concatenate([t, true_frames[(i + 6) % 12][:, ::-1]], 1), 0.0)
              for i, t in enumerate(true_frames[:6])]
    events, track = _drain(detect_person(frames, total=6))
    assert any(isinstance(e, Log) and "another person" in e.message for e in events)
    left, right = track.masks[:, :, :W].mean(), track.masks[:, :, W:].mean()
    assert (left > 0.05 and right == 0) or (right > 0.05 and left == 0)


def test_cancel_stops_between_frames(scene):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        _drain(detect_person(FrameReader(scene / "video.mp4"), cancel=token))


def _fake_track(found):
    n = len(found)
    kp = np.zeros((n, 23, 3), np.float32)
    kp[:, :, 0] = np.arange(n)[:, None] * 10.0 + 20
    kp[:, :, 1] = 40.0
    kp[:, :, 2] = 1.0
    soft = np.zeros((n, 80, 160), np.uint8)
    for i in range(n):
        soft[i, 20:60, 10 + 10 * i: 30 + 10 * i] = 255
    kp[~np.asarray(found)] = 0
    soft[~np.asarray(found)] = 0
    return PersonTrack(np.arange(n) * 3, np.arange(n) / 10.0, np.zeros((n, 80, 160, 3), np.uint8), kp, soft,
                       soft > 127)


def test_short_gaps_are_filled_long_gaps_dropped_mostly_missing_fails():
    found = np.array([1, 1, 0, 1, 1, 0, 0, 0, 1, 1], bool)
    track = fill_gaps(_fake_track(found), found, PersonConfig(max_gap=2))
    assert track.num_frames == 7 and track.dropped == [15, 18, 21]  # source frames of positions 5..7
    assert track.interpolated == [2]
    assert track.keypoints[2, 0, 0] == pytest.approx(40.0) and track.keypoints[2, 0, 2] == pytest.approx(0.3)
    assert track.masks[2].any()
    assert len(track.warnings) == 2 and "6" in track.warnings[0] and "15–21" in track.warnings[1]  # runs of chosen frames

    found = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 0], bool)
    with pytest.raises(UserError, match=r"no person found in 7 of the 10 frames \(source frames 3–18, 27\)"):
        fill_gaps(_fake_track(found), found, PersonConfig())


def test_clean_mask_keeps_the_tracked_person_and_fills_small_holes():
    soft = np.zeros((100, 200), np.float32)
    soft[10:90, 10:60] = 0.9  # the tracked person (smaller)
    soft[40:43, 30:33] = 0.0  # a small hole: filled
    soft[5:95, 100:190] = 0.8  # a larger second person, central
    kp = np.array([[35, 20, 0.9], [35, 80, 0.9], [150, 50, 0.1]], np.float32)
    out = clean_mask(soft, 0.5, kp)
    assert out.mask[40:43, 30:33].all() and out.mask[10:90, 10:60].all()
    assert not out.mask[:, 100:].any() and out.other_regions == 1
    no_kp = clean_mask(soft, 0.5)  # no keypoints: the largest, most central region
    assert no_kp.mask[50, 150] and not no_kp.mask[50, 30]


def test_blazepose_mapping():
    lm = np.zeros((33, 3), np.float32)
    lm[:, 0] = np.linspace(0.01, 0.99, 33)
    lm[:, 1] = 0.5
    lm[:, 2] = 0.9
    lm[16, 0] = 1.2  # right wrist outside the image
    kp = blazepose_to_keypoints(lm, 200, 100)
    name = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
    assert kp[name["left_shoulder"], 0] == pytest.approx(lm[11, 0] * 200)
    assert kp[name["left_big_toe"], 0] == pytest.approx(lm[31, 0] * 200)
    assert kp[name["right_heel"], 0] == pytest.approx(lm[30, 0] * 200)
    assert kp[name["right_wrist"], 2] == 0 and kp[name["left_small_toe"], 2] == 0
    assert format_frames([1, 2, 3, 7, 9, 10]) == "1–3, 7, 9–10"
    assert describe_frames(np.array([0, 3, 6, 9, 12]), [1, 2, 4]) == "3–6, 12"
