"""README figures made by the code: `python -m benchmarks.figures SCENE_DIR [OUT.png]`.

A strip of frames of a synthetic scene, their person masks, and the clothed ground-truth mesh
next to the naked body in canonical pose. `avatar PROJECT [OUT.png]`: a held-out frame of a fitted avatar.
`normals OUT.png PROJECT...`: the posed meshes' normal maps of fitted avatars of synthetic scenes beside
the true clothed mesh's (`normal_maps`; each PROJECT's panel is cached as PROJECT/figure_normals.npz, so
panels made by another version of the code can be put side by side).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from engine.body import create_body_model
from engine.evaluation import EvalConfig
from engine.geometry.camera import Camera, look_at
from engine.io.atomic import write_image
from engine.project import Project
from engine.render.raycast import render_mesh
from engine.synth.ground_truth import GroundTruth


def scene_figure(scene: Path, out: Path, picks: int = 4) -> None:
    proj = Project.open(scene / "project")
    gt = GroundTruth.load(scene / "ground_truth")
    idx = np.linspace(0, proj.num_frames - 1, picks + 1)[:-1].round().astype(int)
    frames = [proj.frame(i) for i in idx]
    masks = [np.repeat(proj.mask(i)[..., None], 3, -1).astype(np.float32) for i in idx]
    h, w = frames[0].shape[:2]
    K = np.array([[1.1 * h, 0, w / 2], [0, 1.1 * h, h / 2], [0, 0, 1.0]])
    body = create_body_model()
    naked = body.canonical_vertices(gt.body.shape).numpy()
    renders = []
    for verts, faces, colors in ((gt.canonical_vertices, gt.faces, gt.colors),
                                 (naked, body.faces, np.full((len(naked), 3), 0.75))):
        centre = (verts.min(0) + verts.max(0)) / 2
        for eye in ((0, 0, 3.2), (0, 0, -3.2)):
            R, t = look_at(centre + np.array(eye), centre)
            r = render_mesh(verts, faces, colors, Camera(K, R, t, w, h), np.ones((h, w, 3), np.float32))
            renders.append(r.rgb)
    row1 = np.concatenate(frames + renders[:2], 1)
    row2 = np.concatenate(masks + renders[2:], 1)
    write_image(out, np.concatenate([row1, row2], 0))


def avatar_figure(project: Path, out: Path, frame: int | None = None) -> None:
    """Held-out frame: input | avatar render | avatar normals, then the true clothed mesh and the
    avatar's mesh posed into that frame, rendered with the same camera."""
    from engine.refine.session import open_session

    s = open_session(project)
    gt = GroundTruth.load(s.project.ground_truth_dir)
    i = frame if frame is not None else s.project.held_out[0]
    s.fit_frame_pose(i, steps=EvalConfig.test_time_pose_steps, rays=512)  # as `eval` does
    r = s.render_frame(i)
    cam = s.cameras[i]
    white = np.ones((cam.height, cam.width, 3), np.float32)
    truth = render_mesh(gt.posed_vertices(i), gt.faces, np.full((len(gt.canonical_vertices), 3), 0.8),
                        cam, white).rgb
    mesh = s.posed_mesh(s.canonical_mesh(256), i)
    ours = render_mesh(mesh.vertices, mesh.faces, np.full((len(mesh.vertices), 3), 0.8), cam, white).rgb
    normals = np.where(r["opacity"][..., None] > 0.5, 0.5 + 0.5 * r["normals"], 1.0)
    write_image(out, np.concatenate([s.project.frame(i), r["rgb"], normals, truth, ours], 1))


def _normal_image(normals: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[..., None], 0.5 + 0.5 * normals, 1.0).astype(np.float32)


def normal_panel(project: Path, frame: int | None = None, resolution: int = 256) -> dict[str, np.ndarray]:
    """The avatar's mesh (as exported) posed into a held-out frame (after eval's test-time pose fit), and
    the true clothed mesh in that frame: input, true normals and avatar normals [H, W, 3]."""
    from engine.refine.session import open_session

    s = open_session(project)
    gt = GroundTruth.load(s.project.ground_truth_dir)
    i = frame if frame is not None else s.project.held_out[0]
    s.fit_frame_pose(i, steps=EvalConfig.test_time_pose_steps, rays=512)
    cam = s.cameras[i]
    truth = render_mesh(gt.posed_vertices(i), gt.faces, np.ones((len(gt.canonical_vertices), 3)), cam, supersample=1, shaded=False)
    mesh = s.posed_mesh(s.canonical_mesh(resolution), i)
    ours = render_mesh(mesh.vertices, mesh.faces, np.ones((len(mesh.vertices), 3)), cam, supersample=1, shaded=False)
    return {"input": s.project.frame(i), "truth": _normal_image(truth.normals, truth.mask),
            "avatar": _normal_image(ours.normals, ours.mask)}


def normal_maps(out: Path, projects: list[Path]) -> None:
    """One row per project: input | true mesh normals | the avatar mesh's normals."""
    rows = []
    for p in projects:
        cache = p / "figure_normals.npz"
        if not cache.exists():
            np.savez_compressed(cache, **normal_panel(p))
        d = np.load(cache)
        rows.append(np.concatenate([d["input"], d["truth"], d["avatar"]], 1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=1.0) for r in rows]
    write_image(out, np.concatenate(rows, 0))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "normals":
        normal_maps(Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]])
    elif len(sys.argv) > 1 and sys.argv[1] == "avatar":
        avatar_figure(Path(sys.argv[2]), Path(sys.argv[3] if len(sys.argv) > 3 else "resources/docs/avatar_result.png"))
    else:
        scene_figure(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "resources/docs/synthetic_scene.png"))
