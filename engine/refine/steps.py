"""One training step, and the step driver that fits and prior visits both run.

`train_step` draws one frame's rays, renders them, sums the losses (engine/refine/losses.py) and takes an
optimiser step. `StepDriver` owns what goes around it: the schedule, the random streams and the one
divergence policy (skip a non-finite step; after a few in a row, roll back to the last good state and
halve the learning rates).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.geometry.camera import pixel_rays
from engine.refine import losses as L
from engine.refine.config import RefineConfig
from engine.refine.raymarch import render_rays
from engine.refine.render import TRAIN_MARGIN_PX, box_pixels, person_box
from engine.refine.session import Session

log = logging.getLogger(__name__)

MAX_BAD_STEPS = 5  # consecutive non-finite steps before rolling back to the last good state


def adam(params: list, cfg: RefineConfig) -> torch.optim.Adam:
    """Adam over field parameters (hash tables need a tiny eps: most of their entries see no gradient)."""
    return torch.optim.Adam(params, lr=cfg.lr, eps=1e-12 if cfg.sdf == "hash" else 1e-8)


class Optimizers:
    """Adam for the fields (one, or several: a prior's shared fields and a video's own parts), sparse Adam
    for the per-frame body refinements; one interface, param groups in that order."""

    def __init__(self, fields: list[torch.optim.Optimizer], body: torch.optim.SparseAdam | None) -> None:
        self.field_opts, self.body = fields, body
        self._all = fields + ([body] if body else [])
        self.param_groups = [g for o in self._all for g in o.param_groups]

    @staticmethod
    def for_avatar(av, cfg: RefineConfig, params: list | None = None) -> Optimizers:
        """Adam over `params` (default: all the avatar's field parameters) and sparse Adam over its body."""
        fields = adam(av.field_parameters() if params is None else params, cfg)
        body = torch.optim.SparseAdam(av.body_parameters(), lr=cfg.lr_pose) if cfg.lr_pose > 0 else None
        return Optimizers([fields], body)

    def base_lrs(self, cfg: RefineConfig) -> list[float]:
        """The configured learning rate of each param group (a resumed state carries decayed ones)."""
        return [cfg.lr] * len(self.field_opts) + ([cfg.lr_pose] if self.body is not None else [])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self._all:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self._all:
            o.step()

    def state_dict(self) -> dict:
        return {"fields": [o.state_dict() for o in self.field_opts],
                "body": self.body.state_dict() if self.body else None}

    def load_state_dict(self, state: dict) -> None:
        fields = state["fields"]
        fields = [fields] if isinstance(fields, dict) else fields  # checkpoints before the list kept one
        if len(fields) != len(self.field_opts):
            raise ValueError(f"{len(fields)} field optimiser states for {len(self.field_opts)} optimisers")
        for o, st in zip(self.field_opts, fields):
            o.load_state_dict(st)
        if self.body is not None and state.get("body") is not None:
            self.body.load_state_dict(state["body"])


def random_streams(seed: int, offset: int, device: torch.device) -> tuple[torch.Generator, np.random.Generator]:
    """The torch generator (on `device`: samplers draw there) and numpy generator of a run of steps;
    `offset` tells runs apart (the step a fit resumes at, a prior visit)."""
    return (torch.Generator(device=device).manual_seed(seed * 100003 + offset),
            np.random.default_rng(seed * 7919 + offset))


def incremental(cfg: RefineConfig, p: float) -> tuple[int, int]:
    """Rays and fine samples per ray for schedule position p (seed thesis: rays up, samples down)."""
    if cfg.incremental == "none":
        return cfg.rays, cfg.fine_samples
    q = p if cfg.incremental == "linear" else p * p
    rays = int(cfg.rays * (0.5 + 0.5 * q))
    fine = max(4, int(round(cfg.fine_samples * (2.0 - q))))
    return rays, fine


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
        n = cfg.hash_levels
        k = n if cfg.coarse_to_fine <= 0 else min(n, 4 + int((n - 4) * p / cfg.coarse_to_fine))
        av.sdf.grid.set_active_levels(k)
    if cfg.beta_end > 0:
        av.beta_cap.fill_(cfg.beta_init * (cfg.beta_end / cfg.beta_init) ** min(1.0, p / 0.6))


def body_points(session: Session, n: int, gen: torch.Generator, detail: bool = False):
    """n canonical points [n, 3] near the body's surface (within a few cm), on the session's device; with
    `detail`, also how much each belongs to the face or a hand [n]."""
    d = session.deformer
    cv = d.canonical_vertices_dev
    idx = torch.randint(0, len(cv), (n,), generator=gen, device=gen.device).to(cv.device)
    pts = cv[idx] + 0.03 * torch.randn(n, 3, generator=gen, device=gen.device).to(cv.device)
    return (pts, d.detail_weights[idx]) if detail else pts


def shape_points(session: Session, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n canonical points [n, 3] for the shape regularisers, and their face-or-hand weights [n]: three
    quarters near the body, a quarter anywhere in the occupied region (loose clothing far from the body
    needs a valid SDF too; those get no face-or-hand weight)."""
    occ = session.avatar.occupancy
    m = n // 4
    cells = occ.occupied_cells()
    if not len(cells) or m == 0:
        return body_points(session, n, gen, detail=True)
    pick = cells[torch.randint(0, len(cells), (m,), generator=gen, device=gen.device).to(cells.device)]
    jitter = (torch.rand(m, 3, generator=gen, device=gen.device).to(session.device) - 0.5) * occ.voxel
    pts, w = body_points(session, n - m, gen, detail=True)
    return torch.cat([pts, occ.centres(pick) + jitter]), torch.cat([w, torch.zeros(m, device=w.device)])


def surface_points(out, n: int, gen: torch.Generator) -> torch.Tensor:
    """Up to n of a render's canonical points near the surface [<=n, 3] (for normal smoothness)."""
    pts = out.points_c.detach()
    if len(pts) <= n:
        return pts
    return pts[torch.randperm(len(pts), generator=gen, device=gen.device)[:n].to(pts.device)]


@dataclass
class TrainData:
    """A video's training frames, their images [H, W, 3] and person masks [H, W] on the device."""

    frames: list[int]
    images: dict[int, torch.Tensor]
    masks: dict[int, torch.Tensor]

    @staticmethod
    def of(session: Session) -> TrainData:
        p = session.project
        frames = p.train_frames or list(range(p.num_frames))
        return TrainData(frames, {i: torch.as_tensor(p.frame(i), device=session.device) for i in frames},
                         {i: torch.as_tensor(p.mask(i), device=session.device) for i in frames})


def train_step(session: Session, opt: Optimizers, data: TrainData, n_rays: int, fine: int, p: float,
               gen: torch.Generator, rng: np.random.Generator) -> dict[str, float] | None:
    """One optimisation step on one random training frame; the loss values, or None when the loss or a
    gradient was not finite (nothing was changed then)."""
    cfg, av, dev = session.cfg, session.avatar, session.device
    train = data.frames
    f = int(rng.choice(train))
    cam = session.cameras[f]
    fp = session.frame_pose(f, data.images[f])
    # Rays: most inside the projected body's box (no mask needed), the rest anywhere; drawn on the device.
    lo, hi = person_box(cam, fp.vertices, margin_px=TRAIN_MARGIN_PX)
    n_in = int(n_rays * cfg.person_ray_fraction)
    whole = torch.zeros(2, device=dev), torch.tensor([cam.width - 1.0, cam.height - 1.0], device=dev)
    pt = torch.cat([box_pixels(cam, lo, hi, n_in, gen), box_pixels(cam, *whole, n_rays - n_in, gen)])
    o, d = pixel_rays(cam, pt, dev)
    gt = data.images[f][pt[:, 1], pt[:, 0]]
    gm = data.masks[f][pt[:, 1], pt[:, 0]].float()

    out = render_rays(av, session.deformer, fp, o, d, cfg.coarse_samples, fine, cfg.sampler, cfg.shell, gen)
    pred = L.composite(av, out, pt)
    losses = L.image_losses(cfg, out, pred, gt, gm, p)
    sil, wanted = L.silhouette_loss(cfg, av, out, gm)
    losses |= sil
    if not cfg.freeze_shared:
        m = min(cfg.normal_points, cfg.eikonal_points // 4) if cfg.w_normal_smooth > 0 else 0
        surf = surface_points(out, m, gen)
        pts, detail = shape_points(session, cfg.eikonal_points - 2 * len(surf), gen)
        losses |= L.shape_losses(cfg, av, pts, detail, surf, gen)
    if cfg.time_consistency != "none" and len(train) > 1:
        k = train.index(f)
        g = train[k + 1] if k + 1 < len(train) else train[k - 1]
        if cfg.time_consistency == "displacement":
            losses |= L.time_loss(cfg, av, d_pose_f=av.frame_deltas(f)[0], d_pose_g=av.frame_deltas(g)[0])
        elif len(out.points_w):
            xc_g, _ = session.deformer.to_canonical(out.points_w[:1024], session.frame_pose(g, data.images[g]))
            losses |= L.time_loss(cfg, av, xc_f=out.points_c[:1024], xc_g=xc_g)
    losses |= L.morph_loss(cfg, out)
    if cfg.lr_pose > 0:
        d_pose, d_tr = av.frame_deltas(f)
        k = train.index(f)
        own = target = None
        if cfg.w_pose_smooth > 0 and 0 < k < len(train) - 1:
            a, b = train[k - 1], train[k + 1]
            w = (f - a) / (b - a)
            full = session.deformer.semantic_pose
            own = full[f] + d_pose
            target = (1 - w) * (full[a] + av.frame_deltas(a)[0]) + w * (full[b] + av.frame_deltas(b)[0])
        losses |= L.pose_losses(cfg, d_pose, d_tr, own, target)
    total = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    total.backward()
    grads = [g.coalesce().values() if g.is_sparse else g
             for group in opt.param_groups for prm in group["params"] if (g := prm.grad) is not None]
    finite = torch.stack([torch.isfinite(total), *(torch.isfinite(g).all() for g in grads)]).all()
    with torch.no_grad():
        mse = ((pred - gt) ** 2).mean()
    # The step's one host round trip: whether it counts, and the values the caller logs.
    host = torch.stack([finite.float(), total.detach(), av.beta.detach(), mse, *(v.detach() for v in losses.values())
                        ]).tolist()
    if not host[0]:
        opt.zero_grad(set_to_none=True)
        return None
    opt.step()
    av.occupancy.mark(wanted)  # only a step that counts changes anything
    values = dict(zip(losses, host[4:]))
    values |= {"total": host[1], "beta": host[2], "psnr_batch": -10 * math.log10(max(host[3], 1e-10))}
    return values


class StepDriver:
    """Runs training steps on one session under one divergence policy.

    A step whose loss or gradient is not finite changes nothing and is skipped. After MAX_BAD_STEPS of them
    in a row the avatar and optimisers go back to the last state marked good (`mark_good`) and the learning
    rates are halved.
    """

    def __init__(self, session: Session, opt: Optimizers, data: TrainData, base_lrs: list[float],
                 gen: torch.Generator, rng: np.random.Generator) -> None:
        self.session, self.opt, self.data = session, opt, data
        self.base_lrs = list(base_lrs)
        self.gen, self.rng = gen, rng
        self.bad = 0
        self.mark_good()

    def mark_good(self) -> None:
        """Remembers the current state as one to roll back to."""
        self._good = copy.deepcopy((self.session.avatar.state_dict(), self.opt.state_dict()))

    def step(self, p: float, n_rays: int | None = None, fine: int | None = None) -> tuple[dict | None, str | None]:
        """One step at schedule position p (rays and fine samples: the config's unless given).

        Returns:
            the loss values (None for a skipped step; the session's step count only advances otherwise),
            and a warning to show the user, if any.
        """
        s = self.session
        apply_schedule(s, self.opt, self.base_lrs, p)
        values = train_step(s, self.opt, self.data, n_rays or s.cfg.rays, fine or s.cfg.fine_samples, p,
                            self.gen, self.rng)
        if values is not None:
            self.bad = 0
            s.step += 1
            if s.step % s.cfg.occupancy_every == 0:
                s.avatar.update_occupancy()
            return values, None
        self.bad += 1
        log.warning("step %d: non-finite loss or gradient, step skipped", s.step)
        if self.bad < MAX_BAD_STEPS:
            return None, f"step {s.step}: non-finite loss, step skipped"
        s.avatar.load_state_dict(self._good[0])
        self.opt.load_state_dict(self._good[1])
        self.base_lrs = [lr * 0.5 for lr in self.base_lrs]
        self.bad = 0
        return None, "rolled back to the last good state and halved the learning rates"
