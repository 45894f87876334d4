"""Headless command line: `python main.py <command> ...` (same engine calls as the GUI)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from engine.errors import UserError
from engine.jobs.events import Cancelled, CancelToken, Done, Event, Log, Progress

log = logging.getLogger("avatar")


def drive(events: Iterator[Event], quiet: bool = False) -> object:
    """Runs a job with one terminal progress bar per stage; returns its result."""
    from tqdm import tqdm

    bar, stage, result = None, None, None
    try:
        for ev in events:
            if isinstance(ev, Progress):
                if ev.stage != stage or bar is None:
                    if bar is not None:
                        bar.close()
                    stage = ev.stage
                    bar = tqdm(total=ev.total, desc=ev.stage, unit="step", disable=quiet, file=sys.stderr,
                               dynamic_ncols=True)
                bar.n = ev.done
                bar.refresh()
            elif isinstance(ev, Log):
                (tqdm.write if bar is not None else log.info)(ev.message) if ev.level == "info" else log.warning(ev.message)
            elif isinstance(ev, Done):
                result = ev.result
    finally:
        if bar is not None:
            bar.close()
    return result


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return v


def _cmd_synth(args: argparse.Namespace) -> int:
    from engine.synth.scene import SynthConfig, synth_job

    cfg = SynthConfig(frames=args.frames, size=args.size, motion=args.motion, garment=args.garment,
                      seed=args.seed, pose_noise=args.pose_noise, fps=args.fps)
    out = drive(synth_job(cfg, args.out_dir, overwrite=args.overwrite, cancel=args.cancel), args.quiet)
    log.info("project: %s", Path(out) / "project")
    return 0


def _write_json(path: str, obj) -> None:
    from engine.project.atomic import write_json

    p = Path(path).expanduser()
    if not p.parent.is_dir():
        raise UserError(f"cannot write {p}: folder {p.parent} does not exist.")
    try:
        write_json(p, obj)
    except PermissionError:
        raise UserError(f"cannot write {p} (permission denied).") from None


def _format_metrics(metrics: dict) -> str:
    return "\n".join(f"  {k:<20} {v:10.4f}" for k, v in metrics.items())


def _cmd_eval(args: argparse.Namespace) -> int:
    from engine.evaluation import EvalConfig, evaluate_job

    report = drive(evaluate_job(args.project, EvalConfig(body_model_dir=args.body_model_dir), cancel=args.cancel),
                   args.quiet)
    log.info("%s on %d held-out frames:\n%s", report["method"], len(report["frames"]), _format_metrics(report["metrics"]))
    if args.json:
        _write_json(args.json, report)
        log.info("report written to %s", args.json)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from engine.evaluation import evaluate_job
    from engine.synth.scene import SynthConfig, synth_job

    out = Path(args.out_dir)
    log.info("Demo: generating a synthetic clothed person (%d frames) into %s", args.frames, out)
    cfg = SynthConfig(frames=args.frames, size=256, motion="turn", garment="shirt", seed=0, pose_noise=3.0)
    drive(synth_job(cfg, out, overwrite=True, cancel=args.cancel), args.quiet)
    report = drive(evaluate_job(out / "project", cancel=args.cancel), args.quiet)
    _write_json(str(out / "eval_body_only.json"), report)
    log.info("Body-only baseline on held-out frames:\n%s", _format_metrics(report["metrics"]))
    log.info("Done. Outputs in %s:\n  video.mp4  project/  ground_truth/  eval_body_only.json", out.resolve())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py", description="Video to 3D avatar: headless commands. "
                                "Run without a command to open the desktop app.")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("synth", help="generate a synthetic scene with exact ground truth",
                       description="Render a clothed, textured body moving in front of a static background, "
                       "with ground truth (masks, cameras, body, clothed meshes) and a project folder.")
    s.add_argument("out_dir", metavar="OUT_DIR", help="output folder (must not exist unless --overwrite)")
    s.add_argument("--frames", type=_positive_int, default=30, help="number of frames (default 30)")
    s.add_argument("--size", type=_positive_int, default=256, help="long side in pixels (default 256)")
    s.add_argument("--motion", choices=("turn", "walk"), default="turn", help="motion (default turn)")
    s.add_argument("--garment", choices=("none", "shirt", "dress"), default="shirt", help="clothing (default shirt)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--pose-noise", type=_nonneg_float, default=0.0, metavar="DEG",
                   help="degrees of noise on the stored body pose (default 0)")
    s.add_argument("--fps", type=_nonneg_float, default=25.0, help="video frame rate (default 25)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.set_defaults(func=_cmd_synth)

    e = sub.add_parser("eval", help="score a project on its held-out frames",
                       description="Evaluate what the project holds (the body-only baseline until an avatar "
                       "is fitted): psnr, ssim, m_psnr, m_ssim, iou and, with ground truth, chamfer_cm, "
                       "normal_consistency, fscore_1cm, fscore_2cm, mpvpe_cm.")
    e.add_argument("project", metavar="PROJECT_DIR")
    e.add_argument("--json", metavar="OUT.json", help="write the full report here")
    e.add_argument("--body-model-dir", metavar="DIR", help="SMPL/SMPL-X model folder (for such projects)")
    e.set_defaults(func=_cmd_eval)

    d = sub.add_parser("demo", help="headless demo: synthesise a scene and score the body-only baseline",
                       description="Generate a small synthetic scene and evaluate the body-only baseline.")
    d.add_argument("--out-dir", default="demo_output", help="where to write (default ./demo_output, replaced)")
    d.add_argument("--frames", type=_positive_int, default=20, help="number of frames (default 20)")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    args.cancel = CancelToken()
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        log.error("error: %s", e)
        return 2
    except (KeyboardInterrupt, Cancelled):
        args.cancel.cancel()
        log.error("cancelled; nothing already saved was changed.")
        return 130
