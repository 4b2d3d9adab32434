"""Lung framing: a second look at every slice, cropped to the lungs that the first look found.

A slice framed loosely (a zoomed-out scan, a small patient in a large field of view, a picture
with a wide border) shows the network small lungs and smaller lesions; one cropped to the lungs
shows them large. With ``framing="lungs"`` the network sees every slice twice:

1. the whole slice, resized to the network's ``S x S`` input, as with ``framing="full"``;
2. the box of the lungs it found (lung probability ``> 0.5``) plus :data:`MARGIN` of the slice's
   side on each border, of the slice's aspect ratio (pixels stay square) and at least
   :data:`MIN_SCALE` of each side (a magnification of at most ``1 / MIN_SCALE``, the largest zoom of
   the robust training profile), cut from the slice at its own resolution and resized to
   ``S x S``.

The probabilities of the second look replace those of the first inside the box; outside it the
first look's stay (there, by construction, no lung was found). A slice without lungs, or whose
box is the whole slice, is looked at once. Each slice is framed on its own, so the result does
not depend on how slices are batched.

:func:`crop_box` is also the crop of the ``crop_lungs`` robustness variant
(:mod:`covseg.evaluation.robustness`), which applies it to the truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from covseg.config import FRAMINGS
from covseg.data.preprocess import resize_slices
from covseg.inference.postprocess import resize_probabilities
from covseg.inference.predict import Probabilities

__all__ = ["FRAMINGS", "MARGIN", "MIN_SCALE", "crop_box", "framed_probabilities", "lung_boxes"]

#: Fraction of the slice's side added on each border of the lungs' box.
MARGIN = 0.08
#: The crop spans at least this fraction of each side of the slice.
MIN_SCALE = 0.5
#: Lung probability above which a pixel counts as lung for the box.
LUNG_THRESHOLD = 0.5


def _padded_box(lo: int, hi: int, side: int, length: int) -> int:
    """Start of a ``length`` window in ``[0, side)`` that holds ``[lo, hi)``, centred on it."""
    start = (lo + hi - length) // 2
    start = min(max(start, hi - length), lo)
    return min(max(start, 0), side - length)


def crop_box(
    mask: np.ndarray, margin: float = MARGIN, min_scale: float = 0.0
) -> tuple[int, int, int, int]:
    """The smallest box of the slices' aspect ratio that holds ``mask`` (over all slices) plus
    ``margin`` of the side on each border, and spans at least ``min_scale`` of each side.

    Args:
        mask: ``(N, H, W)`` boolean.
        margin: fraction of ``H`` (rows) and ``W`` (columns) added on each side.
        min_scale: smallest fraction of each side the box spans (``0``: no floor).

    Returns:
        ``(r0, r1, c0, c1)``, half-open; the whole slice for an empty mask.
    """
    _, h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    if not len(rows):
        return 0, h, 0, w
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    s = max((r1 - r0 + 2 * margin * h) / h, (c1 - c0 + 2 * margin * w) / w, min_scale)
    s = min(1.0, s)
    bh, bw = min(h, math.ceil(s * h)), min(w, math.ceil(s * w))
    top, left = _padded_box(r0, r1, h, bh), _padded_box(c0, c1, w, bw)
    return top, top + bh, left, left + bw


def lung_boxes(
    lung: np.ndarray, shape_hw: tuple[int, int]
) -> list[tuple[int, int, int, int] | None]:
    """Per slice, the crop of the second look in ``shape_hw`` pixels, or ``None``.

    Args:
        lung: ``(N, S, S)`` lung probabilities of the first look.
        shape_hw: the slices' own ``(H, W)``.

    Returns:
        ``(r0, r1, c0, c1)`` (half-open) per slice; ``None`` where no lung was found or the box
        is the whole slice.
    """
    h, w = shape_hw
    n, s_r, s_c = lung.shape
    boxes: list[tuple[int, int, int, int] | None] = []
    for i in range(n):
        r0, r1, c0, c1 = crop_box(lung[i : i + 1] > LUNG_THRESHOLD, MARGIN, MIN_SCALE)
        # From the S x S grid to the slice's pixels (outward, so the lungs stay inside).
        box = (
            math.floor(r0 * h / s_r),
            math.ceil(r1 * h / s_r),
            math.floor(c0 * w / s_c),
            math.ceil(c1 * w / s_c),
        )
        boxes.append(None if box == (0, h, 0, w) else box)
    return boxes


def framed_probabilities(
    predict: Callable[[np.ndarray], Probabilities],
    images01: np.ndarray,
    size: int,
    framing: str = "full",
) -> Probabilities:
    """Head probabilities of ``(N, H, W)`` slices in ``[0, 1]``, at their own ``(H, W)``.

    Args:
        predict: the network: ``(N, S, S)`` float32 in ``[0, 1]`` -> :class:`Probabilities`
            at ``S x S`` (a :class:`~covseg.inference.predict.Predictor`).
        images01: ``(N, H, W)`` normalised slices.
        size: the network's input side ``S``.
        framing: one of :data:`FRAMINGS` (see the module docstring).

    Returns:
        float32 probabilities ``(N, H, W)``; ``lung`` is ``None`` for a model without a lung
        head (which is then always looked at once).

    Raises:
        ValueError: an unknown ``framing``.
    """
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, got {framing!r}")
    hw = (int(images01.shape[1]), int(images01.shape[2]))
    first = predict(resize_slices(images01, size, mask=False))
    out = resize_probabilities(first, hw)
    if framing == "full" or first.lung is None or not len(images01):
        return out
    boxes = lung_boxes(first.lung, hw)
    todo = [(i, b) for i, b in enumerate(boxes) if b is not None]
    if not todo:
        return out
    # Written in place: ``first`` is not read again (its arrays may be ``out``'s, unresized).
    lung, inf = out
    crops = np.empty((len(todo), size, size), dtype=np.float32)
    for j, (i, (r0, r1, c0, c1)) in enumerate(todo):
        crops[j] = resize_slices(images01[i : i + 1, r0:r1, c0:c1], size, mask=False)[0]
    second = predict(crops)
    for j, (i, (r0, r1, c0, c1)) in enumerate(todo):
        part = Probabilities(second.lung[j : j + 1], second.infection[j : j + 1])  # type: ignore[index]
        part = resize_probabilities(part, (r1 - r0, c1 - c0))
        lung[i, r0:r1, c0:c1] = part.lung[0]  # type: ignore[index]
        inf[i, r0:r1, c0:c1] = part.infection[0]
    return Probabilities(lung, inf)
