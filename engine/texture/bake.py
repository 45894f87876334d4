"""`bake`: a UV texture for the fitted avatar's mesh, read from the video's own pixels.

Every texel is a point on the canonical mesh. Posed into each training frame with the refined body
(the posing export and eval use), it is looked up in that frame's picture, at the source video's
resolution when the source is still there. A frame's colour counts where the texel faces the camera,
is not hidden behind another part of the posed mesh (a depth map ray cast from the camera), and lies
inside the person's mask away from its edge and the mesh silhouette's; frames whose body fits the
mask badly or that are blurred count less. Each frame is then registered (a small image-space shift
per body part) against the blend of the others before the final robust blend. Texels no frame saw
take the colour field's colour. Held-out frames are never used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from scipy.ndimage import distance_transform_edt, maximum_filter, minimum_filter

from engine.errors import UserError
from engine.geometry.camera import Camera, rays_through
from engine.geometry.texture_sampling import sample_texture
from engine.jobs.events import CancelToken, Done, Event, Progress
from engine.mesh import Mesh
from engine.mesh.textured import TexturedMesh, load_textured, save_textured
from engine.mesh.uv import (
    BILINEAR_MARGIN,
    TEXTURE_DEFAULT,
    check_texture_size,
    dilate,
    texel_samples,
    uv_atlas,
)
from engine.refine.render import RENDER_MARGIN_M, RENDER_MARGIN_PX, person_box
from engine.refine.session import Session, open_session
from engine.render.raycast import RaycastScene, raycasting_scene
from engine.settings import check_choices
from engine.texture.blend import FrameSamples, robust_blend
from engine.texture.register import register_frame
from engine.texture.sources import SourceView, read_views

log = logging.getLogger(__name__)

TEXTURE_DIR = "texture"  # inside the project
MIN_COS = 0.15  # texels seen more obliquely than this (about 80°) take nothing from the frame
EDGE_PX = 2.0  # working pixels over which weights ramp up from the mask's and the silhouette's edges
DEPTH_EDGE = 0.05  # metres: a depth step this large between neighbouring pixels is an occlusion edge
DEPTH_TOLERANCE = 0.01  # metres (plus the pixel footprint's slope): nearer surfaces hide a texel
FIELD_WEIGHT = 0.05  # a texel seen this little leans on the colour field (in frontal, sharp samples)


@dataclass(frozen=True)
class BakeConfig:
    """How to bake the texture."""

    size: int = TEXTURE_DEFAULT
    """Texture width and height in pixels (1024–4096)."""
    resolution: int = 256
    """Marching-cubes resolution of the mesh that is textured."""
    source: Literal["auto", "frames"] = "auto"
    """Pictures to bake from: auto (the source video at its own resolution when it is still there, else
    the working frames) or frames (the working frames)."""
    register: bool = True
    """Align each frame to the others (a small image shift per body part) before blending."""
    padding: int = 4
    """Texels between charts, filled by dilation so seams do not bleed."""

    def validate(self) -> None:
        check_texture_size(self.size)
        if not 32 <= self.resolution <= 1024:
            raise UserError(f"--resolution must be between 32 and 1024 (got {self.resolution}).")
        if not 1 <= self.padding <= 32:
            raise UserError(f"texture padding must be between 1 and 32 texels (got {self.padding}).")
        check_choices(self)


@dataclass
class _Texels:
    """The texels of an atlas as surface points: corners [T, 3] (vertex ids), bary [T, 3], face [T]."""

    rows: np.ndarray
    cols: np.ndarray
    face: np.ndarray
    bary: np.ndarray
    corners: np.ndarray

    def points(self, vertices: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(np.asarray(vertices, np.float32))
        b = torch.as_tensor(self.bary)
        c = torch.as_tensor(self.corners)
        return (v[c[:, 0]] * b[:, :1] + v[c[:, 1]] * b[:, 1:2] + v[c[:, 2]] * b[:, 2:]).numpy()


def _face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    n = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    return (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _depth_map(scene: RaycastScene, view: SourceView) -> np.ndarray:
    """Camera depth [h, w] of the posed mesh at the crop's pixel centres (inf where empty)."""
    h, w = view.image.shape[:2]
    u, v = np.meshgrid(np.arange(w) + view.x0 + 0.5, np.arange(h) + view.y0 + 0.5)
    _, d = rays_through(view.camera, np.stack([u, v], -1))
    t = scene.cast_rays(view.camera.center, d)["t_hit"]
    return (t * (d @ view.camera.R[2])).astype(np.float32)


def _to_uv(xy: np.ndarray, h: int, w: int) -> np.ndarray:
    """Crop pixel coordinates (a pixel's centre is its index + 0.5) → the UVs `sample_texture` reads."""
    return np.stack([xy[:, 0] / w, 1.0 - xy[:, 1] / h], 1)


def frame_samples(view: SourceView, posed: np.ndarray, faces: np.ndarray, texels: _Texels,
                  working_focal: float) -> FrameSamples:
    """The colour samples one view gives the texels (mesh vertices `posed` [V, 3] in that frame)."""
    cam: Camera = view.camera
    h, w = view.image.shape[:2]
    scale = float(cam.K[0, 0]) / working_focal  # source pixels per working pixel
    fn = _face_normals(posed, faces)
    x = texels.points(posed)
    to_cam = cam.center.astype(np.float32) - x
    dist = np.linalg.norm(to_cam, axis=1)
    cos = np.einsum("tc,tc->t", fn[texels.face], to_cam) / np.maximum(dist, 1e-9)
    sel = np.flatnonzero(cos > MIN_COS)
    xc = x[sel] @ cam.R.T.astype(np.float32) + cam.t.astype(np.float32)
    z = xc[:, 2]
    px = (xc[:, :2] / z[:, None]) * np.diag(cam.K)[:2].astype(np.float32) + cam.K[:2, 2].astype(np.float32)
    px -= np.array([view.x0, view.y0], np.float32)
    inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h) & (z > 0)
    sel, px, z, cos = sel[inside], px[inside], z[inside], cos[sel][inside]

    scene = raycasting_scene(posed, faces)
    depth = _depth_map(scene, view)
    ix = np.clip(px[:, 0].astype(np.int64), 0, w - 1)
    iy = np.clip(px[:, 1].astype(np.int64), 0, h - 1)
    footprint = z / float(cam.K[0, 0])  # metres per source pixel at the texel
    tol = DEPTH_TOLERANCE + 2.0 * footprint * np.sqrt(np.maximum(1.0 - cos**2, 0.0)) / cos
    visible = z <= depth[iy, ix] + tol
    covered = np.isfinite(depth)
    ramp = EDGE_PX * scale
    in_mask = np.clip(distance_transform_edt(view.mask) / ramp, 0.0, 1.0)
    # Away from the silhouette and from depth edges inside it (an arm in front of the chest): a lookup
    # there blends both sides' colours.
    d = np.where(covered, depth, 1e3)
    jump = (maximum_filter(d, size=3) - minimum_filter(d, size=3)) > DEPTH_EDGE
    in_sil = np.clip(distance_transform_edt(covered & ~jump) / ramp, 0.0, 1.0)
    weight = (cos**2) * in_mask[iy, ix] * in_sil[iy, ix]
    keep = visible & (weight > 1e-4)
    sel, px, weight = sel[keep], px[keep], weight[keep]
    colors = sample_texture(view.image, _to_uv(px, h, w))
    # The frame's own quality: how well the posed mesh covers the person (a badly fitted pose smears
    # every texel it touches) and how sharp the person is (motion blur).
    union = np.logical_or(covered, view.mask).sum()
    iou = float(np.logical_and(covered, view.mask).sum() / max(union, 1))
    grey = cv2.cvtColor((view.image * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    lap = cv2.Laplacian(cv2.resize(grey, None, fx=1 / scale, fy=1 / scale, interpolation=cv2.INTER_AREA)
                        if scale > 1 else grey, cv2.CV_32F)
    small_mask = cv2.resize(view.mask.astype(np.uint8), lap.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    sharp = float(lap[small_mask].var()) if small_mask.any() else 0.0
    return FrameSamples(view.frame, sel.astype(np.int64), colors, weight.astype(np.float32),
                        extra={"px": px, "view": view, "iou": iou, "sharpness": sharp})


def _frame_weights(samples: list[FrameSamples]) -> None:
    """Frames whose pose fits the mask worse than the others, or that are blurrier, count less."""
    if not samples:
        return
    ious = np.array([s.extra["iou"] for s in samples])
    sharp = np.array([s.extra["sharpness"] for s in samples])
    best_iou, med_sharp = float(np.percentile(ious, 90)), float(np.median(sharp)) or 1.0
    for s, iou, sh in zip(samples, ious, sharp):
        fit = np.clip(1.0 - (best_iou - iou) / 0.1, 0.05, 1.0) ** 2  # 0.1 IoU below the best: near nothing
        s.frame_weight = float(fit * np.clip(sh / med_sharp, 0.25, 1.0))


def _part_labels(session: Session, canonical_points: np.ndarray) -> np.ndarray:
    """Body part of each canonical point [T, 3]: its nearest semantic bone's joint (registration shifts
    each part of a frame on its own, as limbs are misplaced independently)."""
    from scipy.spatial import cKDTree

    tf = session.deformer.star_tf.detach().cpu().numpy()
    bones = sorted(set(session.body.semantic_bones.values()))
    joints = tf[bones, :3, 3]
    return cKDTree(joints).query(canonical_points, k=1, workers=-1)[1].astype(np.int64)


def atlas_texels(tm: TexturedMesh) -> _Texels:
    """The texels of `tm`'s atlas as points of its surface (with the bilinear margin: texels a lookup
    near a face reads get that face's colour too)."""
    ts = texel_samples(tm, BILINEAR_MARGIN)
    return _Texels(ts.rows, ts.cols, ts.face, ts.bary.astype(np.float32), tm.faces[ts.face])


def bake_views(tm: TexturedMesh, texels: _Texels, posed: dict[int, np.ndarray], views: Iterable[SourceView],
               working_focal: dict[int, float], parts: np.ndarray | None, cancel: CancelToken
               ) -> Generator[Event, None, tuple[np.ndarray, np.ndarray, list[FrameSamples], dict]]:
    """The blend of what `views` show of the texels, with `tm` posed into each view's frame as `posed`
    (frame → vertices [V, 3]); with body-part labels `parts` [T], each frame is registered first.
    Returns colours [T, 3], support [T] (total weight; 0 where no frame saw the texel), the samples and
    the registration shifts (frame → [P, 2] working pixels)."""
    samples: list[FrameSamples] = []
    n_views = len(posed)
    yield Progress("bake: frames", 0, n_views)
    for k, view in enumerate(views):
        cancel.check()
        samples.append(frame_samples(view, posed[view.frame], tm.faces, texels, working_focal[view.frame]))
        yield Progress("bake: frames", k + 1, n_views)
    _frame_weights(samples)
    n = len(texels.rows)
    shifts = {}
    if parts is not None and len(samples) > 1:
        mean, _ = robust_blend(samples, n)
        for k, s in enumerate(samples):
            cancel.check()
            shifts[s.frame] = register_frame(s, mean, parts, working_focal[s.frame])
            yield Progress("bake: register", k + 1, len(samples))
    color, support = robust_blend(samples, n)
    return color, support, samples, shifts


def bake_session(session: Session, cfg: BakeConfig, cancel: CancelToken | None = None,
                 atlas: TexturedMesh | None = None) -> Generator[Event, None, tuple[TexturedMesh, dict]]:
    """Bakes the session's avatar; yields progress, returns the textured mesh and a report. `atlas`: a
    charted mesh of this avatar to fill again (else the canonical mesh is extracted and charted)."""
    cancel = cancel or CancelToken()
    cfg.validate()
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    project = session.project
    frames = project.train_frames or list(range(project.num_frames))
    if atlas is None:
        yield Progress("bake: mesh", 0, 1)
        mesh = session.canonical_mesh(cfg.resolution)
        seconds["mesh"] = time.perf_counter() - t0
        cancel.check()
        yield Progress("bake: atlas", 0, 1)
        t = time.perf_counter()
        tm = uv_atlas(Mesh(mesh.vertices, mesh.faces, normals=mesh.normals), cfg.size, cfg.padding)
        seconds["atlas"] = time.perf_counter() - t
    else:
        tm = replace(atlas, texture=np.zeros((cfg.size, cfg.size, 3), np.float32))
    t = time.perf_counter()
    texels = atlas_texels(tm)
    seconds["texels"] = time.perf_counter() - t
    log.info("atlas: %d faces, %d texels of %d² (%.0f%%)", tm.num_faces, len(texels.rows), cfg.size,
             100 * len(texels.rows) / cfg.size**2)

    t = time.perf_counter()
    weights = session.mesh_weights(Mesh(tm.vertices, tm.faces))
    posed = {}
    with torch.no_grad():
        for i in frames:
            posed[i] = session.posed_mesh(Mesh(tm.vertices, tm.faces), i, weights).vertices
    boxes = {i: person_box(session.cameras[i], posed[i], RENDER_MARGIN_M / 4, RENDER_MARGIN_PX) for i in frames}
    seconds["pose"] = time.perf_counter() - t
    t = time.perf_counter()
    views, source = read_views(project, frames, boxes, use_source=cfg.source == "auto", cancel=cancel)
    working_focal = {i: float(session.cameras[i].K[0, 0]) for i in frames}
    parts = _part_labels(session, texels.points(tm.vertices)) if cfg.register else None
    color, support, samples, shifts = yield from bake_views(tm, texels, posed, views, working_focal, parts, cancel)
    seconds["frames"] = time.perf_counter() - t
    n = len(texels.rows)

    t = time.perf_counter()
    # Texels few frames saw lean on the colour field (under the arms, the soles).
    weak = support < FIELD_WEIGHT
    if weak.any():
        with torch.no_grad():
            pts = torch.as_tensor(texels.points(tm.vertices)[weak], device=session.device)
            field = np.concatenate([session.avatar.rgb(p, session.avatar.sdf(p)[1]).cpu().numpy()
                                    for p in pts.split(65536)]).clip(0, 1) if len(pts) else np.zeros((0, 3))
        a = (support[weak] / FIELD_WEIGHT)[:, None]
        color[weak] = a * color[weak] + (1 - a) * field
    image = np.zeros((cfg.size, cfg.size, 3), np.float32)
    image[texels.rows, texels.cols] = color
    covered = np.zeros((cfg.size, cfg.size), bool)
    covered[texels.rows, texels.cols] = True
    image = dilate(image, covered, cfg.padding * 2)
    tm.texture = image
    seconds["blend"] = time.perf_counter() - t
    seconds = {k: round(v, 2) for k, v in seconds.items()}
    report = {
        "step": session.step,
        "size": cfg.size,
        "resolution": cfg.resolution,
        "source": source,
        "frames": [s.frame for s in samples],
        "frame_weights": {s.frame: round(s.frame_weight, 3) for s in samples},
        "shifts_px": {f: [round(float(v), 2) for v in np.abs(sh).max(0)] for f, sh in shifts.items()} if shifts else {},
        "texels": n,
        "unseen_fraction": round(float((support == 0).mean()), 4),
        "faces": tm.num_faces,
        "seconds": {**seconds, "total": round(time.perf_counter() - t0, 2)},
    }
    return tm, report


def texture_dir(project_root: str | Path) -> Path:
    return Path(project_root) / TEXTURE_DIR


def load_bake(project_root: str | Path, step: int | None = None) -> tuple[TexturedMesh, dict] | None:
    """The project's baked texture, when there is one (and, with `step`, only if it was baked from the
    checkpoint of that step)."""
    got = load_textured(texture_dir(project_root))
    if got is None or (step is not None and int(got[1].get("step", -1)) != step):
        return None
    return got


def bake_job(project_dir: str | Path, cfg: BakeConfig = BakeConfig(), device: str = "cpu",
             body_model_dir: str | None = None, cancel: CancelToken | None = None) -> Iterator[Event]:
    """Bakes the project's fitted avatar and saves the result in PROJECT/texture/ (`load_bake`)."""
    cfg.validate()
    session = open_session(project_dir, None, device, body_model_dir, require_checkpoint=True)
    tm, report = yield from bake_session(session, cfg, cancel)
    save_textured(texture_dir(session.project.root), tm, report)
    log.info("baked a %d² texture from %d frames (%s) in %.1f s", cfg.size, len(report["frames"]),
             report["source"], report["seconds"]["total"])
    yield Done({"texture": str(texture_dir(session.project.root)), **report})
