"""The calibrated infection probability as an output: ``segment --probabilities``.

What is written is the array the shipped threshold is applied to: the infection head's
probability at the slice's own resolution, after the checkpoint's calibration
(:func:`~covseg.inference.calibration.calibrate`) and *before* the rest of the post-processing
(:mod:`covseg.inference.postprocess`): the restriction to the lungs and their margin, and the
removal of small components. So the infection mask is ``probability >= threshold``, kept near the
lungs, without its small components; thresholding the probability alone gives a superset of it
(equal where the post-processing keeps everything).

It is stored as uint8 ``q = round(255 * p)`` (:func:`quantize_probability`), with one
exception that makes the shipped threshold exact on the stored scale: ``q >= level(threshold)``
(:func:`probability_level`, the level whose rounding boundary is nearest to the threshold)
holds exactly where ``p >= threshold`` does. Values between the threshold and that boundary
(within half a level of the threshold) are stored on the threshold's side, one level from their
rounding: every stored value is within one level (1/255) of ``p``.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from covseg.data.io import Image, write_mask
from covseg.errors import DataError

__all__ = ["PROBABILITY_SCALE", "probability_level", "quantize_probability", "write_probability"]

#: The stored value of probability 1.
PROBABILITY_SCALE = 255


def probability_level(threshold: float) -> int:
    """The stored level of a threshold ``t``: ``floor(255 * t) + 1`` (the viewer's
    ``Math.floor(255 * t) + 1``), at most 255. Levels from it up round values from
    ``(level - 0.5) / 255`` up, the rounding boundary nearest to ``t`` (``0.5`` -> ``128``,
    exactly ``127.5 / 255``)."""
    return min(PROBABILITY_SCALE, math.floor(threshold * PROBABILITY_SCALE) + 1)


def quantize_probability(p: np.ndarray, threshold: float) -> np.ndarray:
    """``p`` in ``[0, 1]`` as uint8 levels, exact at ``threshold`` (see the module docstring).

    Args:
        p: calibrated infection probabilities, any shape.
        threshold: the shipped threshold (``PostProcessing.threshold``).

    Returns:
        uint8 array of ``p``'s shape: ``q >= probability_level(threshold)`` exactly where
        ``p >= threshold``.
    """
    p = np.asarray(p, dtype=np.float32)
    q = np.floor(np.clip(p, 0.0, 1.0) * PROBABILITY_SCALE + 0.5).astype(np.uint8)
    k = probability_level(threshold)
    above = p >= threshold
    q[above & (q < k)] = k  # the threshold's side of the rounding boundary, at most one
    q[~above & (q >= k)] = k - 1  # of the two happens for a given threshold
    return q


def write_probability(q: np.ndarray, image: Image, path: str | Path) -> Path:
    """Write uint8 levels aligned with ``image``, atomically: NIfTI with the image's geometry
    (as the masks, :func:`~covseg.data.io.write_mask`), or a grey PNG of the levels as they are
    (never rescaled, unlike a binary mask's PNG).

    Args:
        q: :func:`quantize_probability` levels, ``image.array``'s shape.
        image: the input as read.
        path: ``.nii.gz`` (volumes) or ``.png`` (pictures).

    Returns:
        The written path.

    Raises:
        DataError: a shape that does not fit ``image``, an unsupported suffix.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        return write_mask(q, image, path)
    from PIL import Image as PILImage

    if q.shape != image.array.shape or q.ndim != 2:
        raise DataError(f"{path}: probability shape {q.shape} != picture shape {image.array.shape}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        PILImage.fromarray(np.ascontiguousarray(q, dtype=np.uint8), mode="L").save(tmp, "PNG")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
