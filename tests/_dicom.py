"""Writing small DICOM CT series for the reader tests (pydicom, pure Python)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def hu_to_stored(hu: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` HU (nibabel order) -> ``(Z, rows, cols)`` uint16 stored values (HU + 1024)."""
    return (np.moveaxis(hu, 2, 0).transpose(0, 2, 1).astype(np.int32) + 1024).astype(np.uint16)


def write_dicom_series(
    folder: Path,
    stored: np.ndarray,
    z_mm: Sequence[float],
    *,
    pixel_spacing: tuple[float, float] = (0.8, 0.6),
    origin_xy: tuple[float, float] = (-20.0, -30.0),
    prefix: str = "",
    edit: Callable | None = None,
    enforce_file_format: bool = True,
) -> Path:
    """One axial CT file per slice of ``stored`` (``(n, rows, cols)`` uint16, rescale slope 1,
    intercept -1024), slice ``k`` at height ``z_mm[k]``; ``edit(ds, k)`` may break a dataset
    before it is saved (then pass ``enforce_file_format=False``)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    for k, pixels in enumerate(stored):
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"{prefix}{k}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [*origin_xy, z_mm[k]]
        ds.PixelSpacing = list(pixel_spacing)
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
        if edit is not None:
            edit(ds, k)
        ds.save_as(path, enforce_file_format=enforce_file_format)
    return folder
