"""One canonical slice orientation and the voxel spacing in it — the only place that knows.

Canonical display orientation (every volume, whatever its affine): ``(N, H, W)`` axial slices with
rows running anterior -> posterior, columns running patient right -> left (radiological display:
the patient's right is on the image's left) and slices running inferior -> superior. In nibabel
axis codes the ``(row, col, slice)`` axes are ``("P", "L", "S")``. 2-D pictures are taken as
already displayed and become ``(1, H, W)``.
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from covseg.data.io import Image
from covseg.errors import DataError

__all__ = [
    "canonical_spacing",
    "canonical_view",
    "slices_to_volume",
    "volume_to_slices",
    "voxel_volume_ml",
]

_DISPLAY = axcodes2ornt(("P", "L", "S"))


def _to_display(image: Image) -> np.ndarray:
    """The orientation transform from the file's voxel axes to ``(P, L, S)``."""
    if image.affine is None:
        raise DataError(f"{image.path}: a volume needs an affine")
    return ornt_transform(io_orientation(image.affine), _DISPLAY)


def canonical_view(array: np.ndarray, image: Image) -> np.ndarray:
    """``(N, H, W)`` canonical slices of ``array`` (``image.array``'s shape) as a *view*: no
    copy of the input, and masks written into the view land in the array's own voxel order.

    A 2-D picture gives ``array[None]``.
    """
    if array.shape != image.array.shape:
        raise DataError(f"{image.path}: array {array.shape} does not fit {image.array.shape}")
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise DataError(f"{image.path}: expected 2-D or 3-D, got shape {array.shape}")
    view = apply_orientation(array, _to_display(image)).transpose(2, 0, 1)
    if not np.shares_memory(view, array):  # pragma: no cover - apply_orientation only slices
        raise RuntimeError("canonical view is not a view")
    return view


def volume_to_slices(image: Image) -> np.ndarray:
    """Axial slices in the canonical display orientation (see the module docstring), as a
    contiguous copy.

    Args:
        image: a volume ``(X, Y, Z)`` with an affine, or a 2-D picture ``(H, W)``.

    Returns:
        ``(N, H, W)`` array of ``image.array``'s dtype.
    """
    return np.ascontiguousarray(canonical_view(image.array, image))


def slices_to_volume(slices: np.ndarray, image: Image) -> np.ndarray:
    """Exact inverse of :func:`volume_to_slices`: back to ``image.array``'s shape and voxel order.

    Args:
        slices: ``(N, H, W)`` in the canonical orientation of ``image``.
        image: the image the slices came from.

    Returns:
        ``image.array.shape`` array (``(H, W)`` for 2-D pictures).
    """
    slices = np.asarray(slices)
    out = np.empty(image.array.shape, dtype=slices.dtype)
    view = canonical_view(out, image)
    if view.shape != slices.shape:
        raise DataError(f"{image.path}: slices {slices.shape} do not fit {image.array.shape}")
    view[...] = slices
    return out


def canonical_spacing(image: Image) -> tuple[float, float, float] | None:
    """``(row_mm, col_mm, slice_mm)`` of the canonical slices; ``None`` for 2-D pictures."""
    if image.affine is None or image.array.ndim != 3:
        return None
    t = _to_display(image)
    # Affine of the reoriented volume: its columns are the (P, L, S) axes.
    aff = image.affine @ inv_ornt_aff(t, image.array.shape)
    row, col, sl = (float(v) for v in np.linalg.norm(aff[:3, :3], axis=0))
    return row, col, sl


def voxel_volume_ml(image: Image) -> float | None:
    """Millilitres per voxel of a volume (``|det|`` of the affine / 1000); ``None`` for 2-D."""
    if image.affine is None or image.array.ndim != 3:
        return None
    return abs(float(np.linalg.det(image.affine[:3, :3]))) / 1000.0
