"""The DICOM series reader behind :func:`covseg.data.io.read_image` (a folder of one series).

A series is checked before its pixels are decoded: one ``SeriesInstanceUID``, valid and shared
orientation and pixel spacing, one finite position per slice, uniform slice spacing, and a size
within :data:`~covseg.data.io.common.MAX_SIDE` / :data:`~covseg.data.io.common.MAX_VOXELS`. The
output array is allocated once and filled slice by slice, so memory peaks at the volume plus one
slice.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.io.common import Image, check_size, looks_like_dicom, quiet_reading
from covseg.data.io.folders import list_folder, log_skipped
from covseg.errors import DataError

__all__ = ["read_dicom_series"]

log = logging.getLogger(__name__)

#: Header elements larger than this stay on disk until the pixels are decoded (pydicom).
_DEFER = "16 KB"
#: Unit length and orthogonality tolerance of ``ImageOrientationPatient``.
_COS_TOL = 1e-3
#: Two slices closer than this along the normal (mm) share a position.
_DUPLICATE_MM = 1e-4
#: The largest gap may be this many times the median gap before a slice counts as missing.
_GAP_RATIO = 1.5


def read_dicom_series(folder: Path) -> Image:
    """Read a folder holding one DICOM CT series.

    Args:
        folder: the series folder; hidden/AppleDouble files, FIFOs and devices are skipped.

    Returns:
        ``(X = column, Y = row, Z = slice)`` int16 (float32 when the rescale does not keep
        integers in range) with its RAS affine, slices sorted along the slice normal.

    Raises:
        DataError: no slices, an unreadable slice, two series in the folder, invalid or mixed
            geometry, duplicate or non-uniform slice positions, or a series too large.
    """
    listing = list_folder(folder)
    log_skipped(folder, listing)
    if not listing.files:
        raise DataError(f"{folder}: empty folder")
    files = _dicom_files(folder, listing.files)
    with quiet_reading("pydicom"):  # pydicom warns (and logs) about any odd tag it reads
        headers = [ds for ds in map(_read_header, files) if ds is not None]
        if not headers:
            raise DataError(f"{folder}: no DICOM image slices found")
        _check_one_series(folder, headers)
        row_cos, col_cos = _orientation(folder, headers)
        row_mm, col_mm = _pixel_spacing(folder, headers)
        normal = np.cross(row_cos, col_cos)
        positions = [_position(ds) for ds in headers]
        order = np.argsort([float(normal @ p) for p in positions], kind="stable")
        headers = [headers[i] for i in order]
        positions = [positions[i] for i in order]
        _check_spacing(folder, headers, normal, positions)
        rows, cols = _slice_shape(folder, headers)
        check_size(folder, (rows, cols, len(headers)), (rows, cols))
        volume = _fill_volume(headers, rows, cols)
        step, known = _slice_step(headers[0], normal, positions)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_mm  # X runs along a row: one column apart
    lps[:3, 1] = col_cos * row_mm
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
    # (Z, rows, cols) -> (cols, rows, Z): X runs along a row, like nibabel's voxel order.
    sources = tuple(Path(_name(ds)) for ds in headers)  # what a DICOM-SEG references
    return Image(
        volume.transpose(2, 1, 0), affine, "dicom", folder, sources=sources, slice_known=known
    )


def _dicom_files(folder: Path, files: list[Path]) -> list[Path]:
    """The files that start like DICOM (:func:`~covseg.data.io.common.looks_like_dicom`: a few
    hundred bytes read each), so that pydicom's ``force=True`` never parses junk (a 40 MB file
    of zeros took it 42 s); the others (a ``preview.png``, a NIfTI, a README) are skipped with
    one ``log.info`` line.

    Raises:
        DataError: no file starts like DICOM, naming one of them.
    """
    dicom = [p for p in files if looks_like_dicom(p)]
    chosen = set(dicom)
    others = [p.name for p in files if p not in chosen]
    if not dicom:
        raise DataError(
            f"{folder}: no DICOM image slices found ({len(others)} file(s) without DICOM data, "
            f"e.g. {others[0]})"
        )
    if others:
        log.info("%s: skipped %d file(s) without DICOM data (%s)", folder, len(others), others[0])
    return dicom


def _read_header(path: Path) -> Any:
    """The dataset of an image slice with its pixel data left on disk; ``None`` for files
    without pixels (DICOMDIR, reports)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, defer_size=_DEFER)
    except Exception as err:
        raise DataError(f"{path}: unreadable DICOM ({type(err).__name__}: {err})") from None
    if "PixelData" not in ds:
        return None
    if "TransferSyntaxUID" not in ds.file_meta:  # a raw dataset: say how it was encoded
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = ds.original_encoding
        if little:
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
            )
    return ds


def _name(ds: Any) -> str:
    return str(ds.filename)


def _check_one_series(folder: Path, headers: list[Any]) -> None:
    counts: dict[str, int] = {}
    for ds in headers:
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        counts[uid] = counts.get(uid, 0) + 1
    if len(counts) > 1:
        sizes = ", ".join(str(n) for n in counts.values())
        raise DataError(
            f"{folder}: {len(counts)} DICOM series in one folder ({sizes} slices); "
            "put each series in its own folder"
        )


def _numbers(ds: Any, tag: str, n: int) -> np.ndarray:
    """``n`` finite floats from ``ds.<tag>``."""
    if tag not in ds:
        raise DataError(f"{_name(ds)}: DICOM {tag} missing")
    try:
        value = ds[tag].value
        values = np.array([float(v) for v in value], dtype=np.float64)
    except Exception as err:
        raise DataError(f"{_name(ds)}: DICOM {tag} invalid ({err})") from None
    if values.shape != (n,) or not np.isfinite(values).all():
        raise DataError(
            f"{_name(ds)}: DICOM {tag} must be {n} finite numbers, got {values.tolist()}"
        )
    return values


def _orientation(folder: Path, headers: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines, unit and orthogonal, the same on every slice."""
    first = _numbers(headers[0], "ImageOrientationPatient", 6)
    for ds in headers:
        iop = _numbers(ds, "ImageOrientationPatient", 6)
        row, col = iop[:3], iop[3:]
        lengths = np.linalg.norm(row), np.linalg.norm(col)
        if max(abs(v - 1.0) for v in lengths) > _COS_TOL or abs(row @ col) > _COS_TOL:
            raise DataError(
                f"{_name(ds)}: DICOM ImageOrientationPatient {iop.tolist()} is not two orthogonal "
                "unit vectors"
            )
        if np.abs(iop - first).max() > _COS_TOL:
            raise DataError(f"{folder}: DICOM slices of different orientations")
    return first[:3], first[3:]


def _pixel_spacing(folder: Path, headers: list[Any]) -> tuple[float, float]:
    """``(between rows, between columns)`` mm, positive and the same on every slice."""
    first = _numbers(headers[0], "PixelSpacing", 2)
    for ds in headers:
        spacing = _numbers(ds, "PixelSpacing", 2)
        if not (spacing > 0).all():
            raise DataError(f"{_name(ds)}: DICOM PixelSpacing {spacing.tolist()} must be > 0")
        if not np.allclose(spacing, first, rtol=1e-4, atol=0):
            raise DataError(f"{folder}: DICOM slices of different pixel spacings")
    return float(first[0]), float(first[1])


def _position(ds: Any) -> np.ndarray:
    return _numbers(ds, "ImagePositionPatient", 3)


def _check_spacing(folder: Path, headers: list[Any], normal: np.ndarray, positions: list) -> None:
    """Slices sorted along ``normal`` must be distinct and evenly spaced (no missing slice)."""
    if len(headers) < 2:
        return
    gaps = np.diff([float(normal @ p) for p in positions])
    k = int(np.argmin(gaps))
    if gaps[k] <= _DUPLICATE_MM:
        raise DataError(
            f"{folder}: DICOM slices {_name(headers[k])} and {_name(headers[k + 1])} share one "
            "position (duplicate slices or two series?)"
        )
    median = float(np.median(gaps))
    k = int(np.argmax(np.abs(np.log(gaps / median))))
    if gaps[k] > _GAP_RATIO * median or gaps[k] < median / _GAP_RATIO:
        why = "missing slice?" if gaps[k] > median else "extra or overlapping slice?"
        raise DataError(
            f"{folder}: slice spacing not uniform: a {gaps[k]:g} mm gap after slice {k + 1} "
            f"({Path(_name(headers[k])).name}) where the others are {median:g} mm ({why})"
        )


def _slice_shape(folder: Path, headers: list[Any]) -> tuple[int, int]:
    try:
        shapes = {(int(ds.Rows), int(ds.Columns)) for ds in headers}
    except Exception as err:
        raise DataError(f"{folder}: DICOM Rows/Columns missing or invalid ({err})") from None
    if len(shapes) != 1:
        raise DataError(f"{folder}: DICOM slices of different sizes {sorted(shapes)}")
    rows, cols = shapes.pop()
    if rows < 1 or cols < 1:
        raise DataError(f"{folder}: DICOM slices of {rows}x{cols} px")
    return rows, cols


def _rescale(ds: Any) -> tuple[float, float]:
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except Exception as err:  # multi-valued or garbled rescale tags
        raise DataError(
            f"{_name(ds)}: invalid DICOM RescaleSlope/RescaleIntercept ({err})"
        ) from None
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise DataError(f"{_name(ds)}: DICOM RescaleSlope/RescaleIntercept must be finite")
    return slope, intercept


def _fill_volume(headers: list[Any], rows: int, cols: int) -> np.ndarray:
    """``(Z, rows, cols)`` rescaled values, allocated once and filled slice by slice: int16 when
    every rescale keeps integers in the int16 range, float32 otherwise."""
    factors = [_rescale(ds) for ds in headers]
    integral = all(s.is_integer() and i.is_integer() for s, i in factors)
    out = np.empty((len(headers), rows, cols), np.int16 if integral else np.float32)
    for k, (ds, (slope, intercept)) in enumerate(zip(headers, factors, strict=True)):
        values = _decode(ds, rows, cols).astype(np.float64) * slope + intercept
        del ds.PixelData  # the decoded slice is all that is kept
        if out.dtype == np.int16 and not (values.min() >= -32768 and values.max() <= 32767):
            out = out.astype(np.float32)  # rare: out of int16 range; one copy
        if np.abs(values).max() > np.finfo(np.float32).max:
            raise DataError(f"{_name(ds)}: rescaled DICOM values exceed the float32 range")
        out[k] = values
    return out


def _decode(ds: Any, rows: int, cols: int) -> np.ndarray:
    """One slice's stored values; a decoder warning (pixel data longer or shorter than Rows x
    Columns says, extra frames) is a bad file, not a note."""
    from pydicom.pixels import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pixels = pixel_array(ds)
    except Exception as err:
        raise DataError(f"{_name(ds)}: unreadable DICOM ({type(err).__name__}: {err})") from None
    if pixels.shape != (rows, cols):
        raise DataError(
            f"{_name(ds)}: expected a 2-D {rows}x{cols} DICOM slice, got {pixels.shape}"
        )
    return pixels


def _slice_step(ds0: Any, normal: np.ndarray, positions: list) -> tuple[np.ndarray, bool]:
    """World vector from one slice to the next (``SliceThickness`` along the normal for one),
    and whether it is known (one slice without a usable ``SliceThickness``: 1 mm, unknown)."""
    if len(positions) > 1:
        return (positions[-1] - positions[0]) / (len(positions) - 1), True
    try:
        thickness = float(ds0.get("SliceThickness", 0.0) or 0.0)
    except Exception:
        thickness = 0.0
    known = math.isfinite(thickness) and thickness > 0
    return normal * (thickness if known else 1.0), known
