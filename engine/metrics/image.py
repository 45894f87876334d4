"""Image-space metrics: PSNR, SSIM, their strict masked variants, and silhouette IoU.

Conventions:
    Images are ``[H, W, 3]`` arrays; float images are expected in ``[0, 1]``, integer images
    (e.g. ``uint8``) are rescaled by their dtype's maximum. Masks are ``[H, W]`` arrays; bool, or
    numeric where values ``> 0.5`` count as inside.

The masked variants are *strict*: errors are averaged over the masked pixels only, so a small
foreground object is not diluted by a large, trivially correct background.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

logger = logging.getLogger(__name__)

#: Images are compared in [0, 1], so the data range for PSNR and SSIM is 1.
DATA_RANGE: float = 1.0

#: SSIM settings of Wang et al. (2004): 11x11 Gaussian window with sigma 1.5, population
#: covariance. Shared by `ssim` and `m_ssim` so the two always agree.
SSIM_KWARGS: dict[str, Any] = {
    "data_range": DATA_RANGE,
    "gaussian_weights": True,
    "sigma": 1.5,
    "use_sample_covariance": False,
}


def as_float_image(image: np.ndarray) -> np.ndarray:
    """Converts an image to float64 in [0, 1].

    Args:
        image: ``[H, W, 3]`` image, float in [0, 1] or integer (e.g. uint8 in [0, 255]).

    Returns:
        ``[H, W, 3]`` float64 array. Integer inputs are divided by their dtype's maximum.

    Raises:
        ValueError: If the image is not ``[H, W, 3]``.
    """
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an image of shape [H, W, 3], got {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float64) / float(np.iinfo(arr.dtype).max)
    if arr.dtype == np.bool_:
        return arr.astype(np.float64)
    return arr.astype(np.float64, copy=False)


def as_bool_mask(mask: np.ndarray) -> np.ndarray:
    """Converts a mask to bool.

    Args:
        mask: ``[H, W]`` mask; bool, or numeric where values > 0.5 are inside.

    Returns:
        ``[H, W]`` bool array.

    Raises:
        ValueError: If the mask is not 2-D.
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"expected a mask of shape [H, W], got {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    return arr > 0.5


def _image_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Converts and shape-checks a prediction / ground-truth image pair."""
    pred_f, gt_f = as_float_image(pred), as_float_image(gt)
    if pred_f.shape != gt_f.shape:
        raise ValueError(f"image shapes differ: pred {pred_f.shape} vs gt {gt_f.shape}")
    return pred_f, gt_f


def _inside_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Converts and checks a mask against an image shape; rejects empty masks."""
    mask_b = as_bool_mask(mask)
    if mask_b.shape != tuple(shape[:2]):
        raise ValueError(f"mask shape {mask_b.shape} does not match image shape {shape[:2]}")
    if not mask_b.any():
        raise ValueError("mask is empty: a masked metric is undefined without any pixel inside")
    return mask_b


def _psnr_from_mse(mse: float) -> float:
    """PSNR in dB for a given mean squared error; inf for a perfect match."""
    if mse <= 0.0:
        return math.inf
    return float(10.0 * math.log10(DATA_RANGE**2 / mse))


def _ssim_map(pred: np.ndarray, gt: np.ndarray) -> tuple[float, np.ndarray]:
    """Greyscale SSIM of two [H, W, 3] float images: (mean SSIM, [H, W] SSIM map)."""
    mean_ssim, ssim_map = structural_similarity(
        rgb2gray(pred), rgb2gray(gt), full=True, **SSIM_KWARGS
    )
    return float(mean_ssim), ssim_map


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """Colour PSNR over all pixels and channels.

    Args:
        pred: ``[H, W, 3]`` predicted image.
        gt: ``[H, W, 3]`` ground-truth image.

    Returns:
        PSNR in dB (data range 1); ``inf`` if the images are identical.
    """
    pred_f, gt_f = _image_pair(pred, gt)
    return _psnr_from_mse(float(np.mean((pred_f - gt_f) ** 2)))


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Greyscale SSIM with the Wang et al. settings (see `SSIM_KWARGS`).

    Note that scikit-image averages the SSIM map without a border of half a window (5 px), so
    this is not exactly the plain mean of the SSIM map.

    Args:
        pred: ``[H, W, 3]`` predicted image.
        gt: ``[H, W, 3]`` ground-truth image.

    Returns:
        Mean SSIM in [-1, 1].
    """
    pred_f, gt_f = _image_pair(pred, gt)
    return _ssim_map(pred_f, gt_f)[0]


def m_psnr(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """Strict masked PSNR: the MSE is averaged over the pixels inside the mask only.

    Args:
        pred: ``[H, W, 3]`` predicted image.
        gt: ``[H, W, 3]`` ground-truth image.
        mask: ``[H, W]`` mask of the pixels to evaluate.

    Returns:
        PSNR in dB over the masked pixels (all 3 channels); ``inf`` if they match exactly.

    Raises:
        ValueError: If the mask is empty or shapes disagree.
    """
    pred_f, gt_f = _image_pair(pred, gt)
    inside = _inside_mask(mask, pred_f.shape)
    return _psnr_from_mse(float(np.mean((pred_f[inside] - gt_f[inside]) ** 2)))


def m_ssim(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """Strict masked SSIM: the full greyscale SSIM map averaged over the masked pixels only.

    The map uses the same settings as `ssim`. Unlike `ssim`, no border is cropped, so with a
    full mask this is the plain mean of the SSIM map.

    Args:
        pred: ``[H, W, 3]`` predicted image.
        gt: ``[H, W, 3]`` ground-truth image.
        mask: ``[H, W]`` mask of the pixels to evaluate.

    Returns:
        Mean SSIM over the masked pixels.

    Raises:
        ValueError: If the mask is empty or shapes disagree.
    """
    pred_f, gt_f = _image_pair(pred, gt)
    inside = _inside_mask(mask, pred_f.shape)
    ssim_map = _ssim_map(pred_f, gt_f)[1]
    return float(np.mean(ssim_map[inside]))


def iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Silhouette intersection over union.

    Args:
        mask_a: ``[H, W]`` mask.
        mask_b: ``[H, W]`` mask.

    Returns:
        IoU in [0, 1]; 1.0 when both masks are empty (they agree perfectly).

    Raises:
        ValueError: If the shapes differ.
    """
    a, b = as_bool_mask(mask_a), as_bool_mask(mask_b)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return float(np.count_nonzero(a & b) / union)
