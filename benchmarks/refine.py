"""Refinement benchmark: each preset at equal wall-clock budgets on the standard scene.

    python -m benchmarks.refine [--budgets 2 5 10] [--presets fast vid2avatar] [--json OUT.json]

Generates the standard scene (60 frames, 256 px, turn, shirt, 3° pose noise) once, then for
every preset and budget fits a fresh copy of its project for that many minutes and evaluates
the held-out frames. Prints a table and JSON: iterations, rays/s, m_psnr, m_ssim, chamfer_cm,
normal_consistency, and time-to-quality of fast vs vid2avatar.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from benchmarks.common import STANDARD_SCENE, machine
from engine.evaluation import EvalConfig, evaluate_job
from engine.jobs import Losses, run_job
from engine.project import Project
from engine.refine.config import load_preset
from engine.refine.loop import FitBudget, fit_job
from engine.synth.scene import synth_job

log = logging.getLogger("benchmarks.refine")


def _copy_project(scene: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(scene / "project", dst)
    if (scene / "ground_truth").exists():  # synthetic: the ground truth sits beside the copy
        meta = Project.open(dst).meta
        meta["ground_truth"] = str((scene / "ground_truth").resolve())
        (dst / "project.json").write_text(json.dumps(meta))
    return dst


def _score(proj: Path, preset: str, minutes: float, fit_s: float, rays_per_s: float, frames, curve) -> dict:
    report = run_job(evaluate_job(proj, EvalConfig(mesh_resolution=128, mesh_samples=50_000, frames=frames)))
    row = {"preset": preset, "minutes": minutes, "iterations": report["step"], "fit_seconds": round(fit_s, 1),
           "rays_per_s": round(rays_per_s), **{k: round(v, 4) for k, v in report["metrics"].items()},
           "train_curve": curve}
    log.info("%s %g min: %d it, m_psnr %.2f, chamfer %.2f cm", preset, minutes, row["iterations"],
             row.get("m_psnr", float("nan")), row.get("chamfer_cm", float("nan")))
    return row


def fit_and_score(scene: Path, work: Path, preset: str, budgets: list[float], device: str,
                  frames: tuple[int, ...], snapshots: bool) -> list[dict]:
    """One fresh fit per budget; with `snapshots`, one fit for the largest budget whose checkpoint is
    also copied and scored when each smaller budget's time is reached (cheaper for the slow preset;
    its learning rate has then decayed less than a run of that length would have)."""
    runs = [max(budgets)] if snapshots else budgets
    rows = []
    for minutes in runs:
        proj = _copy_project(scene, work / f"{preset}_{minutes:g}min")
        marks = sorted(m for m in budgets if m < minutes) if snapshots else []
        taken: list[tuple[float, Path, float, float]] = []
        rays, n, curve = 0.0, 0, []
        t0 = time.perf_counter()
        budget = FitBudget(minutes=minutes, preview_every=0, checkpoint_every=1 if marks else 10**9)
        for ev in fit_job(proj, load_preset(preset), budget, device=device):
            if isinstance(ev, Losses):
                rays += ev.rays_per_s
                n += 1
                if ev.step % 50 == 0:
                    curve.append((round(time.perf_counter() - t0, 1), ev.step, round(ev.values["psnr_batch"], 2)))
                elapsed = time.perf_counter() - t0
                if marks and elapsed >= 60 * marks[0]:
                    m = marks.pop(0)  # the checkpoint of this step was just written (checkpoint_every=1)
                    snap = work / f"{preset}_{m:g}min_snapshot"
                    if snap.exists():
                        shutil.rmtree(snap)
                    shutil.copytree(proj, snap)
                    taken.append((m, snap, elapsed, rays / n))
        fit_s = time.perf_counter() - t0
        for m, snap, el, rps in taken:
            rows.append(_score(snap, preset, m, el, rps, frames, [c for c in curve if c[0] <= el]))
        rows.append(_score(proj, preset, minutes, fit_s, rays / max(n, 1), frames, curve))
    return rows


def time_to_quality(rows: list[dict]) -> dict:
    """Minutes each preset needed to reach the best m_psnr vid2avatar reached (budget grid)."""
    v2a = [r for r in rows if r["preset"] == "vid2avatar"]
    fast = [r for r in rows if r["preset"] == "fast"]
    if not v2a or not fast:
        return {}
    target = max(r["m_psnr"] for r in v2a)
    t_v2a = min(r["minutes"] for r in v2a if r["m_psnr"] >= target)
    hit = [r["minutes"] for r in fast if r["m_psnr"] >= target]
    if not hit:
        return {"target_m_psnr": target, "ratio": None}
    return {"target_m_psnr": round(target, 2), "vid2avatar_minutes": t_v2a, "fast_minutes_at_most": min(hit),
            "ratio_at_least": round(t_v2a / min(hit), 2),
            "note": "budget grid only: fast reached the target at or before its smallest qualifying budget"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", type=float, nargs="+", default=[2, 5, 10], help="minutes per run")
    ap.add_argument("--presets", nargs="+", default=["fast", "vid2avatar"])
    ap.add_argument("--separate-v2a", action="store_true",
                    help="one vid2avatar fit per budget (default: one run for the largest, scored at each budget)")
    ap.add_argument("--work", default="out/bench_refine", help="scratch folder")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--eval-every", type=int, default=2, help="score every k-th held-out frame (default 2: 6 of 12)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(args.work)
    scene = work / "scene"
    if not (scene / "project" / "project.json").exists():
        run_job(synth_job(STANDARD_SCENE, scene, overwrite=True))
    frames = tuple(Project.open(scene / "project").held_out[:: args.eval_every])
    baseline = run_job(evaluate_job(scene / "project", EvalConfig(method="body_only", frames=frames)))["metrics"]
    rows = []
    for p in args.presets:
        rows += fit_and_score(scene, work, p, args.budgets, args.device, frames,
                              snapshots=p == "vid2avatar" and not args.separate_v2a)
        if args.json:  # partial results survive an interruption
            Path(args.json).write_text(json.dumps({"runs": rows}, indent=2))
    cols = ["preset", "minutes", "iterations", "rays_per_s", "m_psnr", "m_ssim", "chamfer_cm", "normal_consistency",
            "fscore_1cm"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines.append("| body-only baseline | – | – | – | " + " | ".join(f"{baseline[c]:.3f}" for c in cols[4:]) + " |")
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    ttq = time_to_quality(rows)
    result = {"machine": machine(), "device": args.device, "scene": "standard (60 frames, 256 px, turn, shirt, 3 deg)", "eval_frames": list(frames),
              "baseline": baseline, "runs": rows, "time_to_quality": ttq}
    log.info("\n%s\n\ntime to quality: %s\nmachine: %s", "\n".join(lines), ttq, result["machine"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
