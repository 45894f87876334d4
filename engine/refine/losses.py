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
NORMAL_SMOOTH_SCALE = 0.01  # normal smoothness compares normals this far apart (metres, per axis)


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
    # Floating matter: opacity away from the body where the mask shows no person (loose clothing far from
    # the body is in the mask, and must not be pushed away).
    off = ((out.body_dist > EMPTY_DISTANCE) & (gt_mask < 0.5)).float()
    if "sparse" in terms and cfg.w_sparse > 0:  # a masked mean (0 without such rays): no host round trip
        losses["sparse"] = cfg.w_sparse * min(1.0, p / 0.2) * (out.opacity * off).sum() / off.sum().clamp(min=1)
    return losses


def silhouette_loss(cfg: RefineConfig, avatar: Avatar, out: RaysOut, gt_mask: torch.Tensor
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Rays inside the person mask that meet no surface pull the SDF below zero at their closest sample (as
    IDR's mask loss does): the volume render's gradient vanishes far from the surface, so without this
    term loose clothing beyond a few centimetres from the body never grows.

    Returns the term (empty when no ray missed) and the canonical points it acted on [M, 3].
    """
    missed = (gt_mask > 0.5) & ~out.crossed & torch.isfinite(out.closest_c).all(-1)
    pts = out.closest_c[missed]
    if cfg.w_silhouette <= 0 or not len(pts):
        return {}, pts
    s, _ = avatar.sdf(pts)
    return {"silhouette": cfg.w_silhouette * F.relu(s + avatar.beta.detach()).mean()}, pts


def shape_losses(cfg: RefineConfig, avatar: Avatar, points: torch.Tensor, detail: torch.Tensor | None = None,
                 surface: torch.Tensor | None = None, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Regularisers of the canonical SDF, from one batch of forward differences.

    Args:
        points: [P, 3] canonical points near the body and in the occupied region: eikonal and in-shape terms.
        detail: [P] how much each point belongs to the face or a hand (`BodyModel.detail_weights`): the
            residual over the body SDF is kept small there (w_detail).
        surface: [M, 3] points on the current surface: normal smoothness, against a point a centimetre
            away (w_normal_smooth).
    """
    dev = points.device
    n = len(points)
    if surface is not None and len(surface) and cfg.w_normal_smooth > 0:
        step = NORMAL_SMOOTH_SCALE * torch.randn(surface.shape, generator=gen, device=dev)
        points = torch.cat([points, surface, surface + step])
    s0, _ = avatar.sdf(points)
    grads = [(avatar.sdf(points + EIKONAL_STEP * torch.eye(3, device=dev)[k])[0] - s0) / EIKONAL_STEP
             for k in range(3)]
    g = torch.stack(grads, -1)
    gnorm = g.norm(dim=-1)
    losses = {"eikonal": cfg.w_eikonal * ((gnorm - 1) ** 2).mean()}
    with torch.no_grad():
        body = avatar.sdf.body_sdf(points[:n])
    deep = (body < -0.02).float()
    if cfg.w_inshape > 0:
        losses["inshape"] = cfg.w_inshape * (F.relu(s0[:n]) * deep).sum() / deep.sum().clamp(min=1)
    if cfg.w_detail > 0 and detail is not None:
        losses["detail"] = cfg.w_detail * (detail * (s0[:n] - body).abs()).mean()
    if len(points) > n:
        nrm = g[n:] / gnorm[n:, None].clamp(min=1e-6)
        a, b = nrm.chunk(2)
        losses["normal_smooth"] = cfg.w_normal_smooth * ((a - b) ** 2).sum(-1).mean()
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
