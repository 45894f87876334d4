"""GPU benchmark: the standard scene fitted on CUDA for a time budget, scored and exported.

    python -m benchmarks.gpu [--seconds 30] [--work out/bench_gpu] [--json OUT.json]

Synthesises the standard scene (benchmarks/common.py STANDARD_SCENE) once into --work, fits a fresh copy
with the fast preset on CUDA for --seconds of wall-clock time, and prints steps/s and rays/s (the median of
the steps' own rays/s), the held-out scores of engine/evaluation.py (frames 4, 24 and 44, untextured:
m_psnr, chamfer_cm, …) beside the CPU 10-minute reference of benchmarks/results/geometry.json, and the
time to a meshed, exported avatar (fit + `export` on CUDA). Prints a Markdown table, then the JSON
(also written to --json). Without CUDA it stops at once, saying so.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import STANDARD_SCENE, machine
from benchmarks.refine import _copy_project
from engine.evaluation import EvalConfig, evaluate_job
from engine.export import export_job
from engine.jobs import Losses, run_job
from engine.refine.config import load_preset
from engine.refine.loop import FitBudget, fit_job
from engine.synth.scene import synth_job

log = logging.getLogger("benchmarks.gpu")

FRAMES = (4, 24, 44)
CPU_REFERENCE = Path(__file__).parent / "results" / "geometry.json"
SCORES = ("m_psnr", "chamfer_cm", "normal_consistency", "fscore_1cm")


def cpu_reference() -> dict:
    """The standard scene's latest 10-minute CPU row of benchmarks/results/geometry.json ({} if none)."""
    try:
        data = json.loads(CPU_REFERENCE.read_text())
    except (OSError, ValueError):
        return {}
    rows = [r for r in data.get("rows", []) if r.get("scene") == "standard"]
    return {"machine": data.get("machine"), **rows[-1]} if rows else {}


def run(work: Path, seconds: float) -> dict:
    scene = work / "scene_standard"
    if not (scene / "project").exists():
        log.info("synthesising the standard scene into %s", scene)
        run_job(synth_job(STANDARD_SCENE, scene))
    proj = _copy_project(scene, work / "fit_standard")

    t0 = time.perf_counter()
    steps, rays = 0, []
    budget = FitBudget(minutes=seconds / 60, preview_every=0, checkpoint_every=10**9)
    for ev in fit_job(proj, load_preset("fast"), budget, device="cuda"):
        if isinstance(ev, Losses):
            steps = ev.step
            rays.append(ev.rays_per_s)
    torch.cuda.synchronize()
    fit_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    out = work / "standard.obj"
    exported = run_job(export_job(proj, out, device="cuda", overwrite=True))
    export_s = time.perf_counter() - t1

    t2 = time.perf_counter()
    report = run_job(evaluate_job(proj, EvalConfig(mesh_resolution=128, mesh_samples=50_000, frames=FRAMES,
                                                   textured=False)))
    eval_s = time.perf_counter() - t2
    metrics = report["metrics"]
    return {
        "gpu": torch.cuda.get_device_name(0),
        "machine": machine(),
        "seconds": seconds,
        "steps": steps,
        "steps_per_s": round(steps / fit_s, 2),
        "rays_per_s": round(statistics.median(rays)) if rays else 0,
        "fit_s": round(fit_s, 1),
        "export_s": round(export_s, 1),
        "fit_and_export_s": round(fit_s + export_s, 1),
        "eval_s": round(eval_s, 1),
        "export": exported,
        **{k: round(v, 4) for k, v in metrics.items()},
        "cpu_reference": cpu_reference(),
        "project": str(proj),
    }


def table(r: dict) -> str:
    ref = r["cpu_reference"]
    lines = [f"GPU: {r['gpu']} ({r['machine']})",
             f"| | CUDA, {r['seconds']:g} s | CPU reference ({ref.get('minutes', '?')} min, {ref.get('machine', '?')}) |",
             "|---|---|---|",
             f"| steps | {r['steps']} | {ref.get('steps', '')} |",
             f"| steps/s | {r['steps_per_s']} | {ref.get('steps_per_s', '')} |",
             f"| rays/s | {r['rays_per_s']} | |"]
    for k in SCORES:
        lines.append(f"| {k} | {r.get(k, float('nan')):.4g} | {ref.get(k, '')} |")
    lines.append(f"| fit + export (s) | {r['fit_and_export_s']} | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="wall-clock budget of the fit")
    ap.add_argument("--work", type=Path, default=Path("out/bench_gpu"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs CUDA: torch.cuda.is_available() is False on this machine.")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    result = run(args.work, args.seconds)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
