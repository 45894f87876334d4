"""`fit`: the self-supervised optimisation of one video, as a job yielding events (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.io import atomic
from engine.jobs.events import CancelToken, Done, Event, Log, Losses, MeshReady, Preview, Progress
from engine.jobs.pacing import TimeShare
from engine.refine.checkpoint import checkpoint_path, save_checkpoint
from engine.refine.config import RefineConfig
from engine.refine.history import RunHistory
from engine.refine.session import Session, open_session
from engine.refine.steps import Optimizers, StepDriver, TrainData, body_points, incremental, random_streams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitBudget:
    """When to stop this run."""

    iters: int | None = None
    """Stop when the total step count (including resumed steps) reaches this."""
    minutes: float | None = None
    """Stop after this much wall-clock time in this run."""
    checkpoint_every: int = 50
    """Write a checkpoint every this many steps (and at stop)."""
    preview_every: int = 25
    """Emit a preview render every this many steps (0: never)."""
    mesh_every: int = 0
    """Emit a mesh every this many steps (0: never)."""
    mesh_resolution: int = 96
    """Marching-cubes resolution of the live meshes."""
    preview_frame: int = 0
    """Frame rendered for previews."""
    preview_stride: int = 2
    """Previews render every this-many-th pixel of every this-many-th row (2: a quarter of the rays),
    keeping at least 128 rendered pixels along the frame's long side."""
    preview_share: float = 0.1
    """Previews, and live meshes, each take at most this share of the run's time: after one that took
    t seconds the next waits until training has run t·(1 − share)/share seconds (1: no limit)."""


def _progress(session: Session, budget: FitBudget, t0: float) -> float:
    """Fraction of the run's schedule done, in [0, 1] (by steps or by time, whichever is set)."""
    fr = []
    if budget.iters:
        fr.append(session.step / budget.iters)
    if budget.minutes:
        fr.append((time.perf_counter() - t0) / (60 * budget.minutes))
    return float(min(1.0, max(fr))) if fr else 0.0


def _state(session: Session, opt: Optimizers, elapsed: float) -> dict:
    return {
        "step": session.step,
        "config": session.cfg.to_dict(),
        "body_model": session.project.body_model,
        "num_frames": session.project.num_frames,
        "model": {k: v.detach().cpu() for k, v in session.avatar.state_dict().items()},
        "optimizer": opt.state_dict(),
        "elapsed": elapsed,
    }


def fit_job(project_dir: str | Path, config: RefineConfig | None = None, budget: FitBudget = FitBudget(iters=1000),
            device: str = "cpu", body_model_dir: str | None = None, cancel: CancelToken | None = None,
            prior: str | Path | None = None, prior_mode: str = "refine") -> Iterator[Event]:
    """Optimises (or resumes) the avatar of a project; it writes only the checkpoint, the run's history and the
    resolved config.
    A new fit can start from a prior (`engine.prior`): `prior_mode` refine trains everything from there,
    inference keeps the prior's shared fields fixed and fits only the per-video parts."""
    cancel = cancel or CancelToken()
    session = open_session(project_dir, config, device, body_model_dir, prior=prior, prior_mode=prior_mode)
    cfg, av, dev = session.cfg, session.avatar, session.device
    if session.checkpoint is not None:
        yield Log(f"resuming from step {session.step} (checkpoint {checkpoint_path(session.project.root)})")
    atomic.write_json(session.project.root / "refine_config.json", cfg.to_dict())
    opt = Optimizers.for_avatar(av, cfg)
    if session.checkpoint is not None and "optimizer" in session.checkpoint:
        try:
            opt.load_state_dict(session.checkpoint["optimizer"])
        except (ValueError, KeyError) as e:
            raise UserError(f"checkpoint optimiser state does not match this configuration: {e}") from e
    gen, rng = random_streams(cfg.seed, session.step, dev)
    data = TrainData.of(session)
    t0 = time.perf_counter()  # the MLP's body initialisation counts against the budget too
    if cfg.sdf == "mlp" and session.checkpoint is None:
        yield from _pretrain_mlp(session, gen, cancel)

    step0 = session.step
    # From the config, not the optimiser: a resumed optimiser state carries already-decayed rates.
    driver = StepDriver(session, opt, data, opt.base_lrs(cfg), gen, rng)
    preview_gate, mesh_gate = TimeShare(budget.preview_share), TimeShare(budget.preview_share)
    elapsed0 = float(session.checkpoint.get("elapsed", 0.0)) if session.checkpoint else 0.0
    # The curves of the run so far, drawn again when the project is reopened; saved with each checkpoint.
    history = RunHistory.load(session.project.root)
    history.truncate(session.step)
    total = budget.iters or 0
    yield Progress("refine", session.step, total)

    def done() -> bool:
        if budget.iters is not None and session.step >= budget.iters:
            return True
        return budget.minutes is not None and time.perf_counter() - t0 >= 60 * budget.minutes

    def live_views(preview: bool = False, mesh: bool = False) -> Iterator[Event]:
        if preview:
            with preview_gate.timed(session.step):
                pv = _preview(session, budget.preview_frame, budget.preview_stride)
            yield pv
        if mesh:
            with mesh_gate.timed(session.step):
                m = session.canonical_mesh(budget.mesh_resolution)
            yield MeshReady(session.step, m.vertices, m.faces, m.colors)

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path(session.project.root), _state(session, opt, elapsed0 + time.perf_counter() - t0))
        history.save(session.project.root)

    try:
        while not done():
            cancel.check()
            p = _progress(session, budget, t0)
            n_rays, fine = incremental(cfg, p)
            ts = time.perf_counter()
            values, warning = driver.step(p, n_rays, fine)
            dt = time.perf_counter() - ts
            if warning:
                yield Log(warning, level="warning")
            if values is None:
                continue
            yield Losses(session.step, values, rays_per_s=n_rays / max(dt, 1e-9))
            history.add_losses(session.step, values, n_rays / max(dt, 1e-9))
            yield Progress("refine", session.step, total)
            if session.step % budget.checkpoint_every == 0:
                checkpoint()
                driver.mark_good()
            if budget.preview_every and session.step % budget.preview_every == 0 and preview_gate.ready():
                yield from live_views(preview=True)
            if budget.mesh_every and session.step % budget.mesh_every == 0 and mesh_gate.ready():
                yield from live_views(mesh=True)
        # A run that reaches its budget ends showing the avatar it saves (the time share may have skipped it).
        yield from live_views(preview=bool(budget.preview_every) and preview_gate.tag != session.step,
                              mesh=bool(budget.mesh_every) and mesh_gate.tag != session.step)
    except torch.cuda.OutOfMemoryError as e:
        raise UserError("out of GPU memory: lower --rays or --samples (the last checkpoint is kept).") from e
    except MemoryError as e:
        raise UserError("out of memory: lower --rays or --samples (the last checkpoint is kept).") from e
    finally:
        # Stop, cancel or error: what was learned since the last checkpoint is kept too.
        if session.step > step0:
            checkpoint()
    yield Log(f"stopped at step {session.step}; checkpoint saved")
    yield Done({"step": session.step, "seconds": time.perf_counter() - t0, "steps_this_run": session.step - step0})


def _preview(session: Session, frame: int, stride: int = 1) -> Preview:
    frame = min(max(frame, 0), session.project.num_frames - 1)
    cam = session.cameras[frame]
    r = session.render_frame(frame, stride=max(1, min(stride, max(cam.width, cam.height) // 128)))
    return Preview(session.step, frame, session.project.frame(frame), r["rgb"].astype(np.float32),
                   (0.5 + 0.5 * r["normals"]).astype(np.float32), r["opacity"])


def _pretrain_mlp(session: Session, gen: torch.Generator, cancel: CancelToken, steps: int = 200) -> Iterator[Event]:
    """Vid2Avatar initialises its MLP to the naked body's SDF: fit it to the body grid first."""
    av = session.avatar
    opt = torch.optim.Adam(av.sdf.parameters(), lr=1e-3)
    for s in range(steps):
        cancel.check()
        x = body_points(session, 2048, gen)
        x = torch.cat([x, x + 0.1 * torch.randn_like(x, device=x.device)])
        with torch.no_grad():
            target = av.sdf.body(x)
        loss = (av.sdf(x)[0] - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if s % 10 == 0:
            yield Progress("initialise SDF to body", s + 1, steps)
    yield Progress("initialise SDF to body", steps, steps)
