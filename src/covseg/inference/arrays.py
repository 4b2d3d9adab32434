"""What a :class:`~covseg.inference.segmenter.Segmenter` is given, as the canonical slices it
works on: which of :meth:`~covseg.inference.segmenter.Segmenter.predict_volume`'s three layouts
an array is in, the view of an :class:`~covseg.data.io.Image`, the millimetres that go with them,
the checks of the slices' values, and what comes back (:class:`SegmentResult`): masks of the
input's own shape and voxel order, written into through canonical views."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covseg.data.geometry import canonical_spacing, canonical_view, voxel_volume_ml
from covseg.data.io import MAX_SIDE, Image, check_affine
from covseg.errors import DataError
from covseg.inference.burden import BurdenReport

__all__ = [
    "ARRAY_PATH",
    "ScanSlices",
    "SegmentResult",
    "array_slices",
    "check_slices",
    "image_slices",
]

#: The name an array goes by in messages and reports.
ARRAY_PATH = Path("<array>")


@dataclass(frozen=True)
class ScanSlices:
    """A scan as canonical axial slices, with what maps them back to the input.

    Attributes:
        slices: ``(N, H, W)`` canonical slices (rows anterior -> posterior, columns patient
            right -> left), a view of the input where it can be.
        shape: the input's shape; the masks come back in it.
        path: what names the scan in messages and reports (:data:`ARRAY_PATH` for arrays).
        mm: ``(row, column, slice)`` millimetres, ``None`` where unknown (the slice's ``None``
            for a 2-D picture).
        voxel_ml: millilitres per voxel, ``None`` where unknown.
        image: the :class:`~covseg.data.io.Image` the slices are a view of; ``None`` for an
            array given in canonical order.
    """

    slices: np.ndarray
    shape: tuple[int, ...]
    path: Path
    mm: tuple[float, float, float | None] | None
    voxel_ml: float | None
    image: Image | None = None

    def zeros(self) -> tuple[np.ndarray, np.ndarray]:
        """A uint8 array of zeros of the input's shape and voxel order, and its canonical
        ``(N, H, W)`` view (through which the masks are written).

        Returns:
            ``(array, view)``; the view shares the array's memory.
        """
        if self.image is None:
            out = np.zeros(self.shape, dtype=np.uint8)
            return out, out.reshape(self.slices.shape)
        # The input's memory layout (NIfTI arrays are Fortran-ordered): the canonical views
        # are then near-contiguous, and the NIfTI writer copies the masks out in one pass.
        out = np.zeros_like(self.image.array, dtype=np.uint8, subok=False)
        return out, canonical_view(out, self.image)


@dataclass
class SegmentResult:
    """Masks and report of one scan.

    Attributes:
        lungs: uint8 ``{0, 1}`` lungs, the input's shape and voxel order (includes infection).
        infection: uint8 ``{0, 1}`` infection, the input's shape and voxel order.
        report: the infection-burden report (``report.to_dict()`` is the JSON).
        paths: the files written by :func:`covseg.inference.outputs.segment_file` (empty for
            arrays).
        probability: uint8 calibrated infection probability (:mod:`covseg.inference.probability`),
            the input's shape and voxel order, when asked for; else ``None``.
    """

    lungs: np.ndarray
    infection: np.ndarray
    report: BurdenReport
    paths: dict[str, Path] = field(default_factory=dict)
    probability: np.ndarray | None = None


def check_slices(slices: np.ndarray, path: str | Path) -> None:
    """Check raw canonical ``(N, H, W)`` slices before they are segmented.

    Args:
        slices: intensities as read (HU or 8-bit).
        path: what names the scan in the message.

    Raises:
        DataError: slices larger than :data:`~covseg.data.io.MAX_SIDE`, or NaN/inf values.
    """
    if max(slices.shape[1:]) > MAX_SIDE:
        h, w = slices.shape[1:]
        raise DataError(
            f"{path}: {h}x{w} px slices are larger than covseg's {MAX_SIDE} px limit; "
            "downsample the image first"
        )
    # min/max propagate NaN and show inf without a full-size temporary (np.isfinite).
    if (
        np.issubdtype(slices.dtype, np.floating)
        and not np.isfinite([np.min(slices), np.max(slices)]).all()
    ):
        raise DataError(f"{path}: NaN/inf values")


def image_slices(image: Image) -> ScanSlices:
    """An :class:`~covseg.data.io.Image` (what :func:`~covseg.data.io.read_image` returns) as
    canonical slices, its geometry checked.

    Args:
        image: a 2-D picture, or a 3-D volume with its affine.

    Returns:
        The canonical view of ``image.array``, with its spacing and voxel volume.

    Raises:
        DataError: a 3-D array without an affine, or a degenerate affine.
    """
    a = image.array
    if a.ndim == 3 and image.affine is None:
        raise DataError(f"{image.path}: expected a 2-D picture or a 3-D volume with an affine")
    if image.affine is not None:  # an Image built by hand: its geometry checked as read
        check_affine(image.path, image.affine)
    mm, voxel_ml = canonical_spacing(image), voxel_volume_ml(image)
    if mm is not None and not image.slice_known:  # one slice of unknown thickness: areas only
        mm, voxel_ml = (mm[0], mm[1], None), None
    return ScanSlices(canonical_view(a, image), a.shape, image.path, mm, voxel_ml, image)


def array_slices(
    volume: np.ndarray,
    spacing: Sequence[float] | None,
    affine: np.ndarray | None,
) -> ScanSlices:
    """Check an array and its geometry (the layouts of ``predict_volume``).

    Args:
        volume: ``(X, Y, Z)`` with ``affine``; ``(N, H, W)`` canonical slices or ``(H, W)``
            without.
        spacing: millimetres per array axis, or ``None``.
        affine: voxel -> world for ``(X, Y, Z)`` arrays.

    Returns:
        The array as canonical slices (through :func:`image_slices` for an array with an
        affine).

    Raises:
        DataError: wrong number of dimensions, a spacing or affine that does not fit.
    """
    if volume.ndim not in (2, 3) or volume.size == 0:
        raise DataError(f"{ARRAY_PATH}: expected a 2-D or 3-D array, got shape {volume.shape}")
    if affine is not None:
        affine = np.asarray(affine, dtype=np.float64)
        if volume.ndim != 3 or affine.shape != (4, 4) or spacing is not None:
            raise DataError(f"{ARRAY_PATH}: an affine needs a 3-D (X, Y, Z) array and no spacing")
        return image_slices(Image(volume, check_affine(ARRAY_PATH, affine), "array", ARRAY_PATH))
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
    return ScanSlices(view, volume.shape, ARRAY_PATH, mm, voxel_ml)
