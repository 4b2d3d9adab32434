"""The infection-burden report of one scan: volumes, percent of lung infected, left/right, area
along the scan.

Left and right lung: canonical columns run patient right -> left. The midline is the mean column
of all lung pixels of the scan; each 2-D lung component goes to the side holding most of its
pixels, and a component with at least a quarter of its pixels on each side (lungs touching at the
anterior junction) is cut at the midline. Where the lungs' column profile is not low at that
midline (one lung: a pneumonectomy, a collapsed or missed lung, a slice below the other lung's
base), all of the lung goes to the side of the image's centre it lies on, rather than being cut
in two (:func:`_one_lung_side`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from covseg._version import __version__
from covseg.config import Calibration, PostProcessing

__all__ = [
    "Burden",
    "BurdenEstimate",
    "BurdenReport",
    "burden_report",
    "left_right_counts",
    "lung_sides",
]


@dataclass(frozen=True)
class Burden:
    """Lung and infection of a scan or of one lung.

    Attributes:
        lung_voxels: voxels of lung (infection included).
        infection_voxels: voxels of infection.
        lung_volume_ml: ``None`` where the voxel size is unknown (2-D pictures).
        infection_volume_ml: likewise.
        infection_percent: of the lung; ``None`` without lung.
    """

    lung_voxels: int
    infection_voxels: int
    lung_volume_ml: float | None
    infection_volume_ml: float | None
    infection_percent: float | None

    @classmethod
    def of(cls, lung: int, infection: int, voxel_ml: float | None) -> Burden:
        """From voxel counts and the voxel volume."""
        ml = (lambda v: None) if voxel_ml is None else (lambda v: round(v * voxel_ml, 6))
        pct = round(100.0 * infection / lung, 4) if lung > 0 else None
        return cls(lung, infection, ml(lung), ml(infection), pct)


@dataclass(frozen=True)
class BurdenEstimate:
    """The calibrated estimate of a scan's infected volume (a calibrated checkpoint only).

    Attributes:
        expected_voxels: calibrated infection probabilities summed over the predicted lungs.
        interval_voxels: ``(low, high)`` infection-mask voxels at the calibration's two
            interval thresholds, or ``None``.
        calibration: the calibration that made them.
    """

    expected_voxels: float
    interval_voxels: tuple[int, int] | None
    calibration: Calibration

    def to_dict(self, voxel_ml: float | None, lung_voxels: int) -> dict[str, Any]:
        """The report's ``infection_estimate`` record (volumes in mL where the voxel size is
        known, percentages of the predicted lungs)."""
        cal = self.calibration

        def ml(v: float) -> float | None:
            return None if voxel_ml is None else round(v * voxel_ml, 4)

        def pct(v: float) -> float | None:
            return round(100.0 * v / lung_voxels, 4) if lung_voxels > 0 else None

        iv = self.interval_voxels
        return {
            "headline": cal.headline,
            "expected_voxels": round(self.expected_voxels, 2),
            "expected_ml": ml(self.expected_voxels),
            "expected_percent": pct(self.expected_voxels),
            "interval_voxels": None if iv is None else list(iv),
            "interval_ml": None if iv is None or voxel_ml is None else [ml(iv[0]), ml(iv[1])],
            "interval_percent": None
            if iv is None or lung_voxels <= 0
            else [pct(iv[0]), pct(iv[1])],
            "interval_thresholds": (
                None if cal.interval_thresholds is None else list(cal.interval_thresholds)
            ),
            "interval_coverage_out_of_fold": cal.interval_coverage,
            "calibration": {"slope": cal.infection_slope, "offset": cal.infection_offset},
        }


@dataclass(frozen=True)
class BurdenReport:
    """What ``covseg segment`` writes as ``<case>_report.json`` (:meth:`to_dict`, same keys).

    Attributes:
        shape: the input array's shape.
        spacing_mm: canonical (row, column, slice) mm; ``None`` for pictures.
        voxel_volume_ml: ``None`` where unknown.
        total: the whole scan (its fields are at the top level of the JSON).
        left: the left lung.
        right: the right lung.
        infection_area_per_slice: canonical slices, inferior -> superior, in ``area_unit``.
        area_unit: ``"mm2"`` or ``"px"``.
        intensity_rule: ``"hu"`` or ``"uint8"`` as applied.
        postprocessing: the post-processing applied.
        tta: flip test-time augmentation used.
        framing: ``"full"`` or ``"lungs"`` (:mod:`covseg.inference.framing`).
        model_size: the network's input side.
        model_id: sha256 of the weights.
        case: the output prefix (file inputs).
        input: the input path (file inputs).
        estimate: the calibrated estimate and interval of the infected volume (a calibrated
            checkpoint), else ``None``.
    """

    shape: tuple[int, ...]
    spacing_mm: tuple[float, float, float] | None
    voxel_volume_ml: float | None
    total: Burden
    left: Burden
    right: Burden
    infection_area_per_slice: tuple[float, ...]
    area_unit: str
    intensity_rule: str
    postprocessing: PostProcessing
    tta: bool
    model_size: int
    model_id: str
    case: str | None = None
    input: str | None = None
    covseg_version: str = __version__
    framing: str = "full"
    estimate: BurdenEstimate | None = None

    @property
    def lung_found(self) -> bool:
        return self.total.lung_voxels > 0

    def replace(self, **changes: Any) -> BurdenReport:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready report (the keys of ``<case>_report.json``, in its order)."""
        head = {} if self.case is None else {"case": self.case, "input": self.input}
        post = self.postprocessing
        return {
            **head,
            "shape": list(self.shape),
            "spacing_mm": None if self.spacing_mm is None else list(self.spacing_mm),
            "voxel_volume_ml": self.voxel_volume_ml,
            "lung_found": self.lung_found,
            **dataclasses.asdict(self.total),
            "infection_estimate": (
                None
                if self.estimate is None
                else self.estimate.to_dict(self.voxel_volume_ml, self.total.lung_voxels)
            ),
            "left": dataclasses.asdict(self.left),
            "right": dataclasses.asdict(self.right),
            "infection_area_per_slice": list(self.infection_area_per_slice),
            "area_unit": self.area_unit,
            "slice_order": "inferior_to_superior",
            "intensity_rule": self.intensity_rule,
            "threshold": post.threshold,
            "lung_threshold": post.lung_threshold,
            "min_component": post.min_component,
            "lung_margin_px": post.lung_margin_px,
            "tta": self.tta,
            "framing": self.framing,
            "model_size": self.model_size,
            "model_id": self.model_id,
            "covseg_version": self.covseg_version,
        }


def burden_report(
    lungs: np.ndarray,
    infection: np.ndarray,
    *,
    spacing_mm: tuple[float, float, float | None] | None,
    voxel_ml: float | None,
    shape: tuple[int, ...],
    **fields: Any,
) -> BurdenReport:
    """The report of canonical ``(N, H, W)`` uint8 masks.

    Args:
        lungs: lungs (infection included).
        infection: infection.
        spacing_mm: canonical (row, column, slice) mm (slice ``None`` for a single slice of
            known pixel size), or ``None``.
        voxel_ml: millilitres per voxel, or ``None``.
        shape: the input array's shape.
        fields: the remaining :class:`BurdenReport` fields (``intensity_rule``,
            ``postprocessing``, ``tta``, ``framing``, ``model_size``, ``model_id``,
            ``estimate``).
    """
    lung_per_slice = lungs.sum(axis=(1, 2), dtype=np.int64)
    inf_per_slice = infection.sum(axis=(1, 2), dtype=np.int64)
    sides = left_right_counts(lungs, infection)
    pixel_mm2 = None if spacing_mm is None else spacing_mm[0] * spacing_mm[1]
    areas = inf_per_slice if pixel_mm2 is None else inf_per_slice * pixel_mm2
    full = spacing_mm is not None and spacing_mm[2] is not None
    return BurdenReport(
        shape=tuple(int(s) for s in shape),
        spacing_mm=tuple(round(float(v), 6) for v in spacing_mm) if full else None,  # type: ignore[arg-type, union-attr]
        voxel_volume_ml=voxel_ml,
        total=Burden.of(int(lung_per_slice.sum()), int(inf_per_slice.sum()), voxel_ml),
        left=Burden.of(*sides["left"], voxel_ml),
        right=Burden.of(*sides["right"], voxel_ml),
        infection_area_per_slice=tuple(round(float(a), 4) for a in areas),
        area_unit="px" if pixel_mm2 is None else "mm2",
        **fields,
    )


#: Slices labelled per call by :func:`left_right_counts` (int32 labels and their per-pixel
#: copies of 16 slices of 512²: ~50 MB), so its memory does not grow with the scan.
_SIDE_CHUNK = 16

#: 8-connectivity within a slice, none across slices.
_SLICE_8 = np.zeros((3, 3, 3), dtype=bool)
_SLICE_8[1] = True


def left_right_counts(lungs: np.ndarray, infection: np.ndarray) -> dict[str, tuple[int, int]]:
    """``{"left": (lung, infection), "right": (...)}`` pixel counts (see the module docstring).

    Every count comes from histograms of the component labels (over all lung pixels, those in
    the columns left of the midline, and the same for the infection pixels), a few slices per
    labelling call: no full-size temporary per rule. Infection outside every lung component
    (never in ``segment``'s output, whose lungs include the infection) is on neither side.
    """
    lung_l = lung_r = inf_l = inf_r = 0
    for k, box, labels, on_left_px, sides in _side_chunks(lungs):
        size, on_left, split, whole_left, whole_right = sides
        lung_l += int(size[whole_left].sum() + on_left[split].sum())
        lung_r += int(size[whole_right].sum() + (size - on_left)[split].sum())
        lung = labels > 0
        lab = labels[lung]  # the label of every lung pixel, 1-D
        inf_px = np.asarray(infection[k : k + _SIDE_CHUNK][box], dtype=bool)[lung]
        inf_size = np.bincount(lab[inf_px], minlength=len(size))
        inf_on_left = np.bincount(lab[inf_px & on_left_px], minlength=len(size))
        inf_l += int(inf_size[whole_left].sum() + inf_on_left[split].sum())
        inf_r += int(inf_size[whole_right].sum() + (inf_size - inf_on_left)[split].sum())
    return {"left": (lung_l, inf_l), "right": (lung_r, inf_r)}


def lung_sides(lungs: np.ndarray) -> np.ndarray:
    """The side of every lung pixel by the rule of :func:`left_right_counts`: uint8 ``(N, H, W)``,
    1 left lung, 2 right lung, 0 no lung. Counting infection pixels on each side gives
    :func:`left_right_counts` for any infection inside ``lungs`` (the viewer recounts a
    re-thresholded infection that way)."""
    out = np.zeros(lungs.shape, dtype=np.uint8)
    for k, box, labels, on_left_px, sides in _side_chunks(lungs):
        _, _, split, whole_left, _ = sides
        lung = labels > 0
        lab = labels[lung]
        left = whole_left[lab] | (split[lab] & on_left_px)
        chunk = np.zeros(labels.shape, dtype=np.uint8)
        chunk[lung] = np.where(left, 1, 2)
        out[k : k + _SIDE_CHUNK][box] = chunk
    return out


#: Two lungs leave the mediastinum at their mean column: their column profile there is a small
#: share of its peak (0.02-0.13 on the 9 expert-labelled Zenodo scans). One lung is there at
#: about its peak. At or above this share, the lung pixels are taken as one lung.
_ONE_LUNG_SHARE = 0.5
#: ... and lies at least this share of the width off the image's centre (two lungs: within 2 % on
#: those scans; lungs fused across the middle are centred; experiments/lung_profile_share.py).
_ONE_LUNG_OFFSET = 0.08


def _one_lung_side(column_mass: np.ndarray, midline: float) -> str | None:
    """``"left"`` or ``"right"`` where the lung pixels' mean column ``midline`` lies
    :data:`_ONE_LUNG_OFFSET` of the width off the image's centre and their column profile
    (smoothed over 2 % of the width each way) reaches :data:`_ONE_LUNG_SHARE` of its peak
    there: one lung, on that side. ``None``: two lungs (or no telling: cut at the midline)."""
    w = len(column_mass)
    offset = midline - (w - 1) / 2
    if abs(offset) < _ONE_LUNG_OFFSET * w:  # centred: both lungs fused, or no telling
        return None
    band = max(1, round(0.02 * w))
    smooth = np.convolve(column_mass, np.ones(2 * band + 1), mode="same")
    if smooth[min(w - 1, round(midline))] < _ONE_LUNG_SHARE * smooth.max():
        return None
    return "left" if offset > 0 else "right"


def _side_chunks(lungs: np.ndarray) -> Iterator[tuple[int, Any, np.ndarray, np.ndarray, Any]]:
    """Per :data:`_SIDE_CHUNK` slices holding lung: ``(first slice, box, labels, on_left_px,
    (size, on_left, split, whole_left, whole_right))``: the lung's bounding box within the
    chunk, its 8-connected component labels there, whether each lung pixel lies left of the
    midline, and per component its pixels, its pixels left of the midline and its side
    (cut at the midline, wholly left, wholly right; background False)."""
    n, w = len(lungs), lungs.shape[2]
    column_mass = lungs.sum(axis=(0, 1), dtype=np.int64)
    if column_mass.sum() == 0:
        return
    cols = np.arange(w)
    midline = float((column_mass * cols).sum() / column_mass.sum())
    left_cols = cols >= midline  # columns run patient right -> left
    one = _one_lung_side(column_mass, midline)
    if one is not None:  # every component wholly on that side
        left_cols = np.full(w, one == "left")
    for k in range(0, n, _SIDE_CHUNK):
        lung = np.asarray(lungs[k : k + _SIDE_CHUNK], dtype=bool)
        rows, cols_in = np.nonzero(lung.any(axis=(0, 2)))[0], np.nonzero(lung.any(axis=(0, 1)))[0]
        if rows.size == 0:
            continue
        box = np.s_[:, rows[0] : rows[-1] + 1, cols_in[0] : cols_in[-1] + 1]
        lung = lung[box]
        labels, m = ndi.label(lung, structure=_SLICE_8)
        lab = labels[lung]
        on_left_px = np.broadcast_to(left_cols[box[2]], lung.shape)[lung]
        size = np.bincount(lab, minlength=m + 1)
        on_left = np.bincount(lab[on_left_px], minlength=m + 1)
        frac = on_left / np.maximum(size, 1)
        split = np.minimum(frac, 1 - frac) >= 0.25  # cut at the midline
        whole_left = ~split & (frac >= 0.5)
        whole_right = ~split & ~whole_left
        split[0] = whole_left[0] = whole_right[0] = False  # the background
        yield k, box, labels, on_left_px, (size, on_left, split, whole_left, whole_right)
