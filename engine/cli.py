"""Headless command line: `python main.py <command> ...` (same engine calls as the GUI).

Options with a fixed set of values take it from the engine's declaration (a `Literal` field or alias, read
with `engine.settings.choices`), so the CLI, the app and `validate()` cannot disagree. A command's
options are built only for the command being run: some declarations live in modules that load torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from engine.errors import UserError
from engine.jobs.events import Cancelled, CancelToken, Done, Event, Log, Losses, Progress

log = logging.getLogger("avatar")

PLAIN_PROGRESS_EVERY_S = 5.0  # a log file or pipe gets a progress line at most this often per stage


def drive(events: Iterator[Event], quiet: bool = False, terminal: bool | None = None) -> object:
    """Runs a job, showing its progress; returns its result.

    On a terminal, one progress bar per stage. Otherwise (a log file, a pipe) a plain line per stage at most
    every PLAIN_PROGRESS_EVERY_S and at the stage's end: a bar's carriage-return updates would fill the file.
    """
    if terminal is None:
        terminal = sys.stderr.isatty()
    if not terminal:
        return _drive_plain(events, quiet)
    from tqdm import tqdm

    bar, stage, result = None, None, None
    try:
        for ev in events:
            if isinstance(ev, Progress):
                if ev.stage != stage or bar is None:
                    if bar is not None:
                        bar.close()
                    stage = ev.stage
                    bar = tqdm(total=ev.total or None, desc=ev.stage, unit="step", disable=quiet, file=sys.stderr,
                               dynamic_ncols=True)
                bar.n = ev.done
                bar.refresh()
            elif isinstance(ev, Losses) and bar is not None:
                bar.set_postfix(loss=f"{ev.values['total']:.4f}", psnr=f"{ev.values['psnr_batch']:.1f}", refresh=False)
            elif isinstance(ev, Log):
                (tqdm.write if bar is not None else log.info)(ev.message) if ev.level == "info" else log.warning(ev.message)
            elif isinstance(ev, Done):
                result = ev.result
    finally:
        if bar is not None:
            bar.close()
    return result


class PlainProgress:
    """Progress as plain lines (`stage: done/total (p %), t s, loss …`): one when `every` seconds have passed
    since the stage's last line, one when the stage reaches its total, and one at `close()` (the stage ends)
    unless the last line already showed where it stopped."""

    def __init__(self, write: Callable[[str], None], every: float = PLAIN_PROGRESS_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write, self.every, self.clock = write, every, clock
        self.stage: str | None = None
        self.done = self.total = 0
        self.start = self.last = 0.0
        self.shown: tuple[int, int] | None = None  # (done, total) of the last line
        self.postfix = ""

    def update(self, ev: Progress) -> None:
        now = self.clock()
        if ev.stage != self.stage:
            self.close()
            self.stage, self.start, self.last, self.shown, self.postfix = ev.stage, now, now, None, ""
        self.done, self.total = ev.done, ev.total
        finished = bool(self.total) and self.done >= self.total
        if (now - self.last >= self.every or finished) and self.shown != (self.done, self.total):
            self._line(now)

    def losses(self, values: dict) -> None:
        self.postfix = f", loss {values['total']:.4f}, psnr {values['psnr_batch']:.1f}"

    def close(self) -> None:
        if self.stage is not None and self.shown != (self.done, self.total):
            self._line(self.clock())

    def _line(self, now: float) -> None:
        of = f"/{self.total} ({100 * self.done / self.total:.0f} %)" if self.total else ""
        self.write(f"{self.stage}: {self.done}{of}, {now - self.start:.0f} s{self.postfix}")
        self.last, self.shown = now, (self.done, self.total)


def _drive_plain(events: Iterator[Event], quiet: bool) -> object:
    progress = PlainProgress(log.info)
    result = None
    try:
        for ev in events:
            if isinstance(ev, Progress):
                if not quiet:
                    progress.update(ev)
            elif isinstance(ev, Losses):
                progress.losses(ev.values)
            elif isinstance(ev, Log):
                (log.info if ev.level == "info" else log.warning)(ev.message)
            elif isinstance(ev, Done):
                result = ev.result
    finally:
        if not quiet:
            progress.close()
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


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from engine.preprocess.job import (
        OVERLAY_SHEET,
        OVERLAY_VIDEO,
        REPORT_FILE,
        PreprocessConfig,
        preprocess_job,
    )

    cfg = PreprocessConfig(start=args.start, end=args.end, max_frames=args.max_frames, size=args.size,
                           focal=args.focal, body=args.body, body_model_dir=args.body_model_dir, device=args.device,
                           overwrite=args.overwrite)
    r = drive(preprocess_job(args.video, args.target, cfg, cancel=args.cancel), args.quiet)
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in r["seconds"].items() if k != "total")
    log.info("project: %s (%d frames; %.0f s: %s)", r["project"], r["frames"], r["seconds"]["total"], stages)
    log.info("fit quality: keypoint error %s px, body/mask IoU %s (per frame in %s); look at %s and %s",
             r["keypoint_error_px"], r["mask_iou"], REPORT_FILE, OVERLAY_SHEET, OVERLAY_VIDEO)
    if r["warnings"]:
        log.warning("%d warning(s); they are kept in %s", len(r["warnings"]), REPORT_FILE)
    return 0


def _write_json(path: str, obj) -> None:
    from engine.io.atomic import write_json

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

    cfg = EvalConfig(body_model_dir=args.body_model_dir, method=args.method, textured=not args.no_textured,
                     device=args.device)
    report = drive(evaluate_job(args.project, cfg, cancel=args.cancel), args.quiet)
    log.info("%s on %d held-out frames:\n%s", report["method"], len(report["frames"]), _format_metrics(report["metrics"]))
    if "textured" in report:
        log.info("textured mesh:\n%s", _format_metrics(report["textured"]))
    if args.json:
        _write_json(args.json, report)
        log.info("report written to %s", args.json)
    return 0


def _cmd_bake(args: argparse.Namespace) -> int:
    from engine.texture import BakeConfig, bake_job

    cfg = BakeConfig(size=args.size, resolution=args.resolution, source=args.source, register=not args.no_register)
    r = drive(bake_job(args.project, cfg, device=args.device, body_model_dir=args.body_model_dir, cancel=args.cancel),
              args.quiet)
    log.info("baked a %d² texture from %d frames of the %s in %.1f s: %s", r["size"], len(r["frames"]),
             "source video" if r["source"] == "video" else "working frames", r["seconds"]["total"], r["texture"])
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from engine.refine.config import load_preset
    from engine.refine.loop import FitBudget, fit_job

    cfg = load_preset(args.preset, lr=args.lr, rays=args.rays, fine_samples=args.samples,
                      incremental=args.incremental, time_consistency=args.time_consistency, seed=args.seed,
                      w_silhouette=args.w_silhouette, w_normal_smooth=args.w_normal_smooth, w_detail=args.w_detail,
                      **_encoder_overrides(args))
    if args.iters is None and args.minutes is None:
        args.iters = 1000
    budget = FitBudget(iters=args.iters, minutes=args.minutes, checkpoint_every=args.checkpoint_every,
                       preview_every=0)
    if args.mode != "refine" and args.prior is None:
        raise UserError("--mode inference needs --prior DIR.")
    prior = _prior_arg(args.prior)
    result = drive(fit_job(args.project, cfg, budget, args.device, args.body_model_dir, cancel=args.cancel,
                           prior=prior, prior_mode=args.mode), args.quiet)
    log.info("fitted to step %d (%.0f s this run); checkpoint in %s/checkpoints/", result["step"],
             result["seconds"], args.project)
    return 0


def _encoder_overrides(args: argparse.Namespace) -> dict:
    return {"geometry_encoder": args.geometry_encoder, "morph_loss": args.morph_loss, "w_morph": args.w_morph,
            "morph_factor": args.morph_factor}


def _prior_arg(value: str | None) -> str | None:
    """`--prior shipped` is the prior that comes with the app (resources/prior)."""
    from engine.refine.prior_file import SHIPPED_PRIOR

    return str(SHIPPED_PRIOR) if value == "shipped" else value


def _cmd_prior_train(args: argparse.Namespace) -> int:
    import os
    import signal

    from engine.prior.train import PriorConfig, prior_train_job

    def stop(signum, frame):  # torchrun stops the other processes with SIGTERM when one fails
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    rank = int(os.environ.get("RANK", "0"))
    if rank:
        logging.getLogger().handlers[0].setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
    cfg = PriorConfig(rounds=args.rounds, visit_steps=args.visit_steps, visit_seconds=args.visit_seconds or 0.0,
                      eval_every=args.eval_every, preset=args.preset, seed=args.seed, shares=args.shares,
                      **{k: v for k, v in _encoder_overrides(args).items() if v is not None})
    r = drive(prior_train_job(args.projects, args.out, cfg, device=args.device, body_model_dir=args.body_model_dir,
                              restart=args.restart, cancel=args.cancel), args.quiet or rank > 0)
    if rank == 0:
        log.info("prior: %s/prior.pt (%d steps in %.0f s on %d process(es), %.2f steps/s per process)",
                 r["prior"], r["steps"], r["seconds"], r["world"], r["steps_per_s"])
    return 0


def _cmd_prior_synth(args: argparse.Namespace) -> int:
    from engine.prior.dataset import SynthSetConfig, synth_set_job

    cfg = SynthSetConfig(scenes=args.scenes, frames=args.frames, size=args.size, first_seed=args.first_seed)
    r = drive(synth_set_job(cfg, args.out_dir, overwrite=args.overwrite, cancel=args.cancel), args.quiet)
    log.info("%d projects:\n  %s", len(r["projects"]), "\n  ".join(r["projects"]))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from engine.export import EXPORT_FORMATS, ExportConfig, export_job

    if args.rigged:
        return _export_rigged(args)
    rig_only = [o for o, v in (("--rest", args.rest), ("--no-animation", args.no_animation), ("--fps", args.fps))
                if v not in (None, False)]
    if rig_only:
        raise UserError(f"{rig_only[0]} is an option of the rigged export: add --rigged.")
    if (args.out is None) == (args.sequence is None):
        raise UserError(f"give either an output file ({', '.join('OUT.' + f for f in EXPORT_FORMATS)}) or --sequence DIR.")
    if args.sequence is not None and (args.frame is not None or args.canonical):
        raise UserError("--sequence writes every frame posed; leave out --frame and --canonical.")
    if args.canonical and args.frame is not None:
        raise UserError("--canonical is the unposed star pose and --frame K the pose of frame K: give one of them.")
    cfg = ExportConfig(resolution=args.resolution, faces=args.faces, frame=args.frame, up=args.up, texture=args.texture)
    target = args.sequence if args.sequence else args.out
    result = drive(export_job(args.project, target, cfg, sequence=args.sequence is not None, fmt=args.format,
                              overwrite=args.overwrite, device=args.device, body_model_dir=args.body_model_dir,
                              cancel=args.cancel), args.quiet)
    log.info("wrote %d file(s), %d triangles each: %s", len(result["files"]), result["faces"],
             result["files"][0] if len(result["files"]) == 1 else Path(result["files"][0]).parent)
    return 0


def _export_rigged(args: argparse.Namespace) -> int:
    from engine.export import RigConfig, rigged_job

    if args.out is None or args.sequence is not None:
        raise UserError("--rigged writes one file: give OUT.glb (the motion is its animation; no --sequence).")
    clash = [o for o, v in (("--frame", args.frame), ("--canonical", args.canonical), ("--faces", args.faces))
             if v not in (None, False)]
    if clash:
        raise UserError(f"{clash[0]} does not apply to --rigged (the mesh is in its bind pose, --rest; its frames "
                        "are the animation).")
    if args.up != "y":
        raise UserError("--rigged writes glTF, which is Y-up by definition (importers convert): leave out --up.")
    cfg = RigConfig(resolution=args.resolution, texture=args.texture, rest=args.rest or "canonical",
                    animation=not args.no_animation, fps=args.fps)
    r = drive(rigged_job(args.project, args.out, cfg, overwrite=args.overwrite, device=args.device,
                         body_model_dir=args.body_model_dir, cancel=args.cancel), args.quiet)
    motion = f"{r['frames']} frames at {r['fps']:g} fps" if r["frames"] else "no animation"
    log.info("wrote %s: %d bones, %d triangles, %s, %s", r["files"][0], r["bones"], r["faces"],
             f"{r['texture']} px texture" if r["texture"] else "vertex colours", motion)
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from engine.export import RigConfig
    from engine.preview import PreviewConfig, preview_job

    rig = RigConfig(resolution=args.resolution, texture=args.texture, rest=args.rest)
    cfg = PreviewConfig(mode="turntable" if args.turntable else "motion", size=args.size, fps=args.fps,
                        turn_frames=args.turn_frames, rig=rig)
    r = drive(preview_job(args.project, args.video, cfg, overwrite=args.overwrite, device=args.device,
                          body_model_dir=args.body_model_dir, cancel=args.cancel), args.quiet)
    log.info("wrote %s: %s, %d frames at %g fps", r["files"][0], r["mode"], r["frames"], r["fps"])
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from engine.evaluation import EvalConfig, evaluate_job
    from engine.export import ExportConfig, export_job
    from engine.refine.config import load_preset
    from engine.refine.loop import FitBudget, fit_job
    from engine.synth.scene import SynthConfig, synth_job

    out = Path(args.out_dir)
    log.info("Demo: generating a synthetic clothed person (%d frames) into %s", args.frames, out)
    cfg = SynthConfig(frames=args.frames, size=256, motion="turn", garment="shirt", seed=0, pose_noise=0.0)
    drive(synth_job(cfg, out, overwrite=True, cancel=args.cancel), args.quiet)
    project = out / "project"
    base = drive(evaluate_job(project, EvalConfig(method="body_only"), cancel=args.cancel), args.quiet)
    _write_json(str(out / "eval_body_only.json"), base)
    log.info("Fitting the avatar (fast preset, %d steps)...", args.iters)
    drive(fit_job(project, load_preset("fast"), FitBudget(iters=args.iters, preview_every=0), cancel=args.cancel),
          args.quiet)
    report = drive(evaluate_job(project, EvalConfig(mesh_samples=20_000), cancel=args.cancel), args.quiet)
    _write_json(str(out / "eval_avatar.json"), report)
    drive(export_job(project, out / "avatar.obj", ExportConfig(resolution=192), overwrite=True, cancel=args.cancel),
          args.quiet)
    rows = "\n".join(f"  {k:<20} {base['metrics'][k]:10.4f} {report['metrics'][k]:10.4f}" for k in report["metrics"])
    log.info("Held-out frames:            body-only     avatar\n%s", rows)
    log.info("Done. Outputs in %s:\n  video.mp4  project/  ground_truth/  avatar.obj  eval_body_only.json  "
             "eval_avatar.json", out.resolve())
    return 0


def _doc(cls: type, name: str) -> str:
    """A config field's doc as argparse help (which formats % itself)."""
    from engine.settings import field_docs

    doc = field_docs(cls)[name].rstrip(".").replace("%", "%%")
    return doc[0].lower() + doc[1:] if doc[1:2].islower() else doc  # help reads as a phrase, like the others


def _add_encoder_args(p: argparse.ArgumentParser) -> None:
    from engine.refine.config import RefineConfig
    from engine.settings import choices

    p.add_argument("--geometry-encoder", action="store_true", default=None,
                   help="seed thesis option: a small U-Net's pixel-aligned features displace canonical points")
    p.add_argument("--morph-loss", choices=choices(RefineConfig, "morph_loss"), help=_doc(RefineConfig, "morph_loss"))
    p.add_argument("--w-morph", type=_nonneg_float, help="weight of the morphing loss (default 0.01)")
    p.add_argument("--morph-factor", type=_nonneg_float, help="morphing factor μ in [0, 1] (default 0.5)")


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    from engine.settings import Device, choices

    p.add_argument("--device", choices=choices(Device), default="cpu", help="compute device (default cpu)")


def _add_project_arg(p: argparse.ArgumentParser, nargs: str | None = None, help: str | None = None) -> None:
    """An existing project: `args.project` (or `args.projects`), resolved in `main` (a `synth` scene folder
    stands for its project)."""
    p.add_argument("projects" if nargs else "project", metavar="PROJECT_DIR", nargs=nargs,
                   help=help or "a project folder (or a folder made by `synth`: its project/ is used)")


def _synth_args(s: argparse.ArgumentParser) -> None:
    from engine.synth.garments import GARMENTS
    from engine.synth.motion import MOTIONS
    from engine.synth.scene import SynthConfig

    s.add_argument("out_dir", metavar="OUT_DIR", help="output folder (must not exist unless --overwrite)")
    s.add_argument("--frames", type=_positive_int, default=30, help="number of frames (default 30)")
    s.add_argument("--size", type=_positive_int, default=256, help="long side in pixels (default 256)")
    s.add_argument("--motion", choices=MOTIONS, default="turn", help=_doc(SynthConfig, "motion") + "; default turn")
    s.add_argument("--garment", choices=GARMENTS, default="shirt",
                   help=_doc(SynthConfig, "garment") + "; default shirt")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--pose-noise", type=_nonneg_float, default=0.0, metavar="DEG",
                   help="degrees of noise on the stored body pose (default 0)")
    s.add_argument("--fps", type=_nonneg_float, default=25.0, help="video frame rate (default 25)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _preprocess_args(pp: argparse.ArgumentParser) -> None:
    from engine.preprocess.job import PreprocessConfig
    from engine.settings import choices

    pp.add_argument("video", metavar="VIDEO", help="video file (mp4, mov, avi, mkv, webm, ...) or a folder of images")
    pp.add_argument("target", metavar="PROJECT_DIR", help="project folder to create (must not exist unless --overwrite)")
    pp.add_argument("--start", type=_nonneg_float, default=0.0, metavar="S", help="first second to use (default 0)")
    pp.add_argument("--end", type=_nonneg_float, metavar="S", help="second where the used part ends (default: the end)")
    pp.add_argument("--max-frames", type=_positive_int, default=150, metavar="N",
                    help="frames to take, spread evenly (default 150)")
    pp.add_argument("--size", type=_positive_int, default=540, metavar="PX",
                    help="long side of the working resolution (default 540; never upscaled)")
    pp.add_argument("--focal", type=_nonneg_float, metavar="PX",
                    help="focal length in pixels of the full-size video (default max(width, height))")
    pp.add_argument("--body", choices=choices(PreprocessConfig, "body"), default="anny",
                    help=_doc(PreprocessConfig, "body") + "; default anny")
    pp.add_argument("--body-model-dir", metavar="DIR", help="folder with SMPL_NEUTRAL.pkl / SMPLX_NEUTRAL.npz")
    pp.add_argument("--device", choices=choices(PreprocessConfig, "device"), default="cpu",
                    help="body-fit device (default cpu)")
    pp.add_argument("--overwrite", action="store_true",
                    help="replace an existing project folder (only once the new one is complete)")


def _eval_args(e: argparse.ArgumentParser) -> None:
    from engine.evaluation import EvalConfig
    from engine.settings import choices

    _add_project_arg(e)
    e.add_argument("--json", metavar="OUT.json", help="write the full report here")
    e.add_argument("--method", choices=choices(EvalConfig, "method"), default="auto",
                   help=_doc(EvalConfig, "method") + "; default auto")
    e.add_argument("--no-textured", action="store_true",
                   help="score only the neural render (by default the textured mesh too, baking a texture if needed)")
    e.add_argument("--body-model-dir", metavar="DIR", help="SMPL/SMPL-X model folder (for such projects)")
    _add_device_arg(e)


def _bake_args(b: argparse.ArgumentParser) -> None:
    from engine.mesh.uv import TEXTURE_DEFAULT
    from engine.settings import choices
    from engine.texture import BakeConfig

    _add_project_arg(b)
    b.add_argument("--size", type=int, default=TEXTURE_DEFAULT, help=_doc(BakeConfig, "size") + f"; default {TEXTURE_DEFAULT}")
    b.add_argument("--resolution", type=_positive_int, default=256, help="marching-cubes resolution (default 256)")
    b.add_argument("--source", choices=choices(BakeConfig, "source"), default="auto", help=_doc(BakeConfig, "source"))
    b.add_argument("--no-register", action="store_true", help="blend the frames as posed, without aligning them first")
    _add_device_arg(b)
    b.add_argument("--body-model-dir", metavar="DIR", help="SMPL/SMPL-X model folder (for such projects)")


def _fit_args(f: argparse.ArgumentParser) -> None:
    from engine.refine.config import PriorMode, RefineConfig
    from engine.settings import choices

    _add_project_arg(f)
    f.add_argument("--preset", choices=choices(RefineConfig, "preset"), default="fast",
                   help="method preset (default fast)")
    f.add_argument("--iters", type=_positive_int, help="stop at this total step count (default 1000)")
    f.add_argument("--minutes", type=_nonneg_float, help="stop after this many minutes in this run")
    _add_device_arg(f)
    f.add_argument("--lr", type=_nonneg_float, help="learning rate of the fields (preset default)")
    f.add_argument("--rays", type=_positive_int, help="rays per step (preset default)")
    f.add_argument("--samples", type=_positive_int, help="rendered samples per ray (preset default)")
    f.add_argument("--incremental", choices=choices(RefineConfig, "incremental"),
                   help=_doc(RefineConfig, "incremental"))
    f.add_argument("--time-consistency", choices=choices(RefineConfig, "time_consistency"),
                   help=_doc(RefineConfig, "time_consistency"))
    f.add_argument("--seed", type=int, help="random seed")
    for name in ("w_silhouette", "w_normal_smooth", "w_detail"):
        f.add_argument("--" + name.replace("_", "-"), type=_nonneg_float, metavar="W",
                       help=_doc(RefineConfig, name) + " (preset default; 0: off)")
    f.add_argument("--checkpoint-every", type=_positive_int, default=50, help="steps between checkpoints (default 50)")
    f.add_argument("--body-model-dir", metavar="DIR", help="SMPL/SMPL-X model folder (for such projects)")
    _add_encoder_args(f)
    f.add_argument("--prior", metavar="PRIOR_DIR",
                   help="start a new fit from a prior made by `prior train` (`shipped`: the one in resources/prior)")
    f.add_argument("--mode", choices=choices(PriorMode), default="refine",
                   help="with --prior: refine everything (default), or inference: keep the prior's shared fields "
                   "fixed and fit only this video's code, colour, background, density and body")


def _prior_train_args(t: argparse.ArgumentParser) -> None:
    from engine.prior.train import PriorConfig
    from engine.settings import choices

    _add_project_arg(t, nargs="+", help="preprocessed or synthetic projects (a folder made by `synth`: its project/)")
    t.add_argument("--out", required=True, metavar="PRIOR_DIR", help="where the prior and its training state go")
    t.add_argument("--rounds", type=_positive_int, default=20, help="rounds over all videos (default 20)")
    t.add_argument("--visit-steps", type=_positive_int, default=100, help="steps per visit of a video (default 100)")
    t.add_argument("--visit-seconds", type=_nonneg_float, help="seconds per visit instead of steps")
    t.add_argument("--eval-every", type=int, default=1, help="rounds between held-out scores (default 1; 0: never)")
    t.add_argument("--preset", choices=choices(PriorConfig, "preset"), default="fast",
                   help="fields and losses (default fast)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--shares", choices=choices(PriorConfig, "shares"), default="geometry",
                   help=_doc(PriorConfig, "shares") + "; default geometry")
    _add_device_arg(t)
    t.add_argument("--body-model-dir", metavar="DIR", help="SMPL/SMPL-X model folder (for such projects)")
    _add_encoder_args(t)
    t.add_argument("--restart", action="store_true", help="discard the saved training state in PRIOR_DIR and start over")


def _prior_synth_args(sy: argparse.ArgumentParser) -> None:
    sy.add_argument("out_dir", metavar="OUT_DIR")
    sy.add_argument("--scenes", type=_positive_int, default=6, help="number of scenes (default 6)")
    sy.add_argument("--frames", type=_positive_int, default=30, help="frames per scene (default 30)")
    sy.add_argument("--size", type=_positive_int, default=256, help="long side in pixels (default 256)")
    sy.add_argument("--first-seed", type=int, default=100, help="seed of the first scene (default 100)")
    sy.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _export_args(x: argparse.ArgumentParser) -> None:
    from engine.export import EXPORT_FORMATS, ExportConfig, RigConfig
    from engine.mesh.uv import TEXTURE_DEFAULT, TEXTURE_MAX, TEXTURE_MIN
    from engine.settings import choices

    kinds = EXPORT_FORMATS
    _add_project_arg(x)
    x.add_argument("out", metavar="|".join(f"OUT.{f}" for f in kinds), nargs="?",
                   help="output file (.glb is always textured)")
    x.add_argument("--sequence", metavar="DIR", help="write every frame, posed, into DIR instead")
    x.add_argument("--format", choices=kinds, default="obj", help="file format for --sequence (default obj)")
    x.add_argument("--texture", type=int, nargs="?", const=TEXTURE_DEFAULT, metavar="SIZE",
                   help=f"bake a SIZE×SIZE UV texture from the video ({TEXTURE_MIN}–{TEXTURE_MAX}, default "
                   f"{TEXTURE_DEFAULT}) and write OBJ + MTL + PNG or .glb; reuses the project's bake when it is current")
    x.add_argument("--frame", type=int, help="pose the mesh into this frame (default: canonical)")
    x.add_argument("--canonical", action="store_true",
                   help="the canonical star pose, unposed: what export writes without --frame (which it excludes)")
    x.add_argument("--resolution", type=_positive_int, default=256, help="marching-cubes resolution (default 256)")
    x.add_argument("--faces", type=_positive_int, help="decimate to at most this many triangles")
    x.add_argument("--up", choices=choices(ExportConfig, "up"), default="y", help=_doc(ExportConfig, "up") + "; default y")
    x.add_argument("--rigged", action="store_true",
                   help="write OUT.glb rigged: the body's skeleton, skin weights, the texture (the project's bake; "
                   "vertex colours without one) and the video's motion as an animation")
    x.add_argument("--rest", choices=choices(RigConfig, "rest"), help=_doc(RigConfig, "rest") + "; default canonical")
    x.add_argument("--no-animation", action="store_true", help="with --rigged: the rig without the video's motion")
    x.add_argument("--fps", type=_nonneg_float, help="with --rigged: " + _doc(RigConfig, "fps"))
    x.add_argument("--overwrite", action="store_true", help="replace existing files")
    _add_device_arg(x)
    x.add_argument("--body-model-dir", metavar="DIR", help="SMPL/SMPL-X model folder (for such projects)")


def _render_args(r: argparse.ArgumentParser) -> None:
    from engine.export import RigConfig
    from engine.mesh.uv import TEXTURE_MAX, TEXTURE_MIN
    from engine.preview import PreviewConfig
    from engine.settings import choices

    _add_project_arg(r)
    r.add_argument("--video", required=True, metavar="OUT.mp4", help="the video to write")
    r.add_argument("--turntable", action="store_true", help="one turn around the avatar in its bind pose instead of "
                   "the motion")
    r.add_argument("--size", type=_positive_int, default=512, help=_doc(PreviewConfig, "size") + "; default 512")
    r.add_argument("--fps", type=_nonneg_float, help=_doc(PreviewConfig, "fps"))
    r.add_argument("--turn-frames", type=_positive_int, default=72, help=_doc(PreviewConfig, "turn_frames") +
                   "; default 72")
    r.add_argument("--rest", choices=choices(RigConfig, "rest"), default="canonical",
                   help=_doc(RigConfig, "rest") + "; default canonical")
    r.add_argument("--texture", type=int, metavar="SIZE",
                   help=f"bake a SIZE×SIZE texture ({TEXTURE_MIN}–{TEXTURE_MAX}) when the project has none of this "
                   "checkpoint (default: the project's bake, else vertex colours)")
    r.add_argument("--resolution", type=_positive_int, default=256, help="marching-cubes resolution (default 256)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing video")
    _add_device_arg(r)
    r.add_argument("--body-model-dir", metavar="DIR", help="SMPL/SMPL-X model folder (for such projects)")


def _demo_args(d: argparse.ArgumentParser) -> None:
    d.add_argument("--out-dir", default="demo_output", help="where to write (default ./demo_output, replaced)")
    d.add_argument("--frames", type=_positive_int, default=20, help="number of frames (default 20)")
    d.add_argument("--iters", type=_positive_int, default=300, help="refinement steps (default 300)")


def build_parser(commands: Collection[str | None] | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `commands`, only those commands get their options (the others stay
    listed), so running one command does not import what the others' options are declared in."""

    def options(name: str, add: Callable[[argparse.ArgumentParser], None], parser: argparse.ArgumentParser) -> None:
        if commands is None or name in commands:
            add(parser)

    p = argparse.ArgumentParser(prog="main.py", description="Video to 3D avatar: headless commands. "
                                "Run without a command to open the desktop app.")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("synth", help="generate a synthetic scene with exact ground truth",
                       description="Render a clothed, textured body moving in front of a static background, "
                       "with ground truth (masks, cameras, body, clothed meshes) and a project folder (OUT_DIR/project; "
                       "commands that take a PROJECT_DIR accept OUT_DIR too).")
    options("synth", _synth_args, s)
    s.set_defaults(func=_cmd_synth)

    pp = sub.add_parser("preprocess", help="turn a video of one person into a project (frames, masks, keypoints, body)",
                        description="Pick frames from a video (or a folder of images) of one person, find the person "
                        "(mask + 2D keypoints, mediapipe), fit a body model (shared shape, per-frame pose) for a static "
                        "camera, and write a project folder that `fit` accepts, plus overlay.mp4 / overlay_sheet.png "
                        "(the fitted body over the frames) and preprocess_report.json (per-frame fit quality).",
                        epilog="Example: main.py preprocess clip.mov myproject --max-frames 150 --size 540")
    options("preprocess", _preprocess_args, pp)
    pp.set_defaults(func=_cmd_preprocess)

    e = sub.add_parser("eval", help="score a project on its held-out frames",
                       description="Evaluate what the project holds (the body-only baseline until an avatar "
                       "is fitted): psnr, ssim, m_psnr, m_ssim, iou and, with ground truth, chamfer_cm, "
                       "normal_consistency, fscore_1cm, fscore_2cm, mpvpe_cm.")
    options("eval", _eval_args, e)
    e.set_defaults(func=_cmd_eval)

    f = sub.add_parser("fit", help="fit (or resume) the avatar of a project",
                       description="Self-supervised refinement of a clothed avatar from the project's frames. "
                       "Resumes from the project's checkpoint when there is one.")
    options("fit", _fit_args, f)
    f.set_defaults(func=_cmd_fit)

    pr = sub.add_parser("prior", help="learn across videos: train a prior of the human fields",
                        description="A prior is the canonical human fields (the SDF residual, and optionally the colour "
                        "field) trained over many videos; `fit --prior` starts new videos from it.")
    prs = pr.add_subparsers(dest="prior_command", metavar="SUBCOMMAND", required=True)
    t = prs.add_parser("train", help="train (or resume) a prior over projects",
                       description="Visits the projects in rounds with equal budgets; shared human fields, per-video "
                       "code, background, density and pose refinements. Run it again to resume after a stop. Under "
                       "torchrun each process trains different videos and the shared weights are averaged after every visit.",
                       epilog="Two processes on one machine: torchrun --standalone --nproc-per-node 2 main.py prior "
                       "train A B C D --out PRIOR (see README for several machines).")
    options("prior", _prior_train_args, t)
    t.set_defaults(func=_cmd_prior_train)
    sy = prs.add_parser("synth", help="generate a varied set of synthetic training projects",
                        description="Scenes with different body shapes, garments, motions, colours and backgrounds; "
                        "scene k uses seed FIRST_SEED + k.")
    options("prior", _prior_synth_args, sy)
    sy.set_defaults(func=_cmd_prior_synth)

    x = sub.add_parser("export", help="write the fitted avatar as a mesh (OBJ/PLY, textured OBJ/glTF, rigged glTF)",
                       description="Marching cubes of the canonical SDF (largest component, at the surface the render "
                       "shows), vertex colours from the colour field or (--texture, .glb) a UV texture baked from the "
                       "video's pixels, normals; canonical (the default), posed into one frame (--frame), or every "
                       "frame (--sequence); or (--rigged OUT.glb) rigged with the body's skeleton and skin weights, animated with the "
                       "video's motion.")
    options("export", _export_args, x)
    x.set_defaults(func=_cmd_export)

    b = sub.add_parser("bake", help="bake a UV texture of the fitted avatar from the video",
                       description="Chart the fitted avatar's mesh into a UV atlas (xatlas) and fill it from the "
                       "training frames' pixels, read from the source video at its own resolution when it is still "
                       "there: visible, frontal, in-mask views weighted, frames aligned, robustly blended. Saved in "
                       "PROJECT/texture/; `export --texture`, `eval` and the app use it.")
    options("bake", _bake_args, b)
    b.set_defaults(func=_cmd_bake)

    rd = sub.add_parser("render", help="a video of the rigged avatar: the captured motion or a turntable",
                        description="Render the rigged, textured avatar (what `export --rigged` writes) into an mp4: "
                        "through the video's motion, seen from the video's direction, or (--turntable) one turn "
                        "around its bind pose. The app's turntable draws with the same code.")
    options("render", _render_args, rd)
    rd.set_defaults(func=_cmd_render)

    d = sub.add_parser("demo", help="headless demo: synthesise a scene, fit an avatar, score and export it",
                       description="Generate a small synthetic scene, score the body-only baseline, fit the "
                       "avatar with the fast preset, score it and export avatar.obj.")
    options("demo", _demo_args, d)
    d.set_defaults(func=_cmd_demo)
    return p


def _command_of(argv: list[str]) -> str | None:
    """The command named in `argv` (the first word that is not an option; the global options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser({_command_of(argv)})
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    args.cancel = CancelToken()
    try:
        _resolve_projects(args)
        return int(args.func(args) or 0)
    except UserError as e:
        log.error("error: %s", e)
        return 2
    except (KeyboardInterrupt, Cancelled):
        args.cancel.cancel()
        log.error("cancelled; nothing already saved was changed.")
        return 130


def _resolve_projects(args: argparse.Namespace) -> None:
    """Every command that reads a project accepts the scene folder `synth` made, too (one place for all)."""
    if getattr(args, "project", None) is None and getattr(args, "projects", None) is None:
        return
    from engine.project.project import resolve_project_dir

    if getattr(args, "project", None) is not None:
        args.project = str(resolve_project_dir(args.project))
    if getattr(args, "projects", None) is not None:
        args.projects = [str(resolve_project_dir(p)) for p in args.projects]
