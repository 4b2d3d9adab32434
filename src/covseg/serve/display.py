"""What the browser viewer loads: the CT and the masks as raw arrays in the canonical slice
orientation, for display only.

The page draws slices itself on a 2-D canvas (``static/viewer.js``): WebGL viewers rebuild whole
3-D textures for every window or overlay change, which software WebGL (a machine without a GPU)
does at tens of seconds per change for a 512 x 512 x 31 scan. Here the server hands over what the
report counts, already oriented, so the page only indexes arrays:

- ``ct.raw``: the scan as read (Hounsfield units for CT, grey values for pictures), little-endian
  ``int16`` where that holds every value exactly, ``float32`` otherwise;
- ``labels.raw``: ``uint8``, bit 0 lungs and bit 1 infection (``segment``'s masks), bit 2 the
  left lung and bit 3 the right lung (the report's split, :func:`~covseg.inference.burden.lung_sides`);
- ``prob.raw`` (when the job wrote one): ``uint8`` calibrated infection probability, the levels
  of ``segment --probabilities`` (:mod:`covseg.inference.probability`), from which the page
  re-thresholds the infection;

all C-ordered ``(N, H, W)`` = :func:`covseg.data.geometry.canonical_view`: slices inferior ->
superior (slice ``k`` is the report's slice ``k``), rows anterior -> posterior, columns patient
right -> left (the radiological display). Their shape, type and geometry go in
:class:`DisplayVolumes`, which the job's JSON carries. These copies are never offered as
downloads: the downloads are ``segment``'s own files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from covseg.data.geometry import canonical_spacing, canonical_view
from covseg.data.io import Image
from covseg.inference.burden import lung_sides
from covseg.inference.probability import PROBABILITY_SCALE, probability_level

__all__ = ["DisplayVolumes", "canonical_affine", "display_volumes"]

_INT16 = np.iinfo(np.int16)


@dataclass(frozen=True)
class DisplayVolumes:
    """The arrays of one case and how to read them.

    Attributes:
        ct: path of the scan's raw array.
        labels: path of the label array (bit 0 lungs, bit 1 infection, bit 2 left lung, bit 3
            right lung).
        shape: ``(N, H, W)`` (slices, rows, columns).
        dtype: ``"int16"`` or ``"float32"`` (of ``ct``; ``labels`` is ``uint8``).
        value_range: the smallest and largest scan value.
        spacing_mm: ``(row, column, slice)`` millimetres, ``None`` for a picture.
        affine: 4 x 4 ``(column, row, slice, 1)`` -> RAS mm, ``None`` for a picture.
        probability: path of the probability levels, ``None`` when not written.
        threshold_level: the shipped threshold on the levels' scale
            (:func:`~covseg.inference.probability.probability_level`), ``None`` likewise.
    """

    ct: Path
    labels: Path
    shape: tuple[int, int, int]
    dtype: str
    value_range: tuple[float, float]
    spacing_mm: tuple[float, float, float] | None
    affine: list[list[float]] | None
    probability: Path | None = None
    threshold_level: int | None = None

    def to_json(self, base_url: str) -> dict[str, Any]:
        """What the page needs (URLs under ``base_url``, never server paths)."""
        return {
            "ct": f"{base_url}/ct.raw",
            "labels": f"{base_url}/labels.raw",
            "shape": list(self.shape),
            "dtype": self.dtype,
            "range": list(self.value_range),
            "spacing_mm": None if self.spacing_mm is None else list(self.spacing_mm),
            "affine": self.affine,
            "probability": None
            if self.probability is None
            else {
                "url": f"{base_url}/prob.raw",
                "scale": PROBABILITY_SCALE,
                "threshold_level": self.threshold_level,
            },
        }


def canonical_affine(image: Image) -> np.ndarray | None:
    """The 4 x 4 map from a canonical voxel ``(column, row, slice)`` of
    :func:`~covseg.data.geometry.canonical_view` to world RAS millimetres; ``None`` for a
    picture.

    The reoriented affine as :func:`~covseg.data.geometry.canonical_spacing` computes it, its
    columns put in ``(column, row, slice)`` order; the tests check it against the view itself.
    """
    if image.affine is None or image.array.ndim != 3:
        return None
    to_display = ornt_transform(io_orientation(image.affine), axcodes2ornt(("P", "L", "S")))
    reoriented = image.affine @ inv_ornt_aff(to_display, image.array.shape)  # (row, col, slice)
    return reoriented[:, [1, 0, 2, 3]]


def display_volumes(
    image: Image,
    lungs: np.ndarray,
    infection: np.ndarray,
    folder: Path,
    probability: np.ndarray | None = None,
    threshold: float | None = None,
) -> DisplayVolumes:
    """Write the viewer's arrays of one case into ``folder`` (created).

    Args:
        image: the input as read.
        lungs: the lung mask, ``image.array``'s shape.
        infection: the infection mask, ``image.array``'s shape.
        folder: where ``ct.raw``, ``labels.raw`` (and ``prob.raw``) are written.
        probability: the probability levels (``SegmentResult.probability``), or ``None``.
        threshold: the shipped threshold (with ``probability``).

    Returns:
        Their paths, shape, type and geometry.
    """
    folder.mkdir(exist_ok=True)
    scan = canonical_view(image.array, image)
    labels = (canonical_view(lungs, image) > 0).astype(np.uint8)
    labels |= (canonical_view(infection, image) > 0).astype(np.uint8) << 1
    labels |= lung_sides(labels & 1) << 2  # 1 left -> bit 2, 2 right -> bit 3
    prob = None
    if probability is not None and threshold is not None:
        prob = _write(canonical_view(probability, image), folder / "prob.raw")
    ct = _compact(scan)
    affine = canonical_affine(image)
    spacing = canonical_spacing(image)
    return DisplayVolumes(
        ct=_write(ct, folder / "ct.raw"),
        labels=_write(labels, folder / "labels.raw"),
        shape=tuple(int(v) for v in scan.shape),  # type: ignore[arg-type]
        dtype=ct.dtype.name,
        value_range=(float(scan.min()), float(scan.max())),
        spacing_mm=spacing,
        affine=None if affine is None else [[float(v) for v in row] for row in affine],
        probability=prob,
        threshold_level=None if prob is None else probability_level(threshold),  # type: ignore[arg-type]
    )


def _compact(scan: np.ndarray) -> np.ndarray:
    """``int16`` where that holds every value exactly, else ``float32`` (little-endian)."""
    whole = np.issubdtype(scan.dtype, np.integer) or np.array_equal(scan, np.round(scan))
    if whole and _INT16.min <= scan.min() and scan.max() <= _INT16.max:
        return scan.astype("<i2")
    return scan.astype("<f4")


def _write(array: np.ndarray, path: Path) -> Path:
    """C-ordered bytes of ``array`` at ``path``, written under a temporary name first."""
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(np.ascontiguousarray(array).tobytes())
    os.replace(tmp, path)
    return path
