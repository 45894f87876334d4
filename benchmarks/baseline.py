"""Body-only baseline on the standard scene: the number every method must beat.

    python -m benchmarks.baseline [--out DIR] [--json OUT.json]

Generates the standard synthetic scene (60 frames, 256 px, turn, shirt, 3° pose noise), times
the generator, and evaluates the body-only baseline on the held-out frames.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from benchmarks.common import STANDARD_SCENE, machine
from engine.evaluation import evaluate_job
from engine.jobs import run_job
from engine.synth.scene import synth_job

log = logging.getLogger("benchmarks.baseline")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/standard_scene", help="scene folder (replaced)")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    run_job(synth_job(STANDARD_SCENE, args.out, overwrite=True))
    t_synth = time.perf_counter() - t0
    report = run_job(evaluate_job(Path(args.out) / "project"))
    result = {"machine": machine(), "synth_seconds": round(t_synth, 1), "eval_seconds": report["seconds"],
              "scene": "60 frames, 256 px, turn, shirt, pose noise 3 deg", "body_only": report["metrics"]}
    rows = [("metric", "body-only baseline")] + [(k, f"{v:.3f}") for k, v in report["metrics"].items()]
    table = "\n".join(f"| {a} | {b} |" for a, b in rows[:1]) + "\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows[1:])
    log.info("%s\n\nsynth %.1f s, eval %.1f s on %s", table, t_synth, report["seconds"], result["machine"])
    log.info(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
