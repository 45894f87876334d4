"""Prior benchmark: scratch vs a prior at equal short budgets on held-out scenes, and training throughput.

    python -m benchmarks.prior [--prior resources/prior] [--budgets 0.5 1 2 5] [--scenes standard dress]
                               [--real PROJECT_DIR ...] [--scratch-from EARLIER.json] [--json OUT.json]
    python -m benchmarks.prior --scaling [--json OUT.json]

Quality: for every held-out scene (synthetic, seeds the shipped prior never saw) and budget, one fresh fit
from scratch and one from the prior (`--mode refine`), plus `--mode inference` and the body-only start;
each scored on held-out frames (m_psnr, m_ssim, chamfer_cm). Then: how long the prior needs to reach
what scratch reaches with the largest budget.

Scaling: `prior train` on two small synthetic projects with 1 process (2 torch threads) and with 2 gloo
processes under torchrun (1 thread each): steps/s over all ranks and per-rank time per step.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import STANDARD_SCENE, machine
from benchmarks.refine import _copy_project, _score
from engine.evaluation import EvalConfig, evaluate_job
from engine.jobs import Losses, run_job
from engine.project import Project
from engine.refine.config import load_preset
from engine.refine.loop import FitBudget, fit_job
from engine.refine.prior_file import SHIPPED_PRIOR
from engine.synth.scene import SynthConfig, synth_job

log = logging.getLogger("benchmarks.prior")
ROOT = Path(__file__).resolve().parents[1]

# Held-out scenes: seeds below the training sets' (100+), so never seen by the shipped prior.
SCENES = {
    "standard": STANDARD_SCENE,
    "dress": SynthConfig(frames=60, size=256, motion="walk", garment="dress", seed=1, pose_noise=3.0),
}
QUALITY = ("m_psnr", "m_ssim", "chamfer_cm")


def _fit(scene: Path, work: Path, label: str, minutes: float, frames, prior: str | None, mode: str) -> dict:
    proj = _copy_project(scene, work / f"{label}_{minutes:g}min")
    rays, n = 0.0, 0
    t0 = time.perf_counter()
    budget = FitBudget(minutes=minutes, preview_every=0, checkpoint_every=10**9)
    for ev in fit_job(proj, load_preset("fast"), budget, prior=prior, prior_mode=mode):
        if isinstance(ev, Losses):
            rays += ev.rays_per_s
            n += 1
    return _score(proj, label, minutes, time.perf_counter() - t0, rays / max(n, 1), frames, [])


def quality(args) -> dict:
    out: dict = {"prior": str(args.prior), "scenes": {}}
    real = {f"real:{Path(d).resolve().name}": Path(d).resolve() for d in args.real}
    for name in [*args.scenes, *real]:
        work = Path(args.work) / name.replace(":", "_")
        scene = work / "scene"
        if name in real:  # a preprocessed real video: no ground-truth geometry, image metrics only
            if scene.exists():
                shutil.rmtree(scene)
            shutil.copytree(real[name], scene / "project", ignore=shutil.ignore_patterns("checkpoints"))
        elif not (scene / "project" / "project.json").exists():
            run_job(synth_job(SCENES[name], scene, overwrite=True))
        frames = tuple(Project.open(scene / "project").held_out[:: args.eval_every])
        old = _earlier_rows(args.scratch_from, name, SCENES[name], frames) if name in SCENES else []
        if old:  # scratch and body-only do not depend on the prior: reuse an earlier run's rows
            rows = [r for r in old if r["preset"] == "body-only"]
        else:
            base = run_job(evaluate_job(scene / "project", EvalConfig(method="body_only", frames=frames,
                                                                      mesh_resolution=128, mesh_samples=50_000)))
            rows = [{"preset": "body-only", "minutes": 0, "iterations": 0,
                     **{k: round(v, 4) for k, v in base["metrics"].items()}}]
        for minutes in args.inference_minutes:
            rows.append(_fit(scene, work, "prior-inference", minutes, frames, args.prior, "inference"))
        for minutes in args.budgets:
            reused = [r for r in old if r["preset"] == "scratch" and r["minutes"] == minutes]
            rows += [{**r, "reused_from": str(args.scratch_from)} for r in reused] or \
                [_fit(scene, work, "scratch", minutes, frames, None, "refine")]
            rows.append(_fit(scene, work, "prior", minutes, frames, args.prior, "refine"))
            if args.json:  # partial results survive an interruption
                Path(args.json).write_text(json.dumps(out | {"partial": {name: rows}}, indent=2))
        out["scenes"][name] = {"config": SCENES[name].__dict__ if name in SCENES else {"project": str(real[name])}, "eval_frames": list(frames), "runs": rows,
                               "time_to_quality": time_to_quality(rows)}
    return out


def _earlier_rows(path: str | None, name: str, scene: SynthConfig, frames: tuple) -> list[dict]:
    """Rows of an earlier result file for the same scene and frames (empty if none or not the same)."""
    if not path:
        return []
    sc = json.loads(Path(path).read_text()).get("scenes", {}).get(name)
    if not sc or sc["config"] != scene.__dict__ or tuple(sc["eval_frames"]) != frames:
        log.warning("%s has no matching results for scene %s: running scratch again", path, name)
        return []
    return sc["runs"]


def time_to_quality(rows: list[dict]) -> dict:
    """The smallest budget at which the prior matches scratch's largest budget (m_psnr and chamfer)."""
    scratch = [r for r in rows if r["preset"] == "scratch"]
    prior = sorted((r for r in rows if r["preset"] == "prior"), key=lambda r: r["minutes"])
    if not scratch or not prior:
        return {}
    target = max(scratch, key=lambda r: r["minutes"])
    hit = [r["minutes"] for r in prior if r["m_psnr"] >= target["m_psnr"]
           and r.get("chamfer_cm", 0) <= target.get("chamfer_cm", 0) + 1e-9]
    return {"scratch_minutes": target["minutes"], "target_m_psnr": target["m_psnr"],
            "target_chamfer_cm": target.get("chamfer_cm"), "prior_minutes": min(hit) if hit else None}


def scaling(args) -> dict:
    """Throughput of prior training with 1 and 2 processes."""
    work = Path(args.work) / "scaling"
    projects = []
    for k, garment in enumerate(("shirt", "dress")):
        d = work / f"video{k}"
        if not (d / "project" / "project.json").exists():
            run_job(synth_job(SynthConfig(frames=20, size=256, garment=garment, seed=200 + k), d, overwrite=True))
        projects.append(str(d / "project"))
    rows = []
    for procs in (1, 2):
        out = work / f"prior_{procs}proc"
        train = ["main.py", "-q", "prior", "train", *projects, "--out", str(out), "--rounds", str(args.scaling_rounds),
                 "--visit-steps", "50", "--eval-every", "0", "--restart"]
        cmd = ([sys.executable, *train] if procs == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), *train])
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // procs))}
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"prior train with {procs} process(es) failed:\n{r.stderr[-2000:]}")
        s = json.loads((out / "training" / "summary.json").read_text())
        rows.append({"processes": procs, "threads_per_process": env["OMP_NUM_THREADS"], "steps": s["all_steps"],
                     "seconds": s["seconds"], "steps_per_s": s["all_steps_per_s"],
                     "ms_per_step_per_rank": [round(1000 * st["run_compute_s"] / max(st["run_steps"], 1), 1)
                                              for st in s["ranks"]],
                     "sync_s_per_rank": [st["run_sync_s"] for st in s["ranks"]]})
        log.info("%d process(es): %s", procs, rows[-1])
    return {"scaling": rows}


def _table(result: dict) -> str:
    lines = []
    for name, sc in result.get("scenes", {}).items():
        lines += [f"scene {name}:", "| method | minutes | iterations | " + " | ".join(QUALITY) + " |",
                  "|---|---|---|" + "---|" * len(QUALITY)]
        for r in sc["runs"]:
            lines.append(f"| {r['preset']}{' (reused)' if 'reused_from' in r else ''} | {r['minutes']:g} | {r['iterations']} | "
                         + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in QUALITY) + " |")
        lines.append(f"time to quality: {sc['time_to_quality']}")
    for r in result.get("scaling", []):
        lines.append(f"{r['processes']} process(es): {r['steps_per_s']:.2f} steps/s in all, "
                     f"{r['ms_per_step_per_rank']} ms/step per rank, sync {r['sync_s_per_rank']} s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", default=str(SHIPPED_PRIOR))
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.5, 1, 2, 5], help="minutes per fit")
    ap.add_argument("--inference-minutes", type=float, nargs="*", default=[1], help="budgets of --mode inference")
    ap.add_argument("--scenes", nargs="*", default=["standard"], choices=sorted(SCENES))
    ap.add_argument("--real", nargs="*", default=[], metavar="PROJECT_DIR",
                    help="preprocessed real videos to score too (image metrics only; never copied into the repo)")
    ap.add_argument("--eval-every", type=int, default=4, help="score every k-th held-out frame (default 4: 3 of 12)")
    ap.add_argument("--scratch-from", metavar="JSON",
                    help="reuse the body-only and scratch rows of an earlier result file (same scenes and frames); "
                         "they do not depend on the prior")
    ap.add_argument("--scaling", action="store_true", help="measure training throughput with 1 and 2 processes")
    ap.add_argument("--scaling-rounds", type=int, default=3)
    ap.add_argument("--work", default="out/bench_prior", help="scratch folder")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = {"machine": machine(), **(scaling(args) if args.scaling else quality(args))}
    log.info("\n%s\nmachine: %s", _table(result), result["machine"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
