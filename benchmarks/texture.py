"""Texture benchmark: does the exported, textured mesh hand over the avatar the app shows, and sharper?

    python -m benchmarks.texture PROJECT [PROJECT ...] [--size 2048] [--json OUT.json] [--figure OUT.png]

Each PROJECT must be fitted already (`fit`). For each one it measures:
- the bake: seconds (alone), where the pictures came from (source video or working frames), texels;
- agreement of the exported mesh posed into frames with the volume render's opacity (> 0.5) and with
  the person mask (silhouette IoU), on training and held-out frames;
- held-out scores (after the test-time pose fit, as `eval`): the neural render and the textured mesh,
  over the person mask and inside the region both the mesh and the mask cover;
- what registration gains (the same bake without it);
- held-out frames started from the old interpolation of the neighbours against the chosen start.
Prints a table per project and writes JSON. `--figure` saves input | neural render | textured mesh |
normals for held-out frames of the first project (use a synthetic one: no frames of real clips in the repo).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine
from engine.jobs.events import run_stage
from engine.mesh import Mesh
from engine.mesh.textured import save_textured
from engine.metrics import iou, m_psnr, m_ssim
from engine.refine.session import open_session
from engine.texture import BakeConfig, bake_session, load_bake, render_textured, texture_dir

log = logging.getLogger("benchmarks.texture")


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return round(float(np.mean(vals)), 4) if vals else None


def _agreement(session, tm, weights, frames: list[int]) -> dict:
    rows = []
    for i in frames:
        r = session.render_frame(i, normals=False)
        t = render_textured(session, tm, i, weights, supersample=1)
        mask = session.project.mask(i)
        rows.append({"mesh_vs_render": iou(t.mask, r["opacity"] > 0.5), "mesh_vs_mask": iou(t.mask, mask),
                     "render_vs_mask": iou(r["opacity"] > 0.5, mask)})
    return {k: _mean(rows, k) for k in rows[0]}


def _held_out(session, tm_by_name: dict, weights, frames: list[int], start: str, figure: list | None = None) -> dict:
    """Scores after the test-time pose fit from `start` ("auto" or "interpolation")."""
    rows = []
    for i in frames:
        with torch.no_grad():
            session.avatar.pose_delta.weight[i] = 0
            session.avatar.transl_delta.weight[i] = 0
        session.held_out_start = start
        session.fit_frame_pose(i, steps=40, rays=512)
        r = session.render_frame(i, normals=figure is not None)
        image, mask = session.project.frame(i), session.project.mask(i)
        row = {"frame": i, "neural_m_psnr": m_psnr(r["rgb"], image, mask), "neural_m_ssim": m_ssim(r["rgb"], image, mask)}
        for name, tm in tm_by_name.items():
            t = render_textured(session, tm, i, weights)
            both = mask & t.mask
            row[f"{name}_m_psnr"] = m_psnr(t.rgb, image, mask)
            row[f"{name}_m_ssim"] = m_ssim(t.rgb, image, mask)
            if both.any():
                row[f"{name}_inside_m_psnr"] = m_psnr(t.rgb, image, both)
                row[f"{name}_inside_neural_m_psnr"] = m_psnr(r["rgb"], image, both)
            if figure is not None and name == "textured":
                n = (r["normals"] * 0.5 + 0.5) * (r["opacity"][..., None] > 0.5)
                figure.append(np.concatenate([image, r["rgb"], t.rgb, n], 1))
        rows.append(row)
    session.held_out_start = "auto"
    keys = [k for k in rows[0] if k != "frame"]
    return {"frames": frames, **{k: _mean(rows, k) for k in keys}, "per_frame": rows}


def bench_project(root: Path, size: int, figure: list | None, held_frames: int, ablation: bool) -> dict:
    session = open_session(root, require_checkpoint=True)
    project = session.project
    got = load_bake(root, step=session.step)
    if got is not None and got[1].get("size") == size:  # a bake of this checkpoint: its own timing
        tm, report = got
        bake_s = report["seconds"]["total"]
    else:
        t0 = time.perf_counter()
        tm, report = run_stage(bake_session(session, BakeConfig(size=size)))
        bake_s = time.perf_counter() - t0
        save_textured(texture_dir(root), tm, report)
    baked = {"textured": tm}
    if ablation:
        baked["no_registration"] = run_stage(bake_session(session, BakeConfig(size=size, register=False), atlas=tm))[0]
    weights = session.mesh_weights(Mesh(tm.vertices, tm.faces))
    train = project.train_frames[:: max(1, len(project.train_frames) // 6)][:6]
    held = project.held_out[:: max(1, len(project.held_out) // held_frames)][:held_frames]
    row = {
        "project": str(root),
        "frames": project.num_frames,
        "size": [project.meta["width"], project.meta["height"]],
        "step": session.step,
        "bake_seconds": round(bake_s, 1),
        "bake_seconds_by_stage": report["seconds"],
        "bake_source": report["source"],
        "texels": report["texels"],
        "agreement_train": _agreement(session, tm, weights, train),
        "agreement_held_out": _agreement(session, tm, weights, held),
        "held_out": _held_out(session, baked, weights, held, "auto", figure),
        "held_out_interpolation_start": _held_out(session, {}, weights, held, "interpolation"),
    }
    log.info("%s: %s", root, json.dumps({k: v for k, v in row.items() if k not in ("held_out", "held_out_interpolation_start")}))
    return row


def _name(root: str) -> str:
    p = Path(root)
    return p.parent.name if p.name == "project" else p.name  # a synth folder's project: the scene's name


def _table(rows: list[dict]) -> str:
    head = ("| project | bake s | source | mesh∩render IoU (train / held-out) | mesh∩mask IoU | render∩mask IoU | "
            "neural m_psnr / m_ssim | textured m_psnr / m_ssim | inside: neural → textured | no registration | "
            "neural m_psnr, interpolated start |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        h, a, b, i0 = r["held_out"], r["agreement_train"], r["agreement_held_out"], r["held_out_interpolation_start"]
        lines.append(
            f"| {_name(r['project'])} | {r['bake_seconds']} | {r['bake_source']} | {a['mesh_vs_render']:.3f} / "
            f"{b['mesh_vs_render']:.3f} | {b['mesh_vs_mask']:.3f} | {b['render_vs_mask']:.3f} | "
            f"{h['neural_m_psnr']:.2f} / {h['neural_m_ssim']:.3f} | {h['textured_m_psnr']:.2f} / {h['textured_m_ssim']:.3f} | "
            f"{h['textured_inside_neural_m_psnr']:.2f} → {h['textured_inside_m_psnr']:.2f} | "
            f"{h.get('no_registration_m_psnr') or float('nan'):.2f} | {i0['neural_m_psnr']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("projects", nargs="+", type=Path)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--json", type=Path)
    p.add_argument("--figure", type=Path)
    p.add_argument("--held-out", type=int, default=12, help="held-out frames scored per project (spread; default 12)")
    p.add_argument("--ablation", type=int, default=99, help="registration ablation for the first N projects")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    rows = []
    for k, root in enumerate(args.projects):
        fig: list | None = [] if args.figure is not None and k == 0 else None
        rows.append(bench_project(root, args.size, fig, args.held_out, k < args.ablation))
        if args.json:  # after every project: a long run that is stopped keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                                             "texture_size": args.size, "rows": rows}, indent=1))
        if fig:
            import cv2

            img = (np.concatenate(fig[:3], 0) * 255).clip(0, 255).astype(np.uint8)
            args.figure.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(args.figure), img[..., ::-1])
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "texture_size": args.size, "rows": rows}
    print(_table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
