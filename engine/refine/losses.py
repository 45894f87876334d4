"""The training losses: each term once, weighted by the config, for fits, prior visits and test-time
pose fits alike. Every term is a scalar tensor; a dict of them is summed by the caller."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.refine.avatar import Avatar
from engine.refine.config import RefineConfig
from engine.refine.raymarch import RaysOut

EMPTY_DISTANCE = 0.1  # metres from the body beyond which a ray's opacity counts as floating matter
EIKONAL_STEP = 0.002  # forward-difference step of the eikonal term (metres)


def composite(avatar: Avatar, out: RaysOut, pix: torch.Tensor) -> torch.Tensor:
    """The predicted pixel colours [R, 3]: the rendered person over the background plate at pix [R, 2]."""
    return out.rgb + (1 - out.opacity[:, None]) * avatar.background_at(pix)


def image_losses(cfg: RefineConfig, out: RaysOut, pred: torch.Tensor, gt: torch.Tensor, gt_mask: torch.Tensor,
                 p: float = 1.0, terms: tuple[str, ...] = ("rgb", "mask", "bce", "sparse")) -> dict[str, torch.Tensor]:
    """Losses on the rendered rays: L1 colour, person-mask BCE, opacity entropy and sparseness.

    Args:
        out: the rendered rays; pred [R, 3] their composited colours; gt [R, 3] and gt_mask [R] (0/1) the
            frame's pixels and person mask there.
        p: schedule position in [0, 1] (the sparseness term ramps up over the first fifth).
        terms: which of the terms to compute (a test-time pose fit needs only colour and mask).
    """
    losses = {}
    if "rgb" in terms:
        losses["rgb"] = cfg.w_rgb * (pred - gt).abs().mean()
    op = out.opacity.clamp(1e-4, 1 - 1e-4)
    if "mask" in terms and cfg.w_mask > 0:
        # Written out (not F.binary_cross_entropy, which raises on NaN): a diverged step must be skippable.
        losses["mask"] = cfg.w_mask * -(gt_mask * op.log() + (1 - gt_mask) * (1 - op).log()).mean()
    if "bce" in terms and cfg.w_bce > 0:
        losses["bce"] = cfg.w_bce * (-(op * op.log() + (1 - op) * (1 - op).log())).mean()
    off = out.body_dist > EMPTY_DISTANCE
    if "sparse" in terms and cfg.w_sparse > 0 and off.any():
        losses["sparse"] = cfg.w_sparse * min(1.0, p / 0.2) * out.opacity[off].mean()
    return losses


def shape_losses(cfg: RefineConfig, avatar: Avatar, points: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eikonal (forward differences) and in-shape terms on canonical points [P, 3] near the body."""
    dev = points.device
    s0, _ = avatar.sdf(points)
    grads = [(avatar.sdf(points + EIKONAL_STEP * torch.eye(3, device=dev)[k])[0] - s0) / EIKONAL_STEP
             for k in range(3)]
    gnorm = torch.stack(grads, -1).norm(dim=-1)
    losses = {"eikonal": cfg.w_eikonal * ((gnorm - 1) ** 2).mean()}
    with torch.no_grad():
        deep = avatar.sdf.body_sdf(points) < -0.02
    if cfg.w_inshape > 0 and deep.any():
        losses["inshape"] = cfg.w_inshape * F.relu(s0[deep]).mean()
    return losses


def morph_loss(cfg: RefineConfig, out: RaysOut) -> dict[str, torch.Tensor]:
    """The geometry encoder's morphing loss on the rendered samples' displacements (none without it)."""
    if out.morph is None or not len(out.morph):
        return {}
    return {"morph": cfg.w_morph * (out.morph.sum() if cfg.morph_loss == "v1" else out.morph.mean())}


def pose_losses(cfg: RefineConfig, d_pose: torch.Tensor, d_tr: torch.Tensor, own: torch.Tensor | None = None,
                target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Terms on one frame's body refinement (pose [B, 3], translation [3]): a weak prior that keeps it small
    unless the pixels insist, and, given the frame's full pose `own` [B, 3] and the interpolation of its
    neighbours' `target` [B, 3], temporal smoothness (motion is smooth, per-frame fitting errors are not)."""
    losses = {"pose_prior": 0.1 * ((d_pose**2).sum() + (d_tr**2).sum())}
    if cfg.w_pose_smooth > 0 and target is not None:
        losses["pose_smooth"] = cfg.w_pose_smooth * ((own - target) ** 2).sum()
    return losses


def time_loss(cfg: RefineConfig, avatar: Avatar, d_pose_f: torch.Tensor | None = None,
              d_pose_g: torch.Tensor | None = None, xc_f: torch.Tensor | None = None,
              xc_g: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Time consistency between a frame f and its neighbour g: `displacement` compares their pose
    refinements [B, 3]; `sdf` compares the SDF at the same world points taken to canonical space through
    each frame's body (xc_f, xc_g [P, 3])."""
    if cfg.time_consistency == "displacement" and d_pose_f is not None:
        return {"time": cfg.w_time * ((d_pose_f - d_pose_g) ** 2).sum() * 100}
    if cfg.time_consistency == "sdf" and xc_f is not None and len(xc_f):
        return {"time": cfg.w_time * (avatar.sdf(xc_f)[0] - avatar.sdf(xc_g)[0]).abs().mean()}
    return {}
