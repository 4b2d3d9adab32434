"""The checks and geometry of the arrays given to
:meth:`Segmenter.predict_volume <covseg.inference.segmenter.Segmenter.predict_volume>`: which of
its three layouts an array is in, and the millimetres that go with it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covseg.data.io import Image, check_affine
from covseg.errors import DataError

__all__ = ["ARRAY_PATH", "array_slices"]

#: The name an array goes by in messages and reports.
ARRAY_PATH = Path("<array>")


def array_slices(
    volume: np.ndarray,
    spacing: Sequence[float] | None,
    affine: np.ndarray | None,
) -> Image | tuple[np.ndarray, tuple[float, float, float | None] | None, float | None]:
    """Check an array and its geometry (the layouts of ``predict_volume``).

    Args:
        volume: ``(X, Y, Z)`` with ``affine``; ``(N, H, W)`` canonical slices or ``(H, W)``
            without.
        spacing: millimetres per array axis, or ``None``.
        affine: voxel -> world for ``(X, Y, Z)`` arrays.

    Returns:
        An :class:`~covseg.data.io.Image` for an array with an affine; else ``(canonical
        (N, H, W) view, (row, column, slice) mm or None, voxel mL or None)``.

    Raises:
        DataError: wrong number of dimensions, a spacing or affine that does not fit.
    """
    if volume.ndim not in (2, 3) or volume.size == 0:
        raise DataError(f"{ARRAY_PATH}: expected a 2-D or 3-D array, got shape {volume.shape}")
    if affine is not None:
        affine = np.asarray(affine, dtype=np.float64)
        if volume.ndim != 3 or affine.shape != (4, 4) or spacing is not None:
            raise DataError(f"{ARRAY_PATH}: an affine needs a 3-D (X, Y, Z) array and no spacing")
        return Image(volume, check_affine(ARRAY_PATH, affine), "array", ARRAY_PATH)
    if spacing is not None:
        if len(spacing) != volume.ndim:
            raise DataError(
                f"{ARRAY_PATH}: spacing {tuple(spacing)} does not fit shape {volume.shape}"
            )
        if not all(np.isfinite(float(s)) and float(s) > 0 for s in spacing):
            raise DataError(f"{ARRAY_PATH}: spacing {tuple(spacing)} must be finite and positive")
    mm: tuple[float, float, float | None] | None
    if volume.ndim == 2:
        view = volume[None]
        mm = None if spacing is None else (float(spacing[0]), float(spacing[1]), None)
    else:
        view = volume
        mm = None if spacing is None else (float(spacing[1]), float(spacing[2]), float(spacing[0]))
    voxel_ml = None if mm is None or mm[2] is None else mm[0] * mm[1] * mm[2] / 1000.0
    return view, mm, voxel_ml
