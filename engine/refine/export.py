"""`export`: meshes of a fitted avatar (canonical, one frame, or every frame)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.jobs.events import CancelToken, Done, Event, Progress
from engine.mesh import FORMATS, Mesh, UpAxis, decimate, write_mesh, write_sequence
from engine.refine.session import Session, open_session
from engine.settings import check_choices, one_of


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

    def validate(self, num_frames: int) -> None:
        if not 16 <= self.resolution <= 1024:
            raise UserError(f"--resolution must be between 16 and 1024 (got {self.resolution}).")
        if self.faces is not None and self.faces < 100:
            raise UserError(f"--faces must be at least 100 (got {self.faces}).")
        if self.frame is not None and not 0 <= self.frame < num_frames:
            raise UserError(f"--frame must be between 0 and {num_frames - 1} (got {self.frame}).")
        check_choices(self)


def canonical_mesh(session: Session, cfg: ExportConfig) -> Mesh:
    mesh = session.canonical_mesh(cfg.resolution)
    return decimate(mesh, cfg.faces) if cfg.faces else mesh


def export_job(project_dir: str | Path, out: str | Path, cfg: ExportConfig = ExportConfig(), sequence: bool = False,
               fmt: str = "obj", overwrite: bool = False, device: str = "cpu", body_model_dir: str | None = None,
               cancel: CancelToken | None = None) -> Iterator[Event]:
    """Writes `out` (.obj/.ply), or with `sequence` one `fmt` file per frame into the folder `out`."""
    cancel = cancel or CancelToken()
    out = Path(out)
    if not sequence and out.suffix.lower().lstrip(".") not in FORMATS:
        raise UserError(f"unsupported mesh format {out.suffix or '(none)'!r}: use {one_of(tuple('.' + f for f in FORMATS))}.")
    session = open_session(project_dir, None, device, body_model_dir, require_checkpoint=True)
    n = session.project.num_frames
    cfg.validate(n)
    yield Progress("mesh", 0, 1)
    mesh = canonical_mesh(session, cfg)
    yield Progress("mesh", 1, 1)
    if sequence:
        def frames():
            for i in range(n):
                cancel.check()
                yield session.posed_mesh(mesh, i)

        if fmt not in FORMATS:
            raise UserError(f"--format must be {one_of(FORMATS)} (got {fmt!r}).")
        paths = write_sequence(out, frames(), fmt=fmt, up=cfg.up, overwrite=overwrite)
        yield Done({"files": [str(p) for p in paths], "faces": mesh.num_faces})
        return
    if cfg.frame is not None:
        mesh = session.posed_mesh(mesh, cfg.frame)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it.")
    write_mesh(out, mesh, up=cfg.up)
    yield Done({"files": [str(out)], "faces": mesh.num_faces, "vertices": mesh.num_vertices})
