"""The one step from probabilities to masks, shared by every command.

``segment``, ``evaluate``, ``cv``, training validation and the selection of the post-processing
on validation data all call :func:`postprocess` (or, for the selection's grid search, the same
three stages it is made of), so a published score is the score of the masks ``segment`` writes.

At the slice's own resolution ``(H, W)``:

1. probabilities are resized from the network's ``S x S`` (bilinear, on probabilities);
2. lungs = lung probability >= ``lung_threshold``; infection = infection probability >=
   ``threshold``, kept only within :func:`near_lungs` (the predicted lungs dilated by
   ``lung_margin_px`` scaled to the slice: dense consolidation at the pleura is often missed by
   the lung head);
3. infection components smaller than ``min_component`` (scaled by area) are removed, slice by
   slice (8-connectivity);
4. the lung mask is united with the infection, so infection always lies inside the lungs and
   burden percentages stay <= 100.

Every stage costs time linear in the pixels (a distance transform on the infection's bounding
box instead of a dilation whose cost grows with the radius; one labelling call per batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from covseg.config import PostProcessing
from covseg.data.preprocess import resize_back
from covseg.inference.predict import Probabilities

__all__ = [
    "Masks",
    "component_sizes",
    "estimate_counts",
    "masks_from_probabilities",
    "near_lungs",
    "postprocess",
    "remove_small_components",
    "resize_probabilities",
    "scaled",
]

#: 8-connectivity within a slice, none across slices (``(N, H, W)`` stacks in one call).
_SLICE_8 = np.zeros((3, 3, 3), dtype=bool)
_SLICE_8[1] = True


class Masks(NamedTuple):
    """Boolean ``(N, H, W)`` masks; ``lung`` is ``None`` for a model without a lung head.
    ``lung`` includes the infection."""

    lung: np.ndarray | None
    infection: np.ndarray


def scaled(
    post: PostProcessing, shape_hw: tuple[int, int], model_size: int
) -> tuple[int, int | None]:
    """``(min_component, lung margin)`` in pixels of a ``shape_hw`` slice.

    The area threshold scales with ``H * W / S**2``, the margin with ``max(H, W) / S`` (a
    margin of at least one pixel where the model's margin is not 0).
    """
    h, w = shape_hw
    min_px = round(post.min_component * h * w / model_size**2)
    if post.lung_margin_px is None:
        return min_px, None
    r = round(post.lung_margin_px * max(h, w) / model_size)
    return min_px, max(1, r) if post.lung_margin_px > 0 else 0


def near_lungs(lung: np.ndarray, margin: int | None, where: np.ndarray | None = None) -> np.ndarray:
    """Pixels within ``margin`` pixels (Euclidean) of the lungs, slice by slice.

    Equal to a binary dilation by a disk of radius ``margin``, computed by a distance transform
    so that the cost does not grow with the radius, and only around ``where`` (the candidate
    infection; elsewhere the result is False, which is all a restriction needs).

    Args:
        lung: ``(N, H, W)`` boolean lungs.
        margin: pixels; ``None``: everything counts as near (no restriction).
        where: ``(N, H, W)`` boolean pixels that will be asked about (default: all).

    Returns:
        ``(N, H, W)`` boolean.
    """
    if margin is None:
        return np.ones(lung.shape, dtype=bool)
    if margin == 0:
        return lung.copy() if where is None else lung & where
    out = np.zeros(lung.shape, dtype=bool)
    for k in range(len(lung)):
        if not lung[k].any():
            continue
        if where is None:
            y0, y1, x0, x1 = 0, lung.shape[1], 0, lung.shape[2]
        else:
            rows, cols = np.nonzero(where[k].any(axis=1))[0], np.nonzero(where[k].any(axis=0))[0]
            if rows.size == 0:
                continue
            y0, y1 = max(0, rows[0] - margin), min(lung.shape[1], rows[-1] + margin + 1)
            x0, x1 = max(0, cols[0] - margin), min(lung.shape[2], cols[-1] + margin + 1)
        crop = lung[k, y0:y1, x0:x1]
        if not crop.any():
            continue
        dist = ndi.distance_transform_edt(~crop)
        out[k, y0:y1, x0:x1] = dist <= margin
    return out


def component_sizes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, sizes)`` of the 8-connected components of every slice of ``(N, H, W)``
    ``mask`` (one labelling call; ``sizes[0]`` is the background)."""
    labels, _ = ndi.label(mask, structure=_SLICE_8)
    return labels, np.bincount(labels.ravel())


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_size`` pixels, slice by slice.

    Args:
        mask: ``(N, H, W)`` or ``(H, W)`` binary.
        min_size: pixels; 0 or 1 keeps everything.

    Returns:
        Boolean mask of the same shape.
    """
    m = np.asarray(mask).astype(bool)
    if min_size <= 1 or not m.any():
        return m
    flat = m[None] if m.ndim == 2 else m
    labels, sizes = component_sizes(flat)
    keep = sizes >= min_size
    keep[0] = False
    out = keep[labels]
    return out[0] if m.ndim == 2 else out


def masks_from_probabilities(
    lung_p: np.ndarray | None, inf_p: np.ndarray, post: PostProcessing, model_size: int
) -> Masks:
    """Stages 2-4 of the module docstring at the probabilities' own resolution.

    Args:
        lung_p: ``(N, H, W)`` lung probabilities, or ``None`` (no lung head: no restriction).
        inf_p: ``(N, H, W)`` infection probabilities.
        post: the post-processing.
        model_size: the network's input side ``S`` (sizes in ``post`` are at ``S``).

    Returns:
        :class:`Masks`.
    """
    min_px, margin = scaled(post, inf_p.shape[1:], model_size)
    inf = inf_p >= post.threshold
    lung = None if lung_p is None else lung_p >= post.lung_threshold
    if lung is not None and margin is not None:
        inf &= near_lungs(lung, margin, where=inf)
    inf = remove_small_components(inf, min_px)
    return Masks(None if lung is None else lung | inf, inf)


def resize_probabilities(probs: Probabilities, shape_hw: tuple[int, int]) -> Probabilities:
    """Stage 1: the network's ``(N, S, S)`` probabilities at the slices' own ``(H, W)``
    (bilinear; unchanged where the sizes agree)."""
    hw = (int(shape_hw[0]), int(shape_hw[1]))

    def back(p: np.ndarray) -> np.ndarray:
        return p if p.shape[1:] == hw else resize_back(p, hw, mask=False)

    return Probabilities(None if probs.lung is None else back(probs.lung), back(probs.infection))


def postprocess(
    probs: Probabilities, post: PostProcessing, shape_hw: tuple[int, int], model_size: int
) -> Masks:
    """Masks of ``shape_hw`` slices from the network's ``(N, S, S)`` probabilities (all four
    stages of the module docstring).

    Args:
        probs: :class:`~covseg.inference.predict.Probabilities` at the model's size.
        post: the post-processing.
        shape_hw: the slices' own ``(H, W)``.
        model_size: ``S``.

    Returns:
        :class:`Masks` of shape ``(N, H, W)``.
    """
    lung, inf = resize_probabilities(probs, shape_hw)
    return masks_from_probabilities(lung, inf, post, model_size)


def estimate_counts(
    probs: Probabilities, post: PostProcessing, thresholds: Sequence[float], size: int
) -> tuple[float, list[int]]:
    """The burden estimate's sums over a batch of slices: calibrated infection probabilities
    summed over the lungs (lung probability >= ``post.lung_threshold``), and the infection-mask
    voxels at each of ``thresholds`` (the interval's; ``post`` otherwise). Zeros without a lung
    head: there are no lungs to sum over."""
    if probs.lung is None:
        return 0.0, [0] * len(thresholds)
    expected = float(probs.infection[probs.lung >= post.lung_threshold].sum())
    counts = [
        int(
            np.count_nonzero(
                masks_from_probabilities(*probs, post.replace(threshold=t), size).infection
            )
        )
        for t in thresholds
    ]
    return expected, counts
