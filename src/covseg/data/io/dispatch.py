"""One door for every format: :func:`read_image` picks the reader (NIfTI, DICOM series folder,
PNG/JPG picture) and :func:`write_mask` the writer (NIfTI, PNG) from the path, and both apply
the checks every format shares."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import numpy as np

from covseg.data.io.common import (
    Image,
    check_values,
    is_nifti,
    is_picture,
    looks_like_dicom,
    stat_input,
)
from covseg.data.io.dicom import read_dicom_series
from covseg.data.io.nifti import read_nifti, write_nifti_labels
from covseg.data.io.picture import read_picture, write_png_labels
from covseg.errors import DataError

__all__ = ["read_image", "write_mask"]


def read_image(path: str | Path, *, labels: bool = False) -> Image:
    """Read a NIfTI file, a DICOM series folder, or a PNG/JPG picture.

    Args:
        path: ``.nii``/``.nii.gz`` file, a folder of one DICOM series, or ``.png``/``.jpg``/
            ``.jpeg``.
        labels: the picture is a label mask: palette PNGs keep their indices. Otherwise palette
            and colour pictures are converted to grey through their palette/colours.

    Returns:
        The :class:`~covseg.data.io.common.Image`; volumes ``(X, Y, Z)`` (trailing singleton
        axes are dropped and recorded in ``disk_shape``), pictures ``(H, W)``.

    Raises:
        DataError: missing/unreadable/truncated file, a FIFO/device/socket, an empty folder, a
            claimed size beyond the file or :data:`~covseg.data.io.common.MAX_SIDE`/
            :data:`~covseg.data.io.common.MAX_VOXELS`, an array that is not 2-D (pictures) or
            3-D (volumes), degenerate geometry, or NaN/inf values.
    """
    path = Path(path)
    st = stat_input(path)
    if stat.S_ISDIR(st.st_mode):
        image = read_dicom_series(path)
    elif is_nifti(path):
        image = read_nifti(path, st.st_size)
    elif is_picture(path):
        image = read_picture(path, labels=labels)
    elif looks_like_dicom(path):
        raise DataError(f"{path}: a single DICOM file; pass the folder of the whole series")
    else:
        raise DataError(f"{path}: unsupported file type (expected NIfTI, DICOM folder, PNG/JPG)")
    check_values(image.array, path)
    return image


def write_mask(mask: np.ndarray, ref: Image, path: str | Path) -> Path:
    """Write a label mask aligned with ``ref``, atomically (temp name + ``os.replace``).

    NIfTI (``.nii``/``.nii.gz``): uint8 labels, ``ref``'s affine (and header and stored shape,
    e.g. ``(X, Y, Z, 1)``, for NIfTI refs). PNG: uint8 with foreground scaled to 255
    (``{0, 255}`` for a binary mask) so it is visible in an image viewer; readers of covseg masks
    treat any value > 0 as foreground.

    Args:
        mask: labels with ``ref.array``'s shape (``(X, Y, Z)`` or ``(H, W)``).
        ref: the image the mask belongs to.
        path: output file; the suffix picks the format.

    Returns:
        The written path.

    Raises:
        DataError: shape mismatch, or a suffix that is neither NIfTI nor PNG.
    """
    path = Path(path)
    mask = np.asarray(mask)
    if mask.shape != ref.array.shape:
        raise DataError(f"{path}: mask shape {mask.shape} != image shape {ref.array.shape}")
    labels = np.asarray(mask, dtype=np.uint8)  # no copy of uint8 masks, any memory order
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if is_nifti(path):
            write_nifti_labels(labels, ref, tmp)
        elif path.suffix.lower() == ".png":
            write_png_labels(labels, tmp)
        else:
            raise DataError(f"{path}: unsupported mask format (use .nii.gz or .png)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
