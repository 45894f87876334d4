"""Body-fit metric: mean per-vertex position error between corresponding vertices."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

#: Accepted values of the ``align`` argument of `mpvpe_cm`.
ALIGN_MODES: tuple[str, ...] = ("none", "translation", "scale_translation", "procrustes")


def _align(pred: np.ndarray, gt: np.ndarray, align: str) -> np.ndarray:
    """Returns pred ``[V, 3]`` aligned onto gt ``[V, 3]`` according to ``align``."""
    if align == "none":
        return pred
    mu_p, mu_g = pred.mean(axis=0), gt.mean(axis=0)
    pc, gc = pred - mu_p, gt - mu_g
    if align == "translation":
        return pc + mu_g
    var_p = float(np.sum(pc * pc))
    if var_p == 0.0:
        # All pred vertices coincide: scale and rotation are undefined, keep translation only.
        return pc + mu_g
    if align == "scale_translation":
        # argmin_s ||s * pc - gc||^2.
        scale = float(np.sum(pc * gc)) / var_p
        return scale * pc + mu_g
    # Umeyama (1991): similarity transform minimising ||s R pc - gc||^2, with det(R) = +1.
    cov = gc.T @ pc
    u, sing, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0  # forbid reflections
    rot = (u * d) @ vt
    scale = float(np.sum(sing * d)) / var_p
    return scale * pc @ rot.T + mu_g


def mpvpe_cm(
    pred_vertices: np.ndarray, gt_vertices: np.ndarray, align: str = "translation"
) -> float:
    """Mean per-vertex position error in centimetres.

    Args:
        pred_vertices: ``[V, 3]`` predicted vertices (m), in correspondence with ``gt_vertices``.
        gt_vertices: ``[V, 3]`` ground-truth vertices (m).
        align: How pred is aligned to gt before measuring: ``"none"``; ``"translation"``
            (centroids matched); ``"scale_translation"`` (plus least-squares isotropic scale);
            ``"procrustes"`` (similarity Procrustes: rotation, scale and translation, no
            reflection).

    Returns:
        Mean Euclidean vertex error in cm.

    Raises:
        ValueError: On an unknown ``align``, mismatched or empty inputs.
    """
    if align not in ALIGN_MODES:
        raise ValueError(f"unknown align {align!r}; expected one of {ALIGN_MODES}")
    pred = np.asarray(pred_vertices, dtype=np.float64)
    gt = np.asarray(gt_vertices, dtype=np.float64)
    if pred.ndim != 2 or pred.shape[1] != 3 or pred.shape != gt.shape:
        raise ValueError(
            f"expected two [V, 3] arrays of equal shape, got {pred.shape} and {gt.shape}"
        )
    if len(pred) == 0:
        raise ValueError("no vertices to compare")
    aligned = _align(pred, gt, align)
    return float(100.0 * np.linalg.norm(aligned - gt, axis=1).mean())
