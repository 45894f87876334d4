"""`export`: meshes of a fitted avatar (canonical, one frame, or every frame), with vertex colours or
with the UV texture baked from the video (engine/texture); and the rigged avatar (`export --rigged`): a glTF
binary with the body's skeleton, skin weights and the video's motion (engine/rig)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.jobs.events import CancelToken, Done, Event, Log, Progress
from engine.mesh import (
    FORMATS,
    TEXTURED_FORMATS,
    Mesh,
    UpAxis,
    decimate,
    write_mesh,
    write_sequence,
    write_textured,
)
from engine.mesh.textured import TexturedMesh, save_textured
from engine.mesh.uv import TEXTURE_DEFAULT, check_texture_size
from engine.project import check_output_file
from engine.refine.session import Session, open_session
from engine.rig import RestPose, RiggedAvatar, WeightConfig, build_rig, write_rigged_glb
from engine.settings import check_choices, one_of
from engine.texture import BakeConfig, bake_session, load_bake, posed_textured, texture_dir

log = logging.getLogger(__name__)

# Every format `export` writes: untextured (obj, ply) and textured (obj, glb).
EXPORT_FORMATS: tuple[str, ...] = tuple(sorted(set(FORMATS) | set(TEXTURED_FORMATS)))


@dataclass(frozen=True)
class ExportConfig:
    """What mesh to write."""

    resolution: int = 256
    """Marching-cubes resolution (cells along the longest side)."""
    faces: int | None = None
    """Decimate to at most this many triangles (None: keep all)."""
    frame: int | None = None
    """Pose the mesh into this frame (None: canonical star pose)."""
    up: UpAxis = "y"
    """Up axis of the written file: y (Blender, most tools) or z."""
    texture: int | None = None
    """Texture the mesh with a UV texture this many pixels wide (1024–4096) baked from the video: OBJ + MTL +
    PNG, or .glb (None: vertex colours; a .glb is always textured, 2048 unless given)."""

    def validate(self, num_frames: int) -> None:
        if not 16 <= self.resolution <= 1024:
            raise UserError(f"--resolution must be between 16 and 1024 (got {self.resolution}).")
        if self.faces is not None and self.faces < 100:
            raise UserError(f"--faces must be at least 100 (got {self.faces}).")
        if self.frame is not None and not 0 <= self.frame < num_frames:
            raise UserError(f"--frame must be between 0 and {num_frames - 1} (got {self.frame}).")
        if self.texture is not None:
            check_texture_size(self.texture)
        check_choices(self)


def canonical_mesh(session: Session, cfg: ExportConfig) -> Mesh:
    mesh = session.canonical_mesh(cfg.resolution)
    return decimate(mesh, cfg.faces) if cfg.faces else mesh


def textured_mesh(session: Session, cfg: ExportConfig, cancel: CancelToken) -> Iterator[Event]:
    """The project's bake when it fits (this checkpoint, size and resolution), else a new bake, saved in the
    project for the app and `eval`; the generator returns the canonical textured mesh."""
    size = cfg.texture or TEXTURE_DEFAULT
    got = load_bake(session.project.root, step=session.step)
    if got is not None and got[1].get("size") == size and got[1].get("resolution") == cfg.resolution:
        return got[0]
    tm, report = yield from bake_session(session, BakeConfig(size=size, resolution=cfg.resolution), cancel)
    save_textured(texture_dir(session.project.root), tm, report)
    return tm


def export_job(project_dir: str | Path, out: str | Path, cfg: ExportConfig = ExportConfig(), sequence: bool = False,
               fmt: str = "obj", overwrite: bool = False, device: str = "cpu", body_model_dir: str | None = None,
               cancel: CancelToken | None = None) -> Iterator[Event]:
    """Writes `out` (.obj/.ply; textured .obj/.glb), or with `sequence` one `fmt` file per frame into the
    folder `out` (textured OBJs share one material and image)."""
    cancel = cancel or CancelToken()
    out = Path(out)
    suffix = (fmt if sequence else out.suffix.lower().lstrip("."))
    if suffix == "glb" and cfg.texture is None:
        cfg = replace(cfg, texture=TEXTURE_DEFAULT)
    textured = cfg.texture is not None
    allowed = TEXTURED_FORMATS if textured else FORMATS
    if suffix not in allowed:
        what = "a textured mesh" if textured else "a mesh"
        opt = "--format" if sequence else "the output file"
        raise UserError(f"{opt} must be {one_of(tuple('.' + f for f in allowed))} for {what} (got {suffix or '(none)'!r}).")
    session = open_session(project_dir, None, device, body_model_dir, require_checkpoint=True)
    n = session.project.num_frames
    cfg.validate(n)
    if not sequence and not overwrite:
        # A textured OBJ also writes its material and image beside it.
        beside = [out.with_suffix(".mtl"), out.with_suffix(".png")] if textured and suffix == "obj" else []
        clash = next((p for p in [out, *beside] if p.exists()), None)
        if clash is not None:
            raise UserError(f"{clash} exists; pass --overwrite to replace it.")
    if textured:
        yield from _export_textured(session, out, cfg, sequence, suffix, overwrite, cancel)
        return
    yield Progress("mesh", 0, 1)
    mesh = canonical_mesh(session, cfg)
    yield Progress("mesh", 1, 1)
    if sequence:
        weights = session.mesh_weights(mesh)

        def frames():
            for i in range(n):
                cancel.check()
                yield session.posed_mesh(mesh, i, weights)

        paths = write_sequence(out, frames(), fmt=suffix, up=cfg.up, overwrite=overwrite)
        yield Done({"files": [str(p) for p in paths], "faces": mesh.num_faces})
        return
    if cfg.frame is not None:
        mesh = session.posed_mesh(mesh, cfg.frame)
    write_mesh(out, mesh, up=cfg.up)
    yield Done({"files": [str(out)], "faces": mesh.num_faces, "vertices": mesh.num_vertices})


def _export_textured(session: Session, out: Path, cfg: ExportConfig, sequence: bool, fmt: str, overwrite: bool,
                     cancel: CancelToken) -> Iterator[Event]:
    if cfg.faces is not None:
        raise UserError("--faces cannot be combined with a texture (decimating would undo the UV atlas); "
                        "lower --resolution instead.")
    tm: TexturedMesh = yield from textured_mesh(session, cfg, cancel)
    if not sequence:
        if cfg.frame is not None:
            tm = posed_textured(session, tm, cfg.frame)
        files = write_textured(out, tm, up=cfg.up)
        yield Done({"files": [str(p) for p in files], "faces": tm.num_faces, "vertices": tm.num_vertices,
                    "texture": tm.texture_size})
        return
    n = session.project.num_frames
    out.mkdir(parents=True, exist_ok=True)
    names = [out / f"frame_{i:06d}.{fmt}" for i in range(n)]
    clash = [p for p in names if p.exists()]
    if clash and not overwrite:
        raise UserError(f"{clash[0]} exists; pass --overwrite to replace the sequence.")
    weights = session.mesh_weights(Mesh(tm.vertices, tm.faces))
    files: list[Path] = []
    for i, path in enumerate(names):
        cancel.check()
        posed = posed_textured(session, tm, i, weights)
        # Every OBJ of the sequence uses the first one's material and image.
        shared = names[0].with_suffix(".mtl") if i and fmt == "obj" else None
        files += write_textured(path, posed, up=cfg.up, material=shared)
        yield Progress("export", i + 1, n)
    yield Done({"files": [str(p) for p in files], "faces": tm.num_faces, "texture": tm.texture_size})


# ---- the rigged avatar -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RigConfig:
    """What rigged avatar to write (`export --rigged OUT.glb`)."""

    resolution: int = 256
    """Marching-cubes resolution of a mesh made for the rig (a baked texture brings its own mesh)."""
    texture: int | None = None
    """Bake a texture this many pixels wide when the project has none of this checkpoint (None: the project's
    current bake if there is one, else vertex colours)."""
    rest: RestPose = "canonical"
    """Bind pose of the skeleton and mesh: canonical (the star pose the avatar is fitted in), a-pose or t-pose."""
    animation: bool = True
    """Include the video's motion as an animation (one key per frame)."""
    fps: float | None = None
    """Frames per second of the animation (None: the project's frame rate)."""
    smooth: float = WeightConfig.smooth
    """How strongly skin weights are smoothed over the clothing where it leaves the body (0: nearest body point)."""

    def validate(self) -> None:
        if not 16 <= self.resolution <= 1024:
            raise UserError(f"--resolution must be between 16 and 1024 (got {self.resolution}).")
        if self.texture is not None:
            check_texture_size(self.texture)
        if self.fps is not None and not (math.isfinite(self.fps) and 0 < self.fps <= 1000):
            raise UserError(f"--fps must be a number above 0 and at most 1000 (got {self.fps}).")
        if not (math.isfinite(self.smooth) and self.smooth >= 0):
            raise UserError(f"the weight smoothing must be 0 or more (got {self.smooth}).")
        check_choices(self)


def frame_rate(session: Session, fps: float | None = None) -> float:
    """The animation's frames per second: `fps`, else the project's (the rate of its frames), else 25."""
    return float(fps or session.project.meta.get("fps") or 25.0)


def rig_session(session: Session, cfg: RigConfig, cancel: CancelToken) -> Iterator[Event]:
    """Rigs the session's avatar; the generator returns the `RiggedAvatar`.

    The mesh: the project's bake of this checkpoint (or a new one with `cfg.texture`), else the canonical mesh
    with vertex colours. The motion: every frame's refined body, posed as `export --frame` poses it
    (`Session.frame_pose`: held-out frames start from their refined neighbours)."""
    tm = None
    if cfg.texture is not None:
        tm = yield from textured_mesh(session, ExportConfig(resolution=cfg.resolution, texture=cfg.texture), cancel)
    else:
        got = load_bake(session.project.root, step=session.step)
        if got is not None:
            tm = got[0]
            yield Log(f"textured with the project's bake ({tm.texture_size} px)")
        else:
            yield Log("no texture baked for this checkpoint: vertex colours (bake one with `bake`, or pass --texture)")
    if tm is None:
        yield Progress("rig: mesh", 0, 1)
        mesh = session.canonical_mesh(cfg.resolution)
        yield Progress("rig: mesh", 1, 1)
        vertices, faces, weld = mesh.vertices, mesh.faces, None
    else:
        vertices, faces, weld = tm.vertices, tm.faces, tm.source_vertex
    n = session.project.num_frames
    frames = None
    if cfg.animation:
        tfs = []
        for i in range(n):
            cancel.check()
            with torch.no_grad():
                tfs.append(session.frame_pose(i).transforms.detach().cpu())
            yield Progress("rig: motion", i + 1, n)
        frames = torch.stack(tfs)
    cancel.check()
    yield Progress("rig: skin weights", 0, 1)
    rig: RiggedAvatar = build_rig(session.body, session.params.shape, vertices, faces, weld,
                                  session.deformer.canonical_vertices, frames, frame_rate(session, cfg.fps), cfg.rest,
                                  WeightConfig(smooth=cfg.smooth))
    yield Progress("rig: skin weights", 1, 1)
    if tm is None:
        rig.colors = np.asarray(mesh.colors, np.float32) if mesh.colors is not None else None
    else:
        rig.uvs, rig.texture = tm.uvs, tm.texture
    return rig


def rigged_job(project_dir: str | Path, out: str | Path, cfg: RigConfig = RigConfig(), overwrite: bool = False,
               device: str = "cpu", body_model_dir: str | None = None,
               cancel: CancelToken | None = None) -> Iterator[Event]:
    """Writes the rigged avatar as `out` (.glb): mesh in the bind pose, skeleton, skin weights, texture or
    vertex colours, and (unless `cfg.animation` is off) the video's motion."""
    cancel = cancel or CancelToken()
    out = check_output_file(out, ".glb", "a rigged avatar (glTF binary)", overwrite)
    cfg.validate()
    session = open_session(project_dir, None, device, body_model_dir, require_checkpoint=True)
    rig = yield from rig_session(session, cfg, cancel)
    cancel.check()
    write_rigged_glb(out, rig, with_animation=cfg.animation)
    log.info("rigged avatar: %d bones, %d vertices, %d frames at %g fps", rig.skeleton.num_bones,
             len(rig.vertices), rig.num_frames, rig.fps)
    yield Done({"files": [str(out)], "bones": rig.skeleton.num_bones, "bone_names": rig.skeleton.names,
                "vertices": len(rig.vertices), "faces": len(rig.faces), "frames": rig.num_frames, "fps": rig.fps,
                "rest": cfg.rest, "texture": None if rig.texture is None else int(rig.texture.shape[0])})
