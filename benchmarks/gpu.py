"""GPU benchmark: how soon a CUDA fit of the standard scene reaches the CPU 10-minute quality, meshed and
exported.

    python -m benchmarks.gpu --prepare [--work out/bench_gpu]          # on the desktop: makes the scene
    python -m benchmarks.gpu [--budgets 10 20 30 60] [--work out/bench_gpu] [--json OUT.json]   # on the node

The scene (benchmarks/common.py STANDARD_SCENE, with its ground truth) is synthesised once with `--prepare`
where the desktop stack is installed, and carried to the GPU machine, which needs only torch, numpy, scipy
and scikit-image (the project carries its body: engine/project_body.py). There, fresh copies are fitted
with the fast preset on CUDA for each wall-clock budget in turn, each scored on the held-out frames 4, 24
and 44 (untextured, as the CPU reference of benchmarks/results/geometry.json), until one reaches the
reference's m_psnr and chamfer_cm; that copy is then exported. Prints steps/s and rays/s (the median of
the steps' own rays/s), the scores per budget beside the reference, and the time to the first budget that
reaches it plus its export, as a Markdown table and JSON (also written to --json). Without CUDA it stops
at once, saying so.
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
from engine.synth.scene import SynthConfig

log = logging.getLogger("benchmarks.gpu")

FRAMES = (4, 24, 44)
CPU_REFERENCE = Path(__file__).parent / "results" / "geometry.json"
SCORES = ("m_psnr", "chamfer_cm", "normal_consistency", "fscore_1cm")
SCENE = "scene_standard"
# The scenes of tests/gpu: the small scene of tests/engine/conftest.py and a small dress (the prior's second video).
TEST_SCENES = {
    "test_small": SynthConfig(frames=10, size=128, motion="turn", garment="shirt", seed=7, pose_noise=3.0, voxel=0.012),
    "test_dress": SynthConfig(frames=10, size=96, motion="walk", garment="dress", seed=11, voxel=0.012),
}


def cpu_reference() -> dict:
    """The standard scene's latest 10-minute CPU row of benchmarks/results/geometry.json ({} if none)."""
    try:
        data = json.loads(CPU_REFERENCE.read_text())
    except (OSError, ValueError):
        return {}
    rows = [r for r in data.get("rows", []) if r.get("scene") == "standard"]
    return {"machine": data.get("machine"), **rows[-1]} if rows else {}


def prepare(work: Path) -> None:
    """Synthesises the standard scene into work/scene_standard, and the two small scenes of tests/gpu
    (test_small, test_dress: run those tests with AVATAR_GPU_SCENES=work), which needs the desktop stack."""
    from engine.synth.scene import synth_job

    for name, config in ((SCENE, STANDARD_SCENE), *TEST_SCENES.items()):
        if (work / name / "project").exists():
            continue
        log.info("synthesising %s into %s", name, work / name)
        try:
            run_job(synth_job(config, work / name))
        except ImportError as e:
            sys.exit(f"--prepare needs the desktop install ({e.name} is missing): run it where `make` set up the "
                     "project, then copy the scenes here.")


def reached(row: dict, ref: dict) -> bool:
    """Whether a run's scores are at least the CPU reference's (m_psnr up, chamfer_cm down)."""
    return bool(ref) and row["m_psnr"] >= ref["m_psnr"] and row["chamfer_cm"] <= ref["chamfer_cm"]


def fit_once(scene: Path, work: Path, seconds: float) -> dict:
    """A fresh copy of the scene fitted on CUDA for `seconds`, and scored."""
    proj = _copy_project(scene, work / f"fit_{seconds:g}s")
    steps, rays = 0, []
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    budget = FitBudget(minutes=seconds / 60, preview_every=0, checkpoint_every=10**9)
    for ev in fit_job(proj, load_preset("fast"), budget, device="cuda"):
        if isinstance(ev, Losses):
            steps = ev.step
            rays.append(ev.rays_per_s)
    torch.cuda.synchronize()
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    report = run_job(evaluate_job(proj, EvalConfig(mesh_resolution=128, mesh_samples=50_000, frames=FRAMES,
                                                   textured=False, device="cuda")))
    row = {"seconds": seconds, "steps": steps, "fit_s": round(fit_s, 1), "steps_per_s": round(steps / fit_s, 2),
           "rays_per_s": round(statistics.median(rays)) if rays else 0, "eval_s": round(time.perf_counter() - t1, 1),
           **{k: round(v, 4) for k, v in report["metrics"].items()}, "project": str(proj)}
    log.info("%g s: %s", seconds, {k: row.get(k) for k in ("steps", "steps_per_s", *SCORES)})
    return row


def run(work: Path, budgets: list[float]) -> dict:
    scene = work / SCENE
    if not (scene / "project").exists():
        sys.exit(f"{scene} is missing: make it where the desktop stack is installed (python -m benchmarks.gpu "
                 f"--prepare --work {work}) and copy it here.")
    ref = cpu_reference()
    rows, first = [], None
    for seconds in budgets:
        row = fit_once(scene, work, seconds)
        rows.append(row)
        if reached(row, ref):
            first = row
            break
    result = {"gpu": torch.cuda.get_device_name(0), "machine": machine(), "rows": rows, "cpu_reference": ref,
              "reached_at_s": first["seconds"] if first else None}
    best = first or rows[-1]
    t1 = time.perf_counter()
    out = work / "standard.obj"
    result["export"] = run_job(export_job(best["project"], out, device="cuda", overwrite=True))
    result["export_s"] = round(time.perf_counter() - t1, 1)
    result["fit_and_export_s"] = round(best["fit_s"] + result["export_s"], 1)
    return result


def table(r: dict) -> str:
    ref = r["cpu_reference"]
    head = " | ".join(f"CUDA {row['seconds']:g} s" for row in r["rows"])
    lines = [f"GPU: {r['gpu']} ({r['machine']})",
             f"| | {head} | CPU reference ({ref.get('minutes', '?')} min, {ref.get('machine', '?')}) |",
             "|---|" + "---|" * (len(r["rows"]) + 1)]
    for key in ("steps", "steps_per_s", "rays_per_s", *SCORES):
        vals = " | ".join(f"{row.get(key, float('nan')):.4g}" for row in r["rows"])
        lines.append(f"| {key} | {vals} | {ref.get(key, '')} |")
    lines.append(f"reaches the CPU reference at: {r['reached_at_s']} s of fitting (None: not within the budgets); "
                 f"fit + export of that run: {r['fit_and_export_s']} s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", action="store_true", help="only synthesise the scene (desktop stack needed)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[10.0, 20.0, 30.0, 60.0],
                    help="fit budgets in seconds, tried in turn until one reaches the CPU reference")
    ap.add_argument("--work", type=Path, default=Path("out/bench_gpu"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.prepare:
        prepare(args.work)
        return
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs CUDA: torch.cuda.is_available() is False on this machine.")
    result = run(args.work, args.budgets)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
