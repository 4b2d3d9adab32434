"""Lung framing: every slice seen cropped to its lungs, found by a cheap scout look.

A slice framed loosely (a zoomed-out scan, a small patient in a large field of view, a picture
with a wide border) shows the network small lungs and smaller lesions; one cropped to the lungs
shows them large. With ``framing="lungs"`` the network sees every slice twice (rarely three
times):

1. a *scout*: the whole slice at :data:`SCOUT_SCALE` of the network's side (``S / 2``, a quarter
   of the work of a full look), only to find the lungs;
2. the *look*: the box of the lungs the scout found (lung probability above
   :data:`SCOUT_LUNG_THRESHOLD`) plus :data:`MARGIN` of the slice's side on each border, of the
   slice's aspect ratio (pixels stay square) and at least :data:`MIN_SCALE` of each side (a
   magnification of at most ``1 / MIN_SCALE``, the largest zoom of the robust training
   profile), cut from the slice at its own resolution and resized to ``S x S``. Where the
   scout found no lungs, or the box is the whole slice, the look is at the whole slice,
   exactly as with ``framing="full"``;
3. where that whole-slice look finds lungs in a smaller box (probability above
   :data:`LUNG_THRESHOLD`; lungs too small for the scout in a zoomed-out frame, or a scout
   that took much of an equalised picture for lung), one more look, at their box.

Every slice thus gets one full-size look (some two); inside a box the look's probabilities
replace those underneath, which are the scout's (or the whole-slice look's). Outside the box
the scout found no lung, so the lung-gated infection there is about 0. Each slice is framed on
its own, so the result does not depend on how slices are batched. ``framing="full"`` is one
look at the whole slice.

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

__all__ = [
    "FRAMINGS",
    "MARGIN",
    "MIN_SCALE",
    "SCOUT_SCALE",
    "crop_box",
    "framed_probabilities",
    "lung_boxes",
    "scout_size",
]

#: Fraction of the slice's side added on each border of the lungs' box.
MARGIN = 0.08
#: The crop spans at least this fraction of each side of the slice.
MIN_SCALE = 0.5
#: Lung probability above which a pixel counts as lung for the box of a full-size look.
LUNG_THRESHOLD = 0.5
#: The same for the scout, whose lungs are about half the size of a full look's in a zoomed-out
#: frame (it sees them at a quarter of the pixels): a box from them at 0.5 cuts the lungs.
SCOUT_LUNG_THRESHOLD = 0.25
#: The scout's side as a fraction of the network's input side.
SCOUT_SCALE = 0.5


def scout_size(size: int) -> int:
    """The scout's input side for a network of input side ``size`` (at least 32 px)."""
    return min(size, max(32, round(SCOUT_SCALE * size)))


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
    lung: np.ndarray, shape_hw: tuple[int, int], threshold: float = LUNG_THRESHOLD
) -> list[tuple[int, int, int, int] | None]:
    """Per slice, the crop of the look in ``shape_hw`` pixels, or ``None``.

    Args:
        lung: ``(N, s, s)`` lung probabilities of the scout or of a whole-slice look (any
            grid side ``s``).
        shape_hw: the slices' own ``(H, W)``.
        threshold: lung probability above which a pixel counts as lung.

    Returns:
        ``(r0, r1, c0, c1)`` (half-open) per slice; ``None`` where no lung was found or the box
        is the whole slice (the look is then at the whole slice).
    """
    h, w = shape_hw
    n, s_r, s_c = lung.shape
    boxes: list[tuple[int, int, int, int] | None] = []
    for i in range(n):
        r0, r1, c0, c1 = crop_box(lung[i : i + 1] > threshold, MARGIN, MIN_SCALE)
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
        predict: the network: ``(N, s, s)`` float32 in ``[0, 1]`` -> :class:`Probabilities`
            at ``s x s``, for ``s`` the input side ``S`` and the scout's
            (a :class:`~covseg.inference.predict.Predictor`). Its ``has_lung_head`` attribute,
            where it has one and it is false, skips the scout.
        images01: ``(N, H, W)`` normalised slices.
        size: the network's input side ``S``.
        framing: one of :data:`FRAMINGS` (see the module docstring).

    Returns:
        float32 probabilities ``(N, H, W)``; ``lung`` is ``None`` for a model without a lung
        head (which is then always looked at once, at the whole slice).

    Raises:
        ValueError: an unknown ``framing``.
    """
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, got {framing!r}")
    hw = (int(images01.shape[1]), int(images01.shape[2]))
    if framing == "full" or not len(images01) or not getattr(predict, "has_lung_head", True):
        return resize_probabilities(predict(resize_slices(images01, size, mask=False)), hw)
    scout = predict(resize_slices(images01, scout_size(size), mask=False))
    if scout.lung is None:  # no lung head after all: one look at the whole slice
        return resize_probabilities(predict(resize_slices(images01, size, mask=False)), hw)
    whole = (0, hw[0], 0, hw[1])
    found = lung_boxes(scout.lung, hw, SCOUT_LUNG_THRESHOLD)
    look = _looks(predict, images01, [b or whole for b in found], size)
    # Where the scout found no lungs, or lungs all over the frame (an equalised picture can look
    # like that at 128^2), the look was at the whole slice; where that look finds lungs in a
    # smaller box, one more look at it.
    missed = [i for i, b in enumerate(found) if b is None]
    again = lung_boxes(look.lung[missed], hw) if missed else []  # type: ignore[index]
    redo = [(i, b) for i, b in zip(missed, again, strict=True) if b is not None]
    boxed = [i for i, b in enumerate(found) if b is not None]
    lung = np.empty((len(images01), *hw), dtype=np.float32)
    inf = np.empty_like(lung)
    # Under each box: the scout's, or the whole-slice look's where there was one.
    for idx, src in ((missed, look), (boxed, scout)):
        if idx:
            part = Probabilities(src.lung[idx], src.infection[idx])  # type: ignore[index]
            lung[idx], inf[idx] = resize_probabilities(part, hw)
    pastes = [(i, found[i], look, i) for i in boxed]
    if redo:
        second = _looks(predict, images01[[i for i, _ in redo]], [b for _, b in redo], size)
        pastes += [(i, b, second, j) for j, (i, b) in enumerate(redo)]
    for i, box, src, j in pastes:
        r0, r1, c0, c1 = box  # type: ignore[misc]
        part = Probabilities(src.lung[j : j + 1], src.infection[j : j + 1])  # type: ignore[index]
        part = resize_probabilities(part, (r1 - r0, c1 - c0))
        lung[i, r0:r1, c0:c1] = part.lung[0]  # type: ignore[index]
        inf[i, r0:r1, c0:c1] = part.infection[0]
    return Probabilities(lung, inf)


def _looks(
    predict: Callable[[np.ndarray], Probabilities],
    images01: np.ndarray,
    boxes: list[tuple[int, int, int, int]],
    size: int,
) -> Probabilities:
    """The network's probabilities (at ``size``) of each slice's box, cut and resized."""
    crops = np.empty((len(boxes), size, size), dtype=np.float32)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        crops[i] = resize_slices(images01[i : i + 1, r0:r1, c0:c1], size, mask=False)[0]
    return predict(crops)
