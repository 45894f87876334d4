"""Geometry benchmark: surface quality of `fast` fits on the standard (shirt) and the dress scene.

    python -m benchmarks.geometry [--scenes standard dress] [--minutes 10] [--threads N] [--json OUT.json]

Generates each scene once (into --work), fits a fresh copy for a wall-clock budget and scores the mesh
that export writes (marching cubes at 128, posed into held-out frames 4, 24 and 44 after eval's test-time
pose fit) against the true clothed mesh: chamfer_cm, normal_consistency, F-scores, and the held-out
renders' m_psnr; plus steps/s. Each finished scene is appended to the JSON at once, so a stopped run keeps
what it measured. Run it from two checkouts at the same time with `--threads 1` to compare code versions
under the same load.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from benchmarks.common import STANDARD_SCENE, machine
from benchmarks.refine import _copy_project
from engine.evaluation import EvalConfig, evaluate_job
from engine.jobs import Losses, run_job
from engine.refine.config import load_preset
from engine.refine.loop import FitBudget, fit_job
from engine.synth.scene import SynthConfig, synth_job

log = logging.getLogger("benchmarks.geometry")

SCENES = {
    "standard": STANDARD_SCENE,
    "dress": SynthConfig(frames=60, size=256, motion="walk", garment="dress", seed=1, pose_noise=3.0),
}
FRAMES = (4, 24, 44)


def run_scene(name: str, work: Path, minutes: float) -> dict:
    scene = work / f"scene_{name}"
    if not (scene / "project").exists():
        run_job(synth_job(SCENES[name], scene))
    proj = _copy_project(scene, work / f"fit_{name}")
    t0 = time.perf_counter()
    steps = 0
    for ev in fit_job(proj, load_preset("fast"), FitBudget(minutes=minutes, preview_every=0, checkpoint_every=10**9)):
        if isinstance(ev, Losses):
            steps = ev.step
    fit_s = time.perf_counter() - t0
    report = run_job(evaluate_job(proj, EvalConfig(mesh_resolution=128, mesh_samples=50_000, frames=FRAMES,
                                                   textured=False)))
    row = {"scene": name, "minutes": minutes, "steps": steps, "steps_per_s": round(steps / fit_s, 2),
           **{k: round(v, 4) for k, v in report["metrics"].items()}, "project": str(proj)}
    log.info("%s: %d steps, chamfer %.2f cm, NC %.3f", name, steps, row["chamfer_cm"], row["normal_consistency"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--work", type=Path, default=Path("out/bench_geometry"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "threads": torch.get_num_threads(), "rows": []}
    for name in args.scenes:
        result["rows"].append(run_scene(name, args.work, args.minutes))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1))
    print("| scene | steps | steps/s | chamfer_cm | normal_consistency | fscore_1cm | m_psnr |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['scene']} | {r['steps']} | {r['steps_per_s']} | {r['chamfer_cm']:.2f} | "
              f"{r['normal_consistency']:.3f} | {r['fscore_1cm']:.3f} | {r.get('m_psnr', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
