"""Choosing the probability threshold and the small-component filter on validation slices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from covseg.metrics import confusion, dice

__all__ = ["THRESHOLDS", "choose_min_component", "choose_threshold", "remove_small_components"]

#: Candidate thresholds 0.05, 0.10, ..., 0.95.
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def _slice_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    tp, fp, fn, tn = confusion(pred, truth, axes=(1, 2))
    return float(np.mean(dice(tp, fp, fn, tn)))


def choose_threshold(
    probs: np.ndarray, truths: np.ndarray, candidates: Sequence[float] = THRESHOLDS
) -> tuple[float, float]:
    """The threshold that maximises the per-slice-mean Dice (ties: the one nearest 0.5).

    Args:
        probs: ``(N, H, W)`` probabilities.
        truths: ``(N, H, W)`` binary truth.
        candidates: thresholds to try.

    Returns:
        ``(threshold, its per-slice-mean Dice)``; ``(0.5, nan)`` when there are no slices.
    """
    probs, truths = np.asarray(probs), np.asarray(truths).astype(bool)
    if probs.ndim == 2:
        probs, truths = probs[None], truths[None]
    if len(probs) == 0:
        return 0.5, float("nan")
    scores = [(_slice_dice(probs >= t, truths), -abs(t - 0.5), t) for t in candidates]
    best = max(scores)
    return float(best[2]), best[0]


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_size`` pixels, slice by slice.

    Args:
        mask: ``(N, H, W)`` or ``(H, W)`` binary.
        min_size: pixels; 0 or 1 keeps everything.

    Returns:
        Boolean mask of the same shape.
    """
    m = np.asarray(mask).astype(bool)
    if min_size <= 1:
        return m
    flat = m[None] if m.ndim == 2 else m
    out = np.zeros_like(flat)
    structure = np.ones((3, 3), dtype=bool)
    for k, sl in enumerate(flat):
        labels, n = ndimage.label(sl, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_size
        keep[0] = False
        out[k] = keep[labels]
    return out[0] if m.ndim == 2 else out


def choose_min_component(
    probs: np.ndarray, truths: np.ndarray, threshold: float, candidates: Sequence[int]
) -> tuple[int, float]:
    """The minimum component size (from ``candidates``) maximising per-slice-mean Dice at
    ``threshold`` (ties: the smallest size).

    Returns:
        ``(min_size, its per-slice-mean Dice)``.
    """
    probs, truths = np.asarray(probs), np.asarray(truths).astype(bool)
    if len(probs) == 0 or not candidates:
        return 0, float("nan")
    pred = probs >= threshold
    scores = [(_slice_dice(remove_small_components(pred, c), truths), -c) for c in candidates]
    best = max(scores)
    return int(-best[1]), best[0]
