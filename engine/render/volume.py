"""VolSDF volume rendering: SDF samples along rays → weights, opacity, colour, depth.

Density is the Laplace CDF of the negated SDF, σ = Ψ_β(−s) / β (Yariv et al. 2021), so the
surface is the zero level set and β sets how sharp it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def laplace_density(sdf: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
    """σ(s) = (1/β) Ψ_β(−s) with Ψ_β the CDF of a zero-mean Laplace distribution of scale β."""
    beta = torch.as_tensor(beta, dtype=sdf.dtype, device=sdf.device)
    x = -sdf
    psi = torch.where(x <= 0, 0.5 * torch.exp(x.clamp(max=0) / beta), 1 - 0.5 * torch.exp(-x.clamp(min=0) / beta))
    return psi / beta


@dataclass
class RayRender:
    weights: torch.Tensor  # [R, S]
    opacity: torch.Tensor  # [R]
    depth: torch.Tensor  # [R] expected t of the visible surface (0 where empty)
    rgb: torch.Tensor | None  # [R, 3] foreground colour (premultiplied by opacity)


def composite(t: torch.Tensor, sdf: torch.Tensor, beta, valid: torch.Tensor | None = None,
              rgb: torch.Tensor | None = None, t_end: torch.Tensor | None = None) -> RayRender:
    """Alpha-composites sorted samples.

    Args:
        t: [R, S] sorted distances along each ray.
        sdf: [R, S] SDF at the samples.
        beta: Laplace scale.
        valid: [R, S] bool; invalid samples are empty space (density 0).
        rgb: [R, S, 3] colours at the samples.
        t_end: [R] end of the last interval (default: last spacing repeated).
    """
    sigma = laplace_density(sdf, beta)
    if valid is not None:
        sigma = torch.where(valid, sigma, torch.zeros_like(sigma))
    if t.shape[1] > 1:
        last = (t[:, -1] - t[:, -2]) if t_end is None else (t_end - t[:, -1])
        deltas = torch.cat([t[:, 1:] - t[:, :-1], last[:, None]], dim=1)
    else:
        deltas = torch.full_like(t, 1e-2) if t_end is None else (t_end[:, None] - t)
    tau = sigma * deltas.clamp(min=0)
    alpha = 1 - torch.exp(-tau)
    # Transmittance before each sample: exp(−Σ_{j<i} τ_j).
    trans = torch.exp(-torch.cumsum(torch.cat([torch.zeros_like(tau[:, :1]), tau[:, :-1]], dim=1), dim=1))
    w = trans * alpha
    opacity = w.sum(1)
    depth = (w * t).sum(1) / opacity.clamp(min=1e-6)
    out_rgb = None if rgb is None else (w[..., None] * rgb).sum(1)
    return RayRender(w, opacity, depth, out_rgb)


def composite_reference(t, sdf, beta, valid=None, rgb=None):
    """Slow twin of `composite`: an explicit front-to-back loop per ray."""
    R, S = t.shape
    sig = laplace_density(sdf, beta)
    if valid is not None:
        sig = torch.where(valid, sig, torch.zeros_like(sig))
    op = torch.zeros(R, dtype=t.dtype)
    col = torch.zeros(R, 3, dtype=t.dtype)
    for r in range(R):
        T = 1.0
        for s in range(S):
            d = (t[r, s + 1] - t[r, s]) if s + 1 < S else (t[r, S - 1] - t[r, S - 2])
            a = 1 - torch.exp(-sig[r, s] * d)
            op[r] += T * a
            if rgb is not None:
                col[r] += T * a * rgb[r, s]
            T = T * (1 - a)
    return op, col
