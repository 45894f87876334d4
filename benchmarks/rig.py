"""Rig benchmark: the rigged glTF (`export --rigged`) through a real client, and skin weights on a skirt.

    python -m benchmarks.rig PROJECT [--frames 0 4 20 39] [--dress SCENE] [--json OUT.json] [--pictures DIR]

For the fitted PROJECT (its bake of this checkpoint textures the rig when there is one):
- writes the rigged .glb and times it; bones, vertices, frames;
- imports it in Blender headless (tests/engine/blender_rig_check.py): bones, vertex groups, image, key frames,
  and the evaluated mesh at each of `--frames` against `export --frame k` of the same mesh (mm: mean, 99th
  percentile, max), held-out frames included; the engine's own glTF skinning (`RiggedAvatar.posed`) too;
- with `--pictures`, Blender renders of the rigged avatar in the first two frames and with its left arm raised
  (a pose the clip never had).
With `--dress SCENE` (a `synth --garment dress` folder): the scene's true clothed mesh (a skirt) rigged with the
same weight transfer, smoothed and not: how far its edges stretch in the clip's poses and with the arm raised
(a skirt torn between the legs shows as edges stretched many times their length), and Blender renders.
Use synthetic projects for pictures: no frames of real clips in the repo.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine
from engine.body import BodyConfig, create_body_model
from engine.export import ExportConfig, RigConfig, export_job, rig_session, rigged_job
from engine.jobs import run_job
from engine.jobs.events import CancelToken, run_stage
from engine.refine.session import open_session
from engine.rig import WeightConfig, build_rig, write_rigged_glb
from engine.synth.ground_truth import GroundTruth
from engine.texture import load_bake

log = logging.getLogger("benchmarks.rig")
ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tests" / "engine" / "blender_rig_check.py"


def _mm(a: np.ndarray, b: np.ndarray) -> dict:
    e = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=1) * 1000
    return {"mean": round(float(e.mean()), 3), "p99": round(float(np.percentile(e, 99)), 2), "max": round(float(e.max()), 2)}


def _obj_vertices(path: Path) -> np.ndarray:
    return np.array([[float(x) for x in line.split()[1:4]] for line in path.read_text().splitlines()
                     if line.startswith("v ")])


def blender(glb: Path, fps: float, frames: list[int], npz: Path, prefix: Path | None) -> dict:
    exe = shutil.which("blender")
    if exe is None:
        raise SystemExit("blender is not installed (Debian: apt-get install blender python3-numpy)")
    cmd = [exe, "-b", "--factory-startup", "--python-exit-code", "1", "--python", str(CHECK), "--", str(glb), str(fps),
           str(npz), *map(str, frames)] + (["--render", str(prefix)] if prefix is not None else [])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise RuntimeError(p.stdout[-4000:] + p.stderr[-4000:])
    report = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("RESULT "))[7:])
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def project_rig(project: Path, frames: list[int], work: Path, pictures: Path | None) -> dict:
    glb = work / "rig.glb"
    t0 = time.perf_counter()
    r = run_job(rigged_job(project, glb, RigConfig()))
    seconds = time.perf_counter() - t0
    session = open_session(project, require_checkpoint=True)
    rig = run_stage(rig_session(session, RigConfig(), CancelToken()))
    bake = load_bake(project, step=session.step)
    cfg = ExportConfig(texture=bake[1]["size"], resolution=bake[1]["resolution"]) if bake else ExportConfig()
    prefix = pictures / "rig" if pictures is not None else None
    b = blender(glb, r["fps"], frames, work / "blender.npz", prefix)
    got = np.load(work / "blender.npz")
    from scipy.spatial import cKDTree

    _, idx = cKDTree(got["rest"]).query(rig.vertices)
    rows = []
    held = set(session.project.held_out)
    for k in frames:
        out = work / f"frame{k}.obj"
        run_job(export_job(project, out, ExportConfig(**{**cfg.__dict__, "frame": k}), overwrite=True))
        want = _obj_vertices(out)
        rows.append({"frame": k, "held_out": k in held, "blender_mm": _mm(got[f"frame_{k}"][idx], want),
                     "engine_mm": _mm(rig.posed(k), want)})
    return {"project": str(project.resolve()), "rig": {k: v for k, v in r.items() if k != "files"},
            "seconds": round(seconds, 1), "file_mb": round(glb.stat().st_size / 1e6, 2),
            "blender": {k: b[k] for k in ("bones", "vertex_groups", "images", "keys_per_fcurve", "max_groups_per_vertex",
                                          "ungrouped_vertices", "seconds")} | {"keys": len(b["keys"])},
            "frames": rows}


MIN_EDGE = 0.002  # metres: marching cubes leaves slivers whose length ratios mean nothing


def _edge_stretch(vertices: np.ndarray, posed: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Posed / bind length of every mesh edge at least MIN_EDGE long in the bind pose."""
    e = np.unique(np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1), axis=0)
    rest = np.linalg.norm(vertices[e[:, 0]] - vertices[e[:, 1]], axis=1)
    now = np.linalg.norm(posed[e[:, 0]] - posed[e[:, 1]], axis=1)
    return (now / np.maximum(rest, 1e-9))[rest >= MIN_EDGE]


def _stretch_summary(ratio: np.ndarray) -> dict:
    return {"p99.9": round(float(np.percentile(ratio, 99.9)), 2), "over_2x_percent": round(100 * float((ratio > 2).mean()), 3),
            "over_5x_percent": round(100 * float((ratio > 5).mean()), 3)}


def dress(scene: Path, frames: list[int], work: Path, pictures: Path | None) -> dict:
    gt = GroundTruth.load(scene / "ground_truth")
    body = create_body_model(BodyConfig("anny"))
    shape = gt.body.shape
    with torch.no_grad():
        tfs = body.bone_transforms(gt.body)
        canonical_body = body.canonical_vertices(shape)
    fps = float(json.loads((scene / "project" / "project.json").read_text()).get("fps", 25.0))
    arm = body.semantic_bones["left_shoulder"]
    raised = body.star_pose()
    raised[arm] = body.local_rotvec(torch.tensor([0.0, 0.0, 1.6]))  # the left arm up, a pose no clip has
    with torch.no_grad():
        raised_tf = body.body_transforms(shape, raised[None])[0]
    out = {"scene": str(scene), "vertices": len(gt.canonical_vertices)}
    for name, smooth in (("smoothed", WeightConfig().smooth), ("nearest_surface", 0.0)):
        rig = build_rig(body, shape, gt.canonical_vertices, gt.faces, None, canonical_body, tfs, fps,
                        weight_cfg=WeightConfig(smooth=smooth))
        stretch = np.concatenate([_edge_stretch(rig.vertices, rig.posed(k), rig.faces) for k in range(rig.num_frames)])
        bones = torch.as_tensor(rig.skeleton.bones)
        star = body.star_transforms(shape).double()
        up = rig.posed_with((raised_tf.double()[bones] @ torch.linalg.inv(star[bones])).numpy())
        stretch_up = _edge_stretch(rig.vertices, up, rig.faces)
        out[name] = {"edge_stretch_clip": _stretch_summary(stretch),
                     "edge_stretch_arm_raised": _stretch_summary(stretch_up),
                     "vs_true_posed_mm": _mm(np.concatenate([rig.posed(k) for k in frames]),
                                             np.concatenate([gt.posed_vertices(k) for k in frames]))}
        if name == "smoothed":
            rig.colors = gt.colors
            glb = work / "dress.glb"
            write_rigged_glb(glb, rig)
            if pictures is not None:
                out["blender"] = {k: v for k, v in blender(glb, fps, frames, work / "dress.npz",
                                                          pictures / "rig_dress").items()
                                  if k in ("bones", "keys_per_fcurve", "seconds")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("project", type=Path)
    ap.add_argument("--frames", type=int, nargs="+", default=[0, 4, 20, 39])
    ap.add_argument("--dress", type=Path, help="a `synth --garment dress` scene folder")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "rig.json")
    ap.add_argument("--pictures", type=Path, help="folder for the Blender renders (PNG)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.pictures is not None:
        args.pictures.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        report = {"machine": machine(), "project": project_rig(args.project, args.frames, work, args.pictures)}
        if args.dress is not None:
            n = json.loads((args.dress / "project" / "project.json").read_text())["num_frames"]
            report["dress"] = dress(args.dress, [k for k in (0, n // 2) if k < n], work, args.pictures)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    log.info("%s", json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
