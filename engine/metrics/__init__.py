"""Evaluation metrics: image (PSNR/SSIM and strict masked variants, IoU), surface and body fit."""

from engine.metrics.body import mpvpe_cm
from engine.metrics.image import as_bool_mask, as_float_image, iou, m_psnr, m_ssim, psnr, ssim
from engine.metrics.mesh import (
    chamfer_cm,
    fscore,
    mesh_metrics,
    normal_consistency,
    point_to_surface,
    sample_surface,
)

__all__ = [
    "as_bool_mask",
    "as_float_image",
    "chamfer_cm",
    "fscore",
    "iou",
    "m_psnr",
    "m_ssim",
    "mesh_metrics",
    "mpvpe_cm",
    "normal_consistency",
    "point_to_surface",
    "psnr",
    "sample_surface",
    "ssim",
]
