"""Readers and writers that keep geometry: NIfTI, DICOM series, PNG/JPG.

Every problem with an input (unreadable or truncated file, wrong number of dimensions, NaN/inf
values, an empty folder) is raised as :class:`~covseg.errors.DataError` naming the file, so the CLI
can report it as one line.

Voxel order: a volume's ``array`` is ``(X, Y, Z)`` in the file's own voxel order (what nibabel
returns), and ``affine`` maps voxel indices to world RAS millimetres. A DICOM series is returned in
the same convention (``X`` = column index, ``Y`` = row index, ``Z`` = slice, sorted along the slice
normal) with its LPS geometry converted to RAS. A 2-D image is ``(H, W)`` with ``affine=None``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from covseg.errors import DataError

__all__ = ["Image", "find_inputs", "read_image", "write_mask"]

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Image:
    """An image array with its geometry.

    Attributes:
        array: volumes ``(X, Y, Z)`` in the file's voxel order; 2-D pictures ``(H, W)``.
        affine: 4x4 voxel -> world (RAS mm) for volumes; ``None`` for 2-D pictures.
        kind: ``"nifti"``, ``"dicom"`` or ``"png"`` (any 2-D picture, JPG included).
        path: the file or DICOM folder read.
        header: the nibabel header for NIfTI (used to write masks back), ``None`` otherwise.
    """

    array: np.ndarray
    affine: np.ndarray | None
    kind: str
    path: Path
    header: Any = None

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


def strip_suffix(name: str) -> str:
    """``"a.nii.gz"`` -> ``"a"``, ``"b.png"`` -> ``"b"`` (only known image suffixes)."""
    low = name.lower()
    for suf in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".npy", ".dcm"):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


def read_image(path: str | Path) -> Image:
    """Read a NIfTI file, a DICOM series folder, or a PNG/JPG picture.

    Args:
        path: ``.nii``/``.nii.gz`` file, a folder of one DICOM series, or ``.png``/``.jpg``/
            ``.jpeg``. Colour pictures are converted to grey; palette PNGs keep their indices
            (label masks are often stored that way).

    Returns:
        The :class:`Image`; volumes ``(X, Y, Z)`` (a trailing singleton 4th axis is dropped),
        pictures ``(H, W)``.

    Raises:
        DataError: missing/unreadable/truncated file, an empty folder, an array that is not 2-D
            (pictures) or 3-D (volumes), or NaN/inf values.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        image = _read_dicom_series(path)
    elif is_nifti(path):
        image = _read_nifti(path)
    elif is_picture(path):
        image = _read_picture(path)
    elif _looks_like_dicom(path):
        raise DataError(f"{path}: a single DICOM file; pass the folder of the whole series")
    else:
        raise DataError(f"{path}: unsupported file type (expected NIfTI, DICOM folder, PNG/JPG)")
    _check_finite(image.array, path)
    return image


def _check_finite(array: np.ndarray, path: Path) -> None:
    if array.size == 0:
        raise DataError(f"{path}: empty image (shape {array.shape})")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{path}: {bad} NaN/inf voxel(s)")


def _read_nifti(path: Path) -> Image:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for truncated/corrupt files
        raise DataError(f"{path}: unreadable NIfTI ({type(err).__name__}: {err})") from None
    if array.dtype.kind not in "iufb":  # RGB24 (structured), complex, ...: not a CT intensity
        raise DataError(f"{path}: unsupported voxel type {array.dtype} (expected a grey-level CT)")
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {tuple(array.shape)}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{path}: invalid affine (singular or non-finite)")
    return Image(np.asarray(array), affine, "nifti", path, img.header)


def _read_picture(path: Path) -> Image:
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as pic:
            pic.load()
            if pic.mode in ("L", "P", "I", "I;16", "F", "1"):
                array = np.array(pic)
            else:
                array = np.array(pic.convert("L"))
    except Exception as err:
        raise DataError(f"{path}: unreadable picture ({type(err).__name__}: {err})") from None
    if array.ndim != 2:
        raise DataError(f"{path}: expected a 2-D picture, got shape {tuple(array.shape)}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return Image(array, None, "png", path)


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _read_dicom_series(folder: Path) -> Image:
    import pydicom

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: empty folder")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, force=True)
            if "PixelData" not in ds:
                continue
            pixels = ds.pixel_array
        except Exception as err:
            raise DataError(f"{f}: unreadable DICOM ({type(err).__name__}: {err})") from None
        if pixels.ndim != 2:
            raise DataError(f"{f}: expected a 2-D DICOM slice, got shape {pixels.shape}")
        slices.append((ds, pixels))
    if not slices:
        raise DataError(f"{folder}: no DICOM image slices found")
    ds0 = slices[0][0]
    try:
        row_cos, col_cos = np.array(ds0.ImageOrientationPatient, dtype=float).reshape(2, 3)
        row_mm, col_mm = (float(v) for v in ds0.PixelSpacing)  # between rows, between columns
        normal = np.cross(row_cos, col_cos)
        slices.sort(key=lambda s: float(np.dot(normal, np.array(s[0].ImagePositionPatient, float))))
        positions = np.array([s[0].ImagePositionPatient for s in slices], dtype=float)
    except (AttributeError, ValueError, TypeError) as err:
        raise DataError(f"{folder}: DICOM geometry missing or invalid ({err})") from None
    shapes = {s[1].shape for s in slices}
    if len(shapes) != 1:
        raise DataError(f"{folder}: DICOM slices of different sizes {sorted(shapes)}")
    stack = []
    for ds, px in slices:
        try:
            slope = float(getattr(ds, "RescaleSlope", 1) or 1)
            intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        except Exception as err:  # multi-valued or garbled rescale tags
            raise DataError(
                f"{folder}: invalid DICOM RescaleSlope/RescaleIntercept ({err})"
            ) from None
        stack.append(px.astype(np.float32) * slope + intercept)
    # (rows, cols, z) -> (cols, rows, z): X runs along a row, like nibabel's voxel order.
    array = np.stack(stack, axis=-1).transpose(1, 0, 2)
    if np.allclose(array, np.round(array)) and np.abs(array).max() < 32768:
        array = array.astype(np.int16)
    if len(slices) > 1:
        step = (positions[-1] - positions[0]) / (len(slices) - 1)
    else:
        step = normal * float(getattr(ds0, "SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_mm
    lps[:3, 1] = col_cos * row_mm
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError(f"{folder}: DICOM slices share one position (duplicate series?)")
    return Image(array, affine, "dicom", folder)


def write_mask(mask: np.ndarray, ref: Image, path: str | Path) -> Path:
    """Write a label mask aligned with ``ref``, atomically (temp name + ``os.replace``).

    NIfTI (``.nii``/``.nii.gz``): uint8 labels, ``ref``'s affine (and header for NIfTI refs).
    PNG: uint8 with foreground scaled to 255 (``{0, 255}`` for a binary mask) so it is visible in
    an image viewer; readers of covseg masks treat any value > 0 as foreground.

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
    labels = mask.astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if is_nifti(path):
            _write_nifti_labels(labels, ref, tmp)
        elif path.suffix.lower() == ".png":
            from PIL import Image as PILImage

            top = max(int(labels.max()), 1)
            scaled = labels if top > 1 else labels * 255
            PILImage.fromarray(np.ascontiguousarray(scaled), mode="L").save(tmp, format="PNG")
        else:
            raise DataError(f"{path}: unsupported mask format (use .nii.gz or .png)")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_nifti_labels(labels: np.ndarray, ref: Image, tmp: Path) -> None:
    import nibabel as nib

    if labels.ndim != 3:
        raise DataError(f"{ref.path}: NIfTI masks need a 3-D reference, got {labels.shape}")
    affine = ref.affine if ref.affine is not None else np.eye(4)
    header = ref.header.copy() if ref.header is not None else None
    img = nib.Nifti1Image(labels, affine, header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1, 0)
    nib.save(img, str(tmp))


def find_inputs(path: str | Path) -> list[Path]:
    """The image inputs under ``path``, in natural sort order.

    Args:
        path: a NIfTI/PNG/JPG file, a DICOM series folder, or a folder holding NIfTI/PNG/JPG
            files and/or DICOM series sub-folders.

    Returns:
        Files and DICOM folders that :func:`read_image` accepts.

    Raises:
        DataError: the path does not exist, or holds no image input.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        return [path]
    entries = sorted(path.iterdir(), key=lambda p: natural_key(p.name))
    found = [p for p in entries if p.is_file() and (is_nifti(p) or is_picture(p))]
    found += [p for p in entries if p.is_dir() and _has_dicom(p)]
    if not found and _has_dicom(path):
        return [path]
    if not found:
        raise DataError(f"{path}: no NIfTI, PNG/JPG or DICOM input found")
    return sorted(found, key=lambda p: natural_key(p.name))


def _has_dicom(folder: Path) -> bool:
    for p in folder.iterdir():
        if p.is_file() and (p.suffix.lower() == ".dcm" or _looks_like_dicom(p)):
            return True
    return False


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``"a_2"`` before ``"a_10"``."""
    import re

    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]
