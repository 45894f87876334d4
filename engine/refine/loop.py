"""`fit`: the self-supervised optimisation, as a job yielding events (DESIGN.md §4, §6)."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import UserError
from engine.jobs.pacing import TimeShare
from engine.jobs.events import CancelToken, Done, Event, Log, Losses, MeshReady, Preview, Progress
from engine.io import atomic
from engine.refine.checkpoint import checkpoint_path, save_checkpoint
from engine.refine.config import RefineConfig
from engine.refine.raymarch import body_box, pixel_rays, render_rays
from engine.refine.session import Session, open_session

log = logging.getLogger(__name__)

MAX_BAD_STEPS = 5  # consecutive non-finite steps before rolling back to the last good state


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


def _progress(session: Session, budget: FitBudget, t0: float, step0: int) -> float:
    """Fraction of the run's schedule done, in [0, 1] (by steps or by time, whichever is set)."""
    fr = []
    if budget.iters:
        fr.append(session.step / budget.iters)
    if budget.minutes:
        fr.append((time.perf_counter() - t0) / (60 * budget.minutes))
    return float(min(1.0, max(fr))) if fr else 0.0


def _incremental(cfg: RefineConfig, p: float) -> tuple[int, int]:
    """Rays and fine samples per ray for schedule position p (seed thesis: rays up, samples down)."""
    if cfg.incremental == "none":
        return cfg.rays, cfg.fine_samples
    q = p if cfg.incremental == "linear" else p * p
    rays = int(cfg.rays * (0.5 + 0.5 * q))
    fine = max(4, int(round(cfg.fine_samples * (2.0 - q))))
    return rays, fine


class Optimizers:
    """Adam for the fields (one, or several: a prior's shared fields and a video's own parts), sparse Adam
    for the per-frame body refinements; one interface, param groups in that order."""

    def __init__(self, fields: list[torch.optim.Optimizer], body: torch.optim.SparseAdam | None) -> None:
        self.field_opts, self.body = fields, body
        self.fields = fields[0]
        self._all = fields + ([body] if body else [])
        self.param_groups = [g for o in self._all for g in o.param_groups]

    @staticmethod
    def for_avatar(av, cfg: RefineConfig, params: list | None = None) -> Optimizers:
        """Adam over `params` (default: all the avatar's field parameters) and sparse Adam over its body."""
        fields = torch.optim.Adam(av.field_parameters() if params is None else params, lr=cfg.lr,
                                  eps=1e-12 if cfg.sdf == "hash" else 1e-8)
        body = torch.optim.SparseAdam(av.body_parameters(), lr=cfg.lr_pose) if cfg.lr_pose > 0 else None
        return Optimizers([fields], body)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self._all:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self._all:
            o.step()

    def state_dict(self) -> dict:
        return {"fields": self.fields.state_dict(), "body": self.body.state_dict() if self.body else None}

    def load_state_dict(self, state: dict) -> None:
        self.fields.load_state_dict(state["fields"])
        if self.body is not None and state.get("body") is not None:
            self.body.load_state_dict(state["body"])


def _eikonal_points(session: Session, n: int, gen: torch.Generator) -> torch.Tensor:
    cv = session.deformer.canonical_vertices
    idx = torch.randint(0, len(cv), (n,), generator=gen)
    return (cv[idx] + 0.03 * torch.randn(n, 3, generator=gen)).to(session.device)


def _state(session: Session, opt: torch.optim.Optimizer, elapsed: float) -> dict:
    return {
        "step": session.step,
        "config": session.cfg.to_dict(),
        "body_model": session.project.body_model,
        "num_frames": session.project.num_frames,
        "model": {k: v.detach().cpu() for k, v in session.avatar.state_dict().items()},
        "optimizer": opt.state_dict(),
        "elapsed": elapsed,
    }


def apply_schedule(session: Session, opt: Optimizers, base_lrs: list[float], p: float) -> None:
    """Sets what changes over a run at schedule position p in [0, 1]: learning rates, the start of body
    refinement, the unlocked hash levels and the density-scale cap."""
    cfg, av = session.cfg, session.avatar
    for g, lr in zip(opt.param_groups, base_lrs):
        g["lr"] = lr * (0.1**p)
    if opt.body is not None:
        # The body is only refined once the fields explain the frames roughly (cfg.pose_start),
        # at a constant rate; earlier, photometric gradients would push poses to fit a wrong shape.
        opt.body.param_groups[0]["lr"] = base_lrs[-1] * min(1.0, max(0.0, (p - cfg.pose_start) / 0.2))
    if cfg.sdf == "hash":
        L = cfg.hash_levels
        k = L if cfg.coarse_to_fine <= 0 else min(L, 4 + int((L - 4) * p / cfg.coarse_to_fine))
        av.sdf.grid.set_active_levels(k)
    if cfg.beta_end > 0:
        av.beta_cap.fill_(cfg.beta_init * (cfg.beta_end / cfg.beta_init) ** min(1.0, p / 0.6))


def fit_job(project_dir: str | Path, config: RefineConfig | None = None, budget: FitBudget = FitBudget(iters=1000),
            device: str = "cpu", body_model_dir: str | None = None, cancel: CancelToken | None = None,
            prior: str | Path | None = None, prior_mode: str = "refine") -> Iterator[Event]:
    """Optimises (or resumes) the avatar of a project; the checkpoint is the only thing it writes.
    A new fit can start from a prior (`engine.prior`): `prior_mode` refine trains everything from there,
    inference keeps the prior's shared fields fixed and fits only the per-video parts."""
    cancel = cancel or CancelToken()
    session = open_session(project_dir, config, device, body_model_dir, prior=prior, prior_mode=prior_mode)
    cfg, av, dev = session.cfg, session.avatar, session.device
    if session.checkpoint is not None:
        yield Log(f"resuming from step {session.step} (checkpoint {checkpoint_path(session.project.root)})")
    atomic.write_json(session.project.root / "refine_config.json", cfg.to_dict())
    train = session.project.train_frames or list(range(session.project.num_frames))
    opt = Optimizers.for_avatar(av, cfg)
    if session.checkpoint is not None and "optimizer" in session.checkpoint:
        try:
            opt.load_state_dict(session.checkpoint["optimizer"])
        except (ValueError, KeyError) as e:
            raise UserError(f"checkpoint optimiser state does not match this configuration: {e}") from e
    # From the config, not the optimiser: a resumed optimiser state carries already-decayed rates.
    base_lrs = [cfg.lr] + ([cfg.lr_pose] if opt.body is not None else [])
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + session.step)
    rng = np.random.default_rng(cfg.seed * 7919 + session.step)
    images = {i: torch.as_tensor(session.project.frame(i), device=dev) for i in train}
    masks = {i: torch.as_tensor(session.project.mask(i), device=dev) for i in train}
    t0 = time.perf_counter()  # the MLP's body initialisation counts against the budget too
    if cfg.sdf == "mlp" and session.checkpoint is None:
        yield from _pretrain_mlp(session, gen, cancel)

    step0 = session.step
    preview_gate, mesh_gate = TimeShare(budget.preview_share), TimeShare(budget.preview_share)
    elapsed0 = float(session.checkpoint.get("elapsed", 0.0)) if session.checkpoint else 0.0
    good = copy.deepcopy((av.state_dict(), opt.state_dict()))
    bad = 0
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

    try:
        while not done():
            cancel.check()
            p = _progress(session, budget, t0, step0)
            apply_schedule(session, opt, base_lrs, p)
            n_rays, fine = _incremental(cfg, p)
            ts = time.perf_counter()
            values = _step(session, opt, train, images, masks, n_rays, fine, p, gen, rng)
            dt = time.perf_counter() - ts
            if values is None:
                bad += 1
                log.warning("step %d: non-finite loss or gradient, step skipped", session.step)
                yield Log(f"step {session.step}: non-finite loss, step skipped", level="warning")
                if bad >= MAX_BAD_STEPS:
                    av.load_state_dict(good[0])
                    opt.load_state_dict(good[1])
                    base_lrs = [lr * 0.5 for lr in base_lrs]
                    bad = 0
                    yield Log("rolled back to the last good state and halved the learning rates", level="warning")
                continue
            bad = 0
            session.step += 1
            yield Losses(session.step, values, rays_per_s=n_rays / max(dt, 1e-9))
            yield Progress("refine", session.step, total)
            if session.step % budget.checkpoint_every == 0:
                checkpoint()
                good = copy.deepcopy((av.state_dict(), opt.state_dict()))
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


def _step(session: Session, opt, train, images, masks, n_rays, fine, p, gen, rng) -> dict | None:
    cfg, av, dev = session.cfg, session.avatar, session.device
    f = int(rng.choice(train))
    cam = session.cameras[f]
    fp = session.frame_pose(f, images[f])
    # Rays: most inside the projected body's box (no mask needed), the rest anywhere.
    lo, hi = body_box(cam, fp.vertices)
    n_in = int(n_rays * cfg.person_ray_fraction)
    pin = rng.uniform(lo, hi + 1, size=(n_in, 2)).astype(int)
    pout = rng.uniform([0, 0], [cam.width, cam.height], size=(n_rays - n_in, 2)).astype(int)
    pix = np.clip(np.concatenate([pin, pout]), 0, [cam.width - 1, cam.height - 1])
    o, d = pixel_rays(cam, pix, dev)
    pt = torch.as_tensor(pix, device=dev)
    gt = images[f][pt[:, 1], pt[:, 0]]
    gm = masks[f][pt[:, 1], pt[:, 0]].float()

    out = render_rays(av, session.deformer, fp, o, d, cfg.coarse_samples, fine, cfg.sampler, cfg.shell, gen)
    pred = out.rgb + (1 - out.opacity[:, None]) * av.background_at(pt)
    losses = {"rgb": cfg.w_rgb * (pred - gt).abs().mean()}
    op = out.opacity.clamp(1e-4, 1 - 1e-4)
    if cfg.w_mask > 0:
        # Written out (not F.binary_cross_entropy, which raises on NaN): a diverged step must be skippable.
        losses["mask"] = cfg.w_mask * -(gm * op.log() + (1 - gm) * (1 - op).log()).mean()
    if cfg.w_bce > 0:
        losses["bce"] = cfg.w_bce * (-(op * op.log() + (1 - op) * (1 - op).log())).mean()
    off = out.body_dist > 0.1
    if cfg.w_sparse > 0 and off.any():
        losses["sparse"] = cfg.w_sparse * min(1.0, p / 0.2) * out.opacity[off].mean()
    if not cfg.freeze_shared:
        # Eikonal (forward differences) and in-shape on canonical points near the body.
        xe = _eikonal_points(session, cfg.eikonal_points, gen)
        h = 0.002
        s0, _ = av.sdf(xe)
        grads = [(av.sdf(xe + h * torch.eye(3, device=dev)[k])[0] - s0) / h for k in range(3)]
        gnorm = torch.stack(grads, -1).norm(dim=-1)
        losses["eikonal"] = cfg.w_eikonal * ((gnorm - 1) ** 2).mean()
        with torch.no_grad():
            deep = av.sdf.body_sdf(xe) < -0.02
        if cfg.w_inshape > 0 and deep.any():
            losses["inshape"] = cfg.w_inshape * F.relu(s0[deep]).mean()
    if cfg.time_consistency != "none" and len(train) > 1:
        k = train.index(f)
        g = train[k + 1] if k + 1 < len(train) else train[k - 1]
        if cfg.time_consistency == "displacement":
            losses["time"] = cfg.w_time * ((av.frame_deltas(f)[0] - av.frame_deltas(g)[0]) ** 2).sum() * 100
        elif len(out.points_w):
            fg = session.frame_pose(g, images[g])
            xc_g, _ = session.deformer.to_canonical(out.points_w[:1024], fg)
            s_f, _ = av.sdf(out.points_c[:1024])
            s_g, _ = av.sdf(xc_g)
            losses["time"] = cfg.w_time * (s_f - s_g).abs().mean()
    if out.morph is not None and len(out.morph):
        losses["morph"] = cfg.w_morph * (out.morph.sum() if cfg.morph_loss == "v1" else out.morph.mean())
    if cfg.lr_pose > 0:
        # Weak prior: refinements stay small unless the pixels insist.
        d_pose, d_tr = av.frame_deltas(f)
        losses["pose_prior"] = 0.1 * ((d_pose**2).sum() + (d_tr**2).sum())
        k = train.index(f)
        if cfg.w_pose_smooth > 0 and 0 < k < len(train) - 1:
            # Motion is smooth, per-frame fitting errors are not: pull each pose toward its neighbours'.
            a, b = train[k - 1], train[k + 1]
            w = (f - a) / (b - a)
            full = session.deformer.semantic_pose
            target = (1 - w) * (full[a] + av.frame_deltas(a)[0]) + w * (full[b] + av.frame_deltas(b)[0])
            losses["pose_smooth"] = cfg.w_pose_smooth * ((full[f] + d_pose - target) ** 2).sum()
    total = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    if not torch.isfinite(total):
        return None
    total.backward()
    for group in opt.param_groups:
        for prm in group["params"]:
            g = prm.grad
            if g is not None and g.is_sparse:
                g = g.coalesce().values()
            if g is not None and not torch.isfinite(g).all():
                opt.zero_grad(set_to_none=True)
                return None
    opt.step()
    values = {k: float(v.detach()) for k, v in losses.items()}
    values["total"] = float(total.detach())
    values["beta"] = float(av.beta.detach())
    with torch.no_grad():
        values["psnr_batch"] = float(-10 * math.log10(max(float(((pred - gt) ** 2).mean()), 1e-10)))
    return values


def _pretrain_mlp(session: Session, gen: torch.Generator, cancel: CancelToken, steps: int = 200) -> Iterator[Event]:
    """Vid2Avatar initialises its MLP to the naked body's SDF: fit it to the body grid first."""
    av = session.avatar
    opt = torch.optim.Adam(av.sdf.parameters(), lr=1e-3)
    for s in range(steps):
        cancel.check()
        x = _eikonal_points(session, 2048, gen)
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
