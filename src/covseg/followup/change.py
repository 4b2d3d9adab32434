"""What changed between two scans of one patient: their reports, and their masks voxel by voxel.

Report level (:func:`compare_reports`): the change in lung and infection volume and in the
percentage of lung infected, both lungs, left and right, from two ``covseg segment`` reports.
Voxel level: the second scan's mask put on the first scan's voxel grid through their physical
(world RAS millimetre) coordinates (:func:`resample_onto`), optionally after a rigid
registration of the second scan onto the first (:func:`rigid_transform`, SimpleITK) for a
patient who lay differently; then :func:`mask_change` counts the infection that is new, resolved
and persisting (:func:`voxel_change`: both steps).

Two scans are compared as their reports state them: when they were segmented by different
models, thresholds, TTA, framings or intensity rules, :attr:`FollowUp.notes` says so, since the
change then mixes both.

Arrays and report dicts in, no files: finding a case's files is :mod:`covseg.followup.cases`'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from covseg.errors import CovsegError, DataError

__all__ = [
    "FollowUp",
    "RegionChange",
    "check_report",
    "compare_reports",
    "mask_change",
    "resample_onto",
    "rigid_transform",
    "voxel_change",
]

#: Report regions: name -> where the region's numbers sit in the report (``""``: top level).
REGIONS = {"both": "", "left": "left", "right": "right"}
_FIELDS = ("lung_volume_ml", "infection_volume_ml", "infection_percent")
_VOXEL_FIELDS = ("new_ml", "resolved_ml", "persisting_ml", "dice")


@dataclass(frozen=True)
class RegionChange:
    """Before, after and the change for one region (both lungs, left or right).

    Attributes:
        region: ``"both"``, ``"left"`` or ``"right"``.
        lung_ml: ``(before, after)`` lung volume.
        infection_ml: ``(before, after)`` infected volume.
        infection_change_ml: after - before.
        infection_change_relative: (after - before) / before, ``None`` without infection before.
        percent: ``(before, after)`` percent of the lung infected (``None``: no lung found).
        percent_change: after - before, in percentage points (``None`` when either is).
    """

    region: str
    lung_ml: tuple[float, float]
    infection_ml: tuple[float, float]
    infection_change_ml: float
    infection_change_relative: float | None
    percent: tuple[float | None, float | None]
    percent_change: float | None


@dataclass(frozen=True)
class FollowUp:
    """The change from one scan (``before``) to the next (``after``), region by region.

    Attributes:
        before: the first scan's case name.
        after: the second scan's case name.
        regions: both lungs, left, right.
        notes: why the change may mix in other things than the disease (another model, ...).
        voxels: the voxel-level change of both lungs (:func:`voxel_change`), ``None`` when
            only the reports were compared.
    """

    before: str
    after: str
    regions: tuple[RegionChange, ...]
    notes: tuple[str, ...] = ()
    voxels: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the regions by name."""
        return {
            "before": self.before,
            "after": self.after,
            "regions": {
                r.region: {k: v for k, v in asdict(r).items() if k != "region"}
                for r in self.regions
            },
            "voxels": None if self.voxels is None else dict(self.voxels),
            "notes": list(self.notes),
        }

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat row per region (a CSV's rows); the voxel-level change (``new_ml``,
        ``resolved_ml``, ``persisting_ml``, ``dice``) fills the ``both`` row only."""
        voxels = self.voxels or {}
        return [
            {
                "region": r.region,
                "lung_ml_before": r.lung_ml[0],
                "lung_ml_after": r.lung_ml[1],
                "infection_ml_before": r.infection_ml[0],
                "infection_ml_after": r.infection_ml[1],
                "infection_change_ml": r.infection_change_ml,
                "infection_change_relative": r.infection_change_relative,
                "infected_percent_before": r.percent[0],
                "infected_percent_after": r.percent[1],
                "infected_percent_change": r.percent_change,
                **{k: voxels.get(k) if r.region == "both" else None for k in _VOXEL_FIELDS},
            }
            for r in self.regions
        ]


def compare_reports(before: Mapping[str, Any], after: Mapping[str, Any]) -> FollowUp:
    """The change from the ``before`` report to the ``after`` report.

    Args:
        before: the first scan's report (``BurdenReport.to_dict()`` / ``*_report.json``).
        after: the second scan's report.

    Returns:
        Both lungs, left and right; volumes in mL, percentages of the lung.

    Raises:
        DataError: a report without volumes (a 2-D picture has no voxel size), missing a
            field, or with a field that is not a finite number >= 0, named by its case.
    """
    b, a = (str(r.get("case", "a report")) for r in (before, after))
    regions = tuple(
        _region_change(name, _numbers(before, key, b), _numbers(after, key, a))
        for name, key in REGIONS.items()
    )
    return FollowUp(str(before.get("case")), str(after.get("case")), regions, _notes(before, after))


def check_report(report: Mapping[str, Any], name: str) -> None:
    """Check that a report has what :func:`compare_reports` reads.

    Args:
        report: a ``covseg segment`` report.
        name: what the message calls it (its file).

    Raises:
        DataError: as :func:`compare_reports`, naming ``name``.
    """
    for key in REGIONS.values():
        _numbers(report, key, name)


def _numbers(report: Mapping[str, Any], key: str, name: str) -> tuple[float, float, float | None]:
    """``(lung mL, infection mL, percent)`` of one region of a report (``name``: messages)."""
    region = report.get(key) if key else report
    if not isinstance(region, Mapping) or any(f not in region for f in _FIELDS):
        where = f"'{key}' " if key else ""
        raise DataError(f"{name}: the report lacks {where}{', '.join(_FIELDS)}")
    lung, infection, percent = (region[f] for f in _FIELDS)
    if lung is None or infection is None:
        raise DataError(f"{name}: the report has no volumes (a picture has no voxel size)")
    for field, v in zip(_FIELDS, (lung, infection, percent), strict=True):
        # A hand-edited or foreign report: a string would be a traceback, NaN a NaN change.
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if (v is not None or field != "infection_percent") and not (ok and v >= 0):
            where = f"{key}." if key else ""
            raise DataError(f"{name}: {where}{field} is {v!r}, not a number >= 0")
    return float(lung), float(infection), None if percent is None else float(percent)


def _region_change(region: str, before: tuple, after: tuple) -> RegionChange:
    (lung0, inf0, pct0), (lung1, inf1, pct1) = before, after
    change = inf1 - inf0
    return RegionChange(
        region=region,
        lung_ml=(lung0, lung1),
        infection_ml=(inf0, inf1),
        infection_change_ml=round(change, 6),
        infection_change_relative=round(change / inf0, 6) if inf0 > 0 else None,
        percent=(pct0, pct1),
        percent_change=None if pct0 is None or pct1 is None else round(pct1 - pct0, 4),
    )


def _notes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[str, ...]:
    notes = []
    for key, what in (
        ("model_id", "models"),
        ("threshold", "thresholds"),
        ("tta", "test-time augmentation settings"),
        ("framing", "framings"),
        ("intensity_rule", "intensity rules"),
    ):
        if before.get(key) != after.get(key):
            notes.append(
                f"the scans were segmented with different {what} ({before.get(key)} and "
                f"{after.get(key)}): the change mixes that difference with the disease's"
            )
    return tuple(notes)


# ---------------------------------------------------------------------------- voxels
def resample_onto(
    mask: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    target_affine: np.ndarray,
    transform: np.ndarray | None = None,
) -> np.ndarray:
    """A mask put on another scan's voxel grid by world coordinates (nearest voxel).

    Args:
        mask: ``(X, Y, Z)`` mask of the second scan, in its file's voxel order.
        affine: its voxel -> world RAS mm affine.
        shape: the first scan's ``(X, Y, Z)``.
        target_affine: the first scan's affine.
        transform: 4 x 4 world -> world map taking a point of the first scan to the same
            anatomy in the second (:func:`rigid_transform`); identity if ``None``.

    Returns:
        ``shape`` array of ``mask``'s dtype; 0 where the second scan does not reach.
    """
    from scipy import ndimage as ndi

    world = np.eye(4) if transform is None else np.asarray(transform, dtype=float)
    # First scan's voxel -> world -> the second scan's world -> the second scan's voxel.
    pull = np.linalg.inv(np.asarray(affine, dtype=float)) @ world @ np.asarray(target_affine)
    if tuple(mask.shape) == tuple(shape) and np.allclose(pull, np.eye(4), atol=1e-6):
        return np.array(mask)  # the same grid (a rescan read back, no movement): nothing to do
    # "grid-constant": a voxel reaches half a voxel beyond its centre, so an edge slice is kept
    # by a point a hair past its centre ("constant" drops it: the whole top slice, for +0.01 mm).
    return ndi.affine_transform(
        mask,
        pull[:3, :3],
        offset=pull[:3, 3],
        output_shape=tuple(shape),
        order=0,
        mode="grid-constant",
        cval=0,
    )


def mask_change(before: np.ndarray, after: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """Infection that is new, resolved and persisting between two masks on one grid.

    Args:
        before: the first scan's mask.
        after: the second scan's mask on the first scan's grid (:func:`resample_onto`).
        voxel_ml: millilitres per voxel of that grid.

    Returns:
        ``new_ml``, ``resolved_ml``, ``persisting_ml`` and ``dice`` (1.0 when both are empty).
    """
    a, b = np.asarray(before) > 0, np.asarray(after) > 0
    if a.shape != b.shape:
        raise DataError(f"masks of shapes {a.shape} and {b.shape}: resample one onto the other")
    both, new, resolved = int((a & b).sum()), int((b & ~a).sum()), int((a & ~b).sum())
    total = int(a.sum() + b.sum())
    return {
        "new_ml": round(new * voxel_ml, 6),
        "resolved_ml": round(resolved * voxel_ml, 6),
        "persisting_ml": round(both * voxel_ml, 6),
        "dice": 2.0 * both / total if total else 1.0,
    }


def rigid_transform(
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    moving: np.ndarray,
    moving_affine: np.ndarray,
    *,
    iterations: int = 100,
) -> np.ndarray:
    """The rigid motion between two CT scans of one patient (SimpleITK: Mattes mutual
    information, a rotation and a translation, started from the scans' centres).

    Args:
        fixed: the first scan, ``(X, Y, Z)`` HU in its file's voxel order.
        fixed_affine: its voxel -> world RAS mm affine.
        moving: the second scan.
        moving_affine: its affine.
        iterations: optimiser iterations per resolution level.

    Returns:
        4 x 4 world RAS map taking a point of the first scan to the same anatomy in the
        second (what :func:`resample_onto` takes as ``transform``).

    Raises:
        CovsegError: SimpleITK is not installed.
    """
    try:
        import SimpleITK as sitk
    except ImportError:
        raise CovsegError("registration needs SimpleITK (pip install SimpleITK)") from None
    images = [
        _sitk_image(sitk, a, aff) for a, aff in ((fixed, fixed_affine), (moving, moving_affine))
    ]
    start = sitk.CenteredTransformInitializer(
        *images, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.25, seed=0)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-3, iterations, relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SetInitialTransform(start, inPlace=False)
    found = sitk.CompositeTransform(reg.Execute(*images)).GetNthTransform(0)
    euler = sitk.Euler3DTransform()
    euler.SetFixedParameters(found.GetFixedParameters())
    euler.SetParameters(found.GetParameters())
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(euler.GetMatrix()).reshape(3, 3)
    centre = np.asarray(euler.GetCenter())
    lps[:3, 3] = np.asarray(euler.GetTranslation()) + centre - lps[:3, :3] @ centre
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS, its own inverse
    return flip @ lps @ flip


def _sitk_image(sitk: Any, array: np.ndarray, affine: np.ndarray) -> Any:
    """A SimpleITK image (LPS physical space) of an ``(X, Y, Z)`` array with a RAS affine."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(
        np.ascontiguousarray(np.asarray(array, np.float32).transpose(2, 1, 0))
    )
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    return image


def voxel_change(
    before: np.ndarray,
    before_affine: np.ndarray,
    after: np.ndarray,
    after_affine: np.ndarray,
    transform: np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`mask_change` of two infection masks, the second put on the first's grid.

    Args:
        before: the first scan's ``(X, Y, Z)`` mask; ``before_affine`` its affine.
        after: the second scan's mask; ``after_affine`` its affine.
        transform: :func:`rigid_transform`'s map, ``None`` for the scanner coordinates alone.

    Returns:
        :func:`mask_change`'s fields, ``registered`` and ``transform`` (the 4 x 4 map used).
    """
    voxel_ml = abs(float(np.linalg.det(np.asarray(before_affine)[:3, :3]))) / 1000.0
    moved = resample_onto(after, after_affine, before.shape, before_affine, transform)
    used = np.eye(4) if transform is None else np.asarray(transform, dtype=float)
    return mask_change(before, moved, voxel_ml) | {
        "registered": transform is not None,
        "transform": [[round(float(v), 6) for v in row] for row in used],
    }
