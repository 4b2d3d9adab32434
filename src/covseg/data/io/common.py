"""What every reader shares: the :class:`Image` type, covseg's size limits, and the checks that
refuse a bad input (a FIFO or device, a size beyond the limits, degenerate geometry, NaN/inf)
with a :class:`~covseg.errors.DataError` naming the file.

Readers run under :func:`quiet_reading`: the warnings and log lines of numpy, nibabel, Pillow and
pydicom are silenced, so a problem is an error, never a printed warning.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.io.magic import HEAD_BYTES, dicom_start
from covseg.errors import DataError

__all__ = [
    "MAX_SIDE",
    "MAX_VOXELS",
    "Image",
    "check_affine",
    "check_size",
    "check_values",
    "is_nifti",
    "is_picture",
    "looks_like_dicom",
    "quiet_reading",
    "stat_input",
    "strip_suffix",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: Largest slice side accepted (pixels). Larger pictures are refused with a clear message rather
#: than costing gigabytes: chest CT is 512-1024 px; downsample anything larger first.
MAX_SIDE = 4096
#: Memory budget: the most 2-byte (int16) voxels one image may hold, 512x512x640; with its two
#: uint8 masks that is 640 MiB, and ``covseg segment`` peaks under 1.3 GB (BENCHMARKS.md,
#: round three). Wider voxels get proportionally fewer (:func:`check_size`). Checked against the
#: header before any voxel is read.
MAX_VOXELS = 512 * 512 * 640
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Image:
    """An image array with its geometry.

    Attributes:
        array: volumes ``(X, Y, Z)`` in the file's voxel order; 2-D pictures ``(H, W)``.
        affine: 4x4 voxel -> world (RAS mm) for volumes; ``None`` for 2-D pictures.
        kind: ``"nifti"``, ``"dicom"`` or ``"png"`` (any 2-D picture, JPG included).
        path: the file or DICOM folder read.
        header: the nibabel header for NIfTI (used to write masks back), ``None`` otherwise.
        disk_shape: the shape stored in a NIfTI file (``(X, Y, Z, 1)`` where the reader dropped a
            trailing singleton axis), so masks are written with the input's own dims; ``None``
            otherwise.
        sources: a DICOM series' slice files in the order of ``array``'s Z axis (what a
            DICOM-SEG references); ``None`` otherwise.
        slice_known: ``False`` for one DICOM slice without a usable ``SliceThickness``: the
            affine's 1 mm slice step is a placeholder, so no volume (mL) is reported.
    """

    array: np.ndarray
    affine: np.ndarray | None
    kind: str
    path: Path
    header: Any = None
    disk_shape: tuple[int, ...] | None = None
    sources: tuple[Path, ...] | None = None
    slice_known: bool = True

    @property
    def spacing(self) -> tuple[float, ...]:
        """Millimetres per voxel axis (column norms of the affine); ``(1.0, 1.0)`` for 2-D."""
        if self.affine is None:
            return (1.0, 1.0)
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_picture(path: Path) -> bool:
    return path.suffix.lower() in PICTURE_SUFFIXES


def looks_like_dicom(path: Path) -> bool:
    """``path`` starts like DICOM (whatever its suffix): the ``DICM`` marker after the 128-byte
    preamble, or a plausible first element of a raw dataset
    (:func:`~covseg.data.io.magic.dicom_start`). Reads at most 544 bytes, so junk is told apart
    in microseconds, before pydicom's forgiving ``force=True`` parse could spend seconds on it."""
    try:
        with open(path, "rb") as f:
            return dicom_start(f.read(HEAD_BYTES), os.fstat(f.fileno()).st_size)
    except OSError:
        return False


def strip_suffix(name: str) -> str:
    """``"a.nii.gz"`` -> ``"a"``, ``"b.png"`` -> ``"b"`` (only known image suffixes)."""
    low = name.lower()
    for suf in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".npy", ".dcm"):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


@contextmanager
def quiet_reading(*loggers: str) -> Iterator[None]:
    """Silence warnings and numpy floating-point warnings, and mute the named loggers, for the
    duration (their levels are restored): the readers report problems as DataError, and a
    third-party note on stderr would break the CLI's one-line error."""
    muted = [(lg, lg.level) for lg in map(logging.getLogger, loggers)]
    for lg, _ in muted:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in muted:
            lg.setLevel(level)


def stat_input(path: Path) -> os.stat_result:
    """``os.stat(path)``, refusing anything but a regular file or a folder *before* it is opened
    (a FIFO or a device would block or stream for ever).

    Raises:
        DataError: the path does not exist, cannot be read, or is a FIFO, socket or device.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file or folder") from None
    except OSError as err:
        raise DataError(f"{path}: cannot access ({err.strerror or err})") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise DataError(f"{path}: not a regular file ({_special_kind(st.st_mode)})")
    return st


def _special_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file or folder"


def check_size(
    path: Path, shape: tuple[int, ...], plane: tuple[int, int], itemsize: int = 2
) -> None:
    """Refuse an image too large for covseg, from its claimed shape alone (before allocating).

    Args:
        path: named in the error.
        shape: the full shape the file claims.
        plane: ``(rows, columns)`` of one slice (or picture).
        itemsize: bytes per voxel while it is read (stored and converted together).

    Raises:
        DataError: a slice side above :data:`MAX_SIDE`, or more voxels than fit the memory
            budget: ``MAX_VOXELS * 4`` bytes for the voxels and their two uint8 masks.
    """
    if max(plane) > MAX_SIDE:
        raise DataError(
            f"{path}: {plane[0]}x{plane[1]} px slices are larger than covseg's {MAX_SIDE} px "
            "limit; downsample the image first"
        )
    voxels = math.prod(shape)
    budget = MAX_VOXELS * 4 // (itemsize + 2)
    if voxels > budget:
        dims = "x".join(str(n) for n in shape)
        raise DataError(
            f"{path}: {dims} = {voxels} voxels exceed covseg's memory budget of {budget} voxels "
            f"of {itemsize} bytes ({MAX_VOXELS} as int16, e.g. 512x512x640); crop or downsample "
            "the scan first"
        )


def check_values(array: np.ndarray, path: Path, cause: str = "") -> None:
    """Refuse empty arrays, NaN/inf, and float values that float32 (covseg's compute type)
    cannot hold; ``cause`` (e.g. the scaling applied) is added to the message."""
    if array.size == 0:
        raise DataError(f"{path}: empty image (shape {array.shape})")
    if not np.issubdtype(array.dtype, np.floating):
        return
    with np.errstate(all="ignore"):
        lo, hi = float(np.min(array)), float(np.max(array))  # NaN propagates; no full temporary
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise DataError(f"{path}: {bad} NaN/inf voxel(s){cause}")
    if max(-lo, hi) > _FLOAT32_MAX:
        raise DataError(f"{path}: values up to {max(-lo, hi):.3g} exceed the float32 range{cause}")


def check_affine(path: Path, affine: np.ndarray) -> np.ndarray:
    """A finite affine with non-zero, non-parallel voxel axes; the test is scale-free, so 1 µm
    voxels pass while a zero or repeated column does not.

    Raises:
        DataError: non-finite entries, a zero-length voxel axis (pixdim 0), or axes that are
            (nearly) linearly dependent.
    """
    a = np.asarray(affine, dtype=np.float64)
    with np.errstate(all="ignore"):
        norms = np.linalg.norm(a[:3, :3], axis=0)
        if not np.isfinite(a).all() or not np.isfinite(norms).all():
            raise DataError(f"{path}: invalid affine (non-finite values)")
        if not (norms > 0).all():
            axis = int(np.argmin(norms))
            raise DataError(f"{path}: invalid affine (voxel axis {axis} has zero length)")
        if abs(np.linalg.det(a[:3, :3] / norms)) < 1e-6:
            raise DataError(f"{path}: invalid affine (singular: voxel axes are parallel)")
    return a
