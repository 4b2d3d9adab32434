"""The infection-burden report of one scan: volumes, percent of lung infected, left/right, area
along the scan.

Left and right lung: canonical columns run patient right -> left. The midline is the mean column
of all lung pixels of the scan; each 2-D lung component goes to the side holding most of its
pixels, and a component with at least a quarter of its pixels on each side (lungs touching at the
anterior junction) is cut at the midline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from covseg._version import __version__
from covseg.config import PostProcessing

__all__ = ["Burden", "BurdenReport", "burden_report", "left_right_counts"]


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
        model_size: the network's input side.
        model_id: sha256 of the weights.
        case: the output prefix (file inputs).
        input: the input path (file inputs).
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
            ``postprocessing``, ``tta``, ``model_size``, ``model_id``).
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


def left_right_counts(lungs: np.ndarray, infection: np.ndarray) -> dict[str, tuple[int, int]]:
    """``{"left": (lung, infection), "right": (...)}`` pixel counts (see the module docstring)."""
    n, h, w = lungs.shape
    column_mass = lungs.sum(axis=(0, 1), dtype=np.int64)
    counts = {"left": [0, 0], "right": [0, 0]}
    if column_mass.sum() == 0:
        return {k: (0, 0) for k in counts}
    cols = np.arange(w)
    midline = float((column_mass * cols).sum() / column_mass.sum())
    left_col = np.broadcast_to(cols >= midline, (h, w))  # columns run patient right -> left
    eight = np.ones((3, 3), dtype=bool)
    for k in range(n):
        lung = lungs[k].astype(bool)
        if not lung.any():
            continue
        labels, m = ndi.label(lung, structure=eight)
        size = np.bincount(labels.ravel(), minlength=m + 1)
        on_left = np.bincount(labels.ravel(), weights=left_col.ravel(), minlength=m + 1)
        frac = on_left / np.maximum(size, 1)
        split = np.minimum(frac, 1 - frac) >= 0.25
        whole_left = frac >= 0.5
        left = np.where(split[labels], left_col, whole_left[labels]) & lung
        inf = infection[k].astype(bool)
        counts["left"][0] += int(left.sum())
        counts["right"][0] += int((lung & ~left).sum())
        counts["left"][1] += int((inf & left).sum())
        counts["right"][1] += int((inf & ~left).sum())
    return {k: (v[0], v[1]) for k, v in counts.items()}
