"""`synth`: generate a synthetic scene with exact ground truth and a project folder.

Output layout::

    OUT/
      video.mp4                  the rendered clip (H.264)
      project/                   the project the engine reads (see engine/project)
      ground_truth/
        scene.json               options, seed, image size, fps
        background.png           the static background plate
        body.npz                 the true body parameters (project/body.npz has --pose-noise added)
        clothed_canonical.npz    vertices [V,3], faces [F,3], colors [V,3], labels [V], weights [V,J]
        clothed_canonical.ply    the same mesh with vertex colours, for viewers
        posed_vertices.npy       [N, V, 3] the true clothed mesh in every frame (faces as above)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from engine.body import BodyConfig, BodyParams, create_body_model
from engine.body.base import KEYPOINT_NAMES, BodyModel
from engine.errors import UserError
from engine.geometry.camera import Camera, look_at, project
from engine.io import atomic
from engine.io.video import write_mp4
from engine.jobs.events import CancelToken, Done, Event, Log, Progress
from engine.mesh import write_mesh
from engine.project import Project, check_output_dir
from engine.project_body import write_project_body
from engine.render.raycast import render_mesh
from engine.synth.appearance import background_image, vertex_colors
from engine.synth.garments import GARMENTS, clothed_canonical_mesh
from engine.synth.motion import MOTIONS, motion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthConfig:
    """What synthetic scene to make."""

    frames: int = 30
    """Number of frames."""
    size: int = 256
    """Long side of the images in pixels (portrait 4:3)."""
    motion: str = "turn"
    """Motion: turn (in place, one full turn) or walk (once around a circle)."""
    garment: str = "shirt"
    """Clothing: none (hair only), shirt (loose shirt and trousers) or dress."""
    seed: int = 0
    """Random seed: body shape, colours, patterns, background."""
    pose_noise: float = 0.0
    """Degrees of noise added to the stored body pose (not to the rendering)."""
    fps: float = 25.0
    """Frame rate of the video."""
    voxel: float = 0.008
    """Marching-cubes voxel of the clothed ground-truth mesh (metres)."""

    def validate(self) -> None:
        if not 1 <= self.frames <= 10000:
            raise UserError(f"--frames must be between 1 and 10000 (got {self.frames}).")
        if not 32 <= self.size <= 4096:
            raise UserError(f"--size must be between 32 and 4096 pixels (got {self.size}).")
        if self.motion not in MOTIONS:
            raise UserError(f"--motion must be one of {', '.join(MOTIONS)} (got {self.motion!r}).")
        if self.garment not in GARMENTS:
            raise UserError(f"--garment must be one of {', '.join(GARMENTS)} (got {self.garment!r}).")
        if not 0 <= self.pose_noise <= 45:
            raise UserError(f"--pose-noise must be between 0 and 45 degrees (got {self.pose_noise}).")
        if not 0 < self.fps <= 240:
            raise UserError(f"--fps must be in (0, 240] (got {self.fps}).")


def _image_size(size: int) -> tuple[int, int]:
    """Portrait 3:4 with even sides (H.264 needs them)."""
    h = size - size % 2
    w = int(round(size * 3 / 4))
    return w - w % 2, h


def _fit_camera(all_vertices: np.ndarray, width: int, height: int) -> Camera:
    """A static camera in front (+Z) that keeps the person inside 6–94 % of the frame."""
    f = 1.2 * height
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    lo, hi = all_vertices.reshape(-1, 3).min(0), all_vertices.reshape(-1, 3).max(0)
    target = (lo + hi) / 2
    for dist in np.arange(1.5, 30.0, 0.05):
        eye = np.array([target[0], target[1] + 0.15, hi[2] + dist])
        R, t = look_at(eye, target)
        cam = Camera(K, R, t, width, height)
        uv = project(all_vertices.reshape(-1, 3)[::7], cam)
        if (uv[:, 0].min() > 0.06 * width and uv[:, 0].max() < 0.94 * width
                and uv[:, 1].min() > 0.06 * height and uv[:, 1].max() < 0.94 * height):
            return cam
    raise RuntimeError("could not frame the person")


def _cloth_weights(body: BodyModel, body_verts: np.ndarray, cloth_verts: np.ndarray) -> np.ndarray:
    """Skinning weights for clothing: inverse-distance blend of the 8 nearest body vertices
    (smoother than nearest-vertex, so skirts do not tear between the legs)."""
    d, idx = cKDTree(body_verts).query(cloth_verts, k=8)
    w = 1.0 / np.maximum(d, 1e-4) ** 2
    w /= w.sum(1, keepdims=True)
    sw = body.skin_weights.numpy()
    out = np.einsum("pk,pkj->pj", w, sw[idx])
    return (out / out.sum(1, keepdims=True)).astype(np.float32)


def synth_job(config: SynthConfig, out_dir: str | Path, overwrite: bool = False,
              cancel: CancelToken | None = None) -> Iterator[Event]:
    """Generates the scene into `out_dir` (built in a staging folder, swapped in at the end)."""
    config.validate()
    cancel = cancel or CancelToken()
    out = check_output_dir(out_dir, overwrite)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)

    yield Progress("body model", 0, 1)
    body = create_body_model(BodyConfig("anny"))
    shape = torch.tensor(np.clip(rng.normal(0.5, 0.15, body.shape_dim), 0.05, 0.95), dtype=torch.float32)
    shape[1] = float(rng.uniform(0.45, 0.7))  # adult ages only
    pose, orient, transl = motion(body, config.motion, config.frames, rng)
    params = BodyParams(shape, pose, orient, transl)
    yield Progress("body model", 1, 1)

    yield Progress("clothed mesh", 0, 1)
    cloth = clothed_canonical_mesh(body, shape, config.garment, rng, voxel=config.voxel)
    canon_body = body.canonical_vertices(shape).numpy()
    kp = dict(zip(KEYPOINT_NAMES, body.keypoints(torch.as_tensor(canon_body)[None])[0].numpy()))
    colors = vertex_colors(cloth.vertices, cloth.labels, rng, kp).astype(np.float32)
    weights = _cloth_weights(body, canon_body, cloth.vertices)
    yield Progress("clothed mesh", 1, 1)
    cancel.check()

    # Pose every frame (exact, by the same skinning the engine inverts).
    tfs = body.bone_transforms(params)
    cv = torch.as_tensor(cloth.vertices, dtype=torch.float32)
    wt = torch.as_tensor(weights)
    posed = np.stack([body.canonical_to_posed(cv, wt, shape, tf).numpy() for tf in tfs]).astype(np.float32)
    width, height = _image_size(config.size)
    camera = _fit_camera(posed, width, height)
    background = background_image(width, height, rng)

    noisy = params
    if config.pose_noise > 0:
        sigma = math.radians(config.pose_noise)
        noisy_pose = pose.clone()
        idx = list(body.semantic_bones.values())
        noisy_pose[:, idx] += torch.as_tensor(rng.normal(0, sigma, (config.frames, len(idx), 3)), dtype=torch.float32)
        noisy_orient = orient + torch.as_tensor(rng.normal(0, sigma, orient.shape), dtype=torch.float32)
        noisy = BodyParams(shape, noisy_pose, noisy_orient, transl)

    with atomic.staged_folder(out, overwrite) as stage:
        gt = stage / "ground_truth"
        gt.mkdir()
        proj = Project.create(stage / "project", body_model=body.name, num_frames=config.frames, width=width,
                              height=height, fps=config.fps, ground_truth="../ground_truth",
                              source={"type": "synthetic", **asdict(config)})
        proj.write_cameras([camera] * config.frames)
        proj.write_body(noisy)
        write_project_body(proj, body, shape)
        atomic.save_npz(gt / "body.npz", model=np.array(body.name), **params.to_numpy())
        atomic.save_npz(gt / "clothed_canonical.npz", vertices=cloth.vertices.astype(np.float32),
                        faces=cloth.faces.astype(np.int32), colors=colors, labels=cloth.labels.astype(np.uint8),
                        weights=weights)
        write_mesh(gt / "clothed_canonical.ply", cloth.vertices, cloth.faces, colors)
        atomic.save_npy(gt / "posed_vertices.npy", posed)
        atomic.write_image(gt / "background.png", background)
        atomic.write_json(gt / "scene.json", {"config": asdict(config), "width": width, "height": height,
                                              "camera": camera.to_dict(), "body_model": body.name})
        frames_rgb = []
        for i in range(config.frames):
            cancel.check()
            r = render_mesh(posed[i], cloth.faces, colors, camera, background)
            rgb8 = np.clip(np.round(r.rgb * 255), 0, 255).astype(np.uint8)
            proj.write_frame(i, rgb8)
            proj.write_mask(i, r.mask)
            frames_rgb.append(rgb8)
            yield Progress("render", i + 1, config.frames)
        yield Progress("video", 0, 1)
        with atomic.atomic_path(stage / "video.mp4") as tmp:
            write_mp4(tmp, frames_rgb, config.fps)
        yield Progress("video", 1, 1)
    yield Log(f"synthetic scene written to {out}")
    yield Done(out)
