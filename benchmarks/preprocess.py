"""Preprocessing benchmark: speed on a 10 s 1080p clip, accuracy on synthetic `turn` videos.

    python -m benchmarks.preprocess [--video CLIP] [--seeds 0 1] [--skip-speed] [--skip-accuracy] [--json OUT.json]

Speed: a 10 s 1920x1080 30 fps H.264 clip (made once from a synthetic turning person, upscaled and
padded to 16:9; or `--video` for a clip of your own) → 150 frames at 540 px; seconds per stage
(setup, decode+person, body fit, write project, overlay) and in total.

Accuracy: for each seed, the standard synthetic scene (60 frames, 256 px, turn, shirt) is made,
its video.mp4 preprocessed with the true focal length and compared with the ground truth
(engine/preprocess/accuracy.py): person-mask IoU, 2D keypoint error of the detections and of the
fitted body, MPVPE of the fitted naked body after translation, scale + translation and Procrustes
alignment (camera coordinates).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from benchmarks.common import STANDARD_SCENE, machine
from engine.jobs import run_job
from engine.preprocess.accuracy import preprocess_accuracy
from engine.preprocess.job import STAGES, PreprocessConfig, preprocess_job
from engine.project import Project
from engine.synth.scene import SynthConfig, synth_job

log = logging.getLogger("benchmarks.preprocess")

CLIP_W, CLIP_H, CLIP_FPS, CLIP_SECONDS = 1920, 1080, 30, 10


def make_1080p_clip(work: Path) -> Path:
    """A 10 s 1080p clip of a turning person (cached in `work`)."""
    path = work / "turn_1080p_10s.mp4"
    if path.exists():
        return path
    scene = work / "clip_scene"
    if not (scene / "project" / "project.json").exists():
        run_job(synth_job(SynthConfig(frames=60, size=540, motion="turn", garment="shirt", seed=3), scene,
                          overwrite=True))
    proj = Project.open(scene / "project")
    frames = [np.round(proj.frame(i) * 255).astype(np.uint8) for i in range(proj.num_frames)]
    h, w = frames[0].shape[:2]
    new_w = round(w * CLIP_H / h)
    pad = (CLIP_W - new_w) // 2
    tmp = path.with_suffix(".partial.mp4")
    with av.open(str(tmp), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(CLIP_FPS))
        s.width, s.height, s.pix_fmt = CLIP_W, CLIP_H, "yuv420p"
        s.options = {"crf": "20", "preset": "veryfast"}
        for k in range(CLIP_FPS * CLIP_SECONDS):  # the 60-frame turn, played back and forth
            j = k % (2 * len(frames) - 2)
            f = frames[j if j < len(frames) else 2 * len(frames) - 2 - j]
            big = cv2.resize(f, (new_w, CLIP_H), interpolation=cv2.INTER_CUBIC)
            big = np.pad(big, ((0, 0), (pad, CLIP_W - new_w - pad), (0, 0)), mode="edge")
            for p in s.encode(av.VideoFrame.from_ndarray(big, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    tmp.replace(path)
    return path


def timed_preprocess(video: Path, out: Path, cfg: PreprocessConfig) -> dict:
    """Runs preprocessing; its result holds the seconds per stage."""
    result = run_job(preprocess_job(video, out, cfg))
    log.info("%s → %s: %s", video.name, out, result["seconds"])
    return result


def speed(work: Path, video: Path | None, device: str) -> dict:
    clip = video or make_1080p_clip(work)
    cfg = PreprocessConfig(max_frames=150, size=540, device=device, overwrite=True)
    r = timed_preprocess(clip, work / "speed_project", cfg)
    with av.open(str(clip)) as c:
        st = c.streams.video[0]
        src = f"{st.codec_context.width}x{st.codec_context.height}, {float(c.duration or 0) / 1e6:.1f} s"
    return {"video": str(clip), "source": src, "frames": r["frames"], "seconds": r["seconds"],
            "keypoint_error_px": r["keypoint_error_px"], "mask_iou": r["mask_iou"]}


def accuracy(work: Path, seed: int, device: str) -> dict:
    scene_cfg = dataclasses.replace(STANDARD_SCENE, seed=seed, pose_noise=0.0)
    scene = work / f"turn_seed{seed}"
    if not (scene / "project" / "project.json").exists():
        run_job(synth_job(scene_cfg, scene, overwrite=True))
    focal = json.loads((scene / "ground_truth" / "scene.json").read_text())["camera"]["K"][0][0]
    out = work / f"turn_seed{seed}_preprocessed"
    r = timed_preprocess(scene / "video.mp4", out, PreprocessConfig(focal=focal, device=device, overwrite=True))
    acc = preprocess_accuracy(out, scene)
    acc.pop("mpvpe_cm_per_frame")
    return {"seed": seed, "frames": r["frames"], "seconds": r["seconds"]["total"],
            "fit_mask_iou": r["mask_iou"], **acc}


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, help="time this clip instead of the generated 1080p one")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="synthetic scenes for accuracy (default 0)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default="out/bench_preprocess", help="scratch folder")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine(), "device": args.device}
    lines = []
    if not args.skip_speed:
        sp = result["speed"] = speed(work, args.video, args.device)
        cols = ["setup", *STAGES, "total"]
        lines += [f"speed: {sp['source']} → {sp['frames']} frames at 540 px (seconds)",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
                  "| " + " | ".join(_fmt(sp["seconds"].get(c, "–")) for c in cols) + " |", ""]
    if not args.skip_accuracy:
        rows = result["accuracy"] = [accuracy(work, s, args.device) for s in args.seeds]
        cols = ["seed", "frames", "mask_iou", "keypoint_error_px", "fit_keypoint_error_px", "fit_mask_iou",
                "mpvpe_cm", "mpvpe_scale_cm", "mpvpe_procrustes_cm", "seconds"]
        lines += ["accuracy: synthetic turn, 60 frames, 192x256, true focal length",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    log.info("\n%s\nmachine: %s", "\n".join(lines), result["machine"])
    log.info("%s", json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
