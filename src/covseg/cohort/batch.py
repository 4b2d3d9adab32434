"""Many small pictures through the network together: one forward pass for several cases.

A folder of PNG slices is one case per picture; segmented one by one, each pays a forward pass
of its own (and the framing's scout look). Here pictures of one shape and intensity rule are
stacked into ``(N, H, W)`` canonical slices and go through the segmenter's public per-slice steps
(:meth:`~covseg.inference.segmenter.Segmenter.framed`, then
:func:`~covseg.inference.postprocess.masks_from_probabilities`) ``batch_size`` slices at a time;
each picture then gets its own masks, calibrated estimate and
:func:`~covseg.inference.burden.burden_report`. Every slice is framed and post-processed on its
own (:mod:`covseg.inference.framing`), so the results equal those of
:meth:`~covseg.inference.segmenter.Segmenter.predict_image` picture by picture (the tests compare
them byte for byte).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from covseg.data.geometry import canonical_view
from covseg.data.io import Image
from covseg.data.preprocess import normalize_intensity
from covseg.errors import CovsegError, DataError
from covseg.inference.predict import Probabilities
from covseg.inference.segmenter import Segmenter, SegmentResult

__all__ = ["segment_pictures"]


def segment_pictures(
    seg: Segmenter, images: Sequence[Image], probability: bool = False
) -> list[SegmentResult | CovsegError]:
    """Segment 2-D pictures, several per forward pass.

    Args:
        seg: the loaded model (with a lung head).
        images: 2-D :class:`~covseg.data.io.Image` pictures (``affine=None``).
        probability: also each picture's uint8 calibrated infection probability
            (:attr:`~covseg.inference.segmenter.SegmentResult.probability`).

    Returns:
        Per picture, in order, its :class:`SegmentResult` (masks of the picture's shape), or
        the error that stopped it (NaN values, an intensity range that fits no rule, ...).

    Raises:
        DataError: an image that is not a 2-D picture.
    """
    results: list[SegmentResult | CovsegError] = [DataError("not segmented")] * len(images)
    groups: dict[tuple[tuple[int, ...], str], list[int]] = {}
    views = []
    for i, image in enumerate(images):
        if image.array.ndim != 2:
            raise DataError(f"{image.path}: segment_pictures takes 2-D pictures")
        view = canonical_view(image.array, image)
        views.append(view)
        try:
            rule = seg.intensity_rule(view, image.path)
        except CovsegError as err:
            results[i] = err
            continue
        groups.setdefault((view.shape[1:], rule), []).append(i)
    for (hw, rule), idx in groups.items():
        step = seg.batch_step(*hw)
        for k in range(0, len(idx), step):
            part = idx[k : k + step]
            raw = np.concatenate([views[i] for i in part])
            probs = seg.framed(normalize_intensity(raw, rule))
            for j, i in enumerate(part):
                one = Probabilities(
                    None if probs.lung is None else probs.lung[j : j + 1],
                    probs.infection[j : j + 1],
                )
                results[i] = _result(seg, images[i], one, rule, probability)
    return results


def _result(
    seg: Segmenter, image: Image, probs: Probabilities, rule: str, probability: bool
) -> SegmentResult:
    """One picture's masks and report from its ``(1, H, W)`` probabilities (what
    :meth:`~covseg.inference.segmenter.Segmenter.segment_slices` and ``predict_image`` do for
    one slice)."""
    outs = [np.zeros_like(image.array, dtype=np.uint8, subok=False) for _ in range(2 + probability)]
    views = [canonical_view(a, image) for a in outs]
    expected, counts = seg.write_batch(probs, *views)
    estimate = seg.estimate(expected, counts)
    report = seg.report(*views[:2], image.array.shape, rule, None, None, estimate)
    return SegmentResult(outs[0], outs[1], report, probability=outs[2] if probability else None)
