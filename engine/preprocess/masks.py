"""Soft person mask → clean binary mask (threshold, keep the person's region(s), fill small holes)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CleanMask:
    """A cleaned mask and what was dropped on the way."""

    mask: np.ndarray  # [H, W] bool
    other_regions: int  # dropped regions at least `other_fraction` of the person's size (another person?)


def clean_mask(soft: np.ndarray, threshold: float = 0.5, keypoints: np.ndarray | None = None,
               hole_fraction: float = 0.02, other_fraction: float = 0.25) -> CleanMask:
    """Thresholds a soft mask and keeps only the tracked person.

    The main region is the one holding most confident keypoints (ties and keypoint-less frames:
    the largest, weighted towards the image centre). Other regions that hold a keypoint (a hand
    cut off by a thin gap) are kept too; the rest is dropped. Background holes smaller than
    `hole_fraction` of the person's area are filled (the gap between an arm and the body is not).

    Args:
        soft: [H, W] float in [0, 1] (or uint8 0..255).
        threshold: foreground above this (same scale as a float mask).
        keypoints: optional [K, 3] (x, y, confidence) of the tracked person, in pixels.
        hole_fraction: holes below this fraction of the person's area are filled.
        other_fraction: dropped regions at least this fraction of the person's area are counted
            in `other_regions`.
    """
    if soft.dtype == np.uint8:
        fg = soft > threshold * 255
    else:
        fg = soft > threshold
    h, w = fg.shape
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    if n <= 1:
        return CleanMask(np.zeros((h, w), bool), 0)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)  # [n-1]
    hits = np.zeros(n - 1, np.int64)
    if keypoints is not None:
        for x, y, c in keypoints:
            if c < 0.5:
                continue
            xi, yi = int(np.floor(x)), int(np.floor(y))
            # Keypoints sit on the outline (wrists, feet): look at a small patch around each.
            patch = labels[max(0, yi - 3): yi + 4, max(0, xi - 3): xi + 4]
            for lab in np.unique(patch[patch > 0]):
                hits[lab - 1] += 1
    centre = np.array([w / 2, h / 2])
    dist = np.linalg.norm(centroids[1:] - centre, axis=1) / np.linalg.norm(centre)
    score = areas * (1.0 - 0.5 * np.clip(dist, 0, 1))
    main = int(np.lexsort((score, hits))[-1])  # most keypoints, then largest-and-central
    keep = np.zeros(n, bool)
    keep[main + 1] = True
    keep[1:][hits > 0] = True
    mask = keep[labels]
    person_area = areas[keep[1:]].sum()
    others = int(np.sum(~keep[1:] & (areas >= other_fraction * areas[main])))
    return CleanMask(fill_holes(mask, hole_fraction * person_area), others)


def fill_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Fills background regions enclosed by `mask` (not touching the border) smaller than `max_area` px."""
    bg = (~mask).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bg, connectivity=4)  # 4 for bg when fg is 8
    if n <= 1:
        return mask
    x, y, bw, bh, area = (stats[:, i] for i in range(5))
    h, w = mask.shape
    inner = (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h) & (area < max_area)
    inner[0] = False
    return mask | inner[labels]
