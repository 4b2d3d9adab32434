"""Overlap metrics on confusion counts, and the three ways of aggregating them.

Per-slice metrics are pure functions of the counts ``tp, fp, fn, tn`` (NumPy arrays, any shape).
Empty rules — a case whose truth and prediction are both empty — are explicit:

* ``per_slice_mean`` (the paper / the authors' code): every metric of a slice whose truth and
  prediction are both empty is 1, then slices are averaged. Where only the denominator of a
  metric is zero otherwise (e.g. PPV of an empty prediction against a non-empty truth) the
  metric is 0.
* ``per_volume_mean`` (Ma et al.'s benchmark): the same rule, applied once per case (volume)
  with counts summed over its slices, then cases are averaged.
* ``pooled``: all pixels of all items together; a metric whose denominator is zero is ``nan``.

Hausdorff (HD95) and normalised surface Dice come from MONAI (see
:func:`surface_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LESION_STRATA",
    "METRICS",
    "ConfusionAccumulator",
    "aggregate",
    "by_lesion_size",
    "confusion",
    "dice",
    "format_lesion_size_table",
    "iou",
    "ppv",
    "sensitivity",
    "specificity",
    "surface_metrics",
]

METRICS = ("dice", "iou", "ppv", "sensitivity", "specificity")


def confusion(pred: np.ndarray, truth: np.ndarray, axes: tuple[int, ...] | None = None):
    """Counts ``(tp, fp, fn, tn)`` of boolean ``pred`` against ``truth`` summed over ``axes``
    (all axes when ``None``)."""
    pred = np.asarray(pred).astype(bool)
    truth = np.asarray(truth).astype(bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} != truth shape {truth.shape}")
    tp = np.sum(pred & truth, axis=axes, dtype=np.int64)
    fp = np.sum(pred & ~truth, axis=axes, dtype=np.int64)
    fn = np.sum(~pred & truth, axis=axes, dtype=np.int64)
    tn = np.sum(~pred & ~truth, axis=axes, dtype=np.int64)
    return tp, fp, fn, tn


def _ratio(num, den, both_empty, empty: float, zero_den: float) -> np.ndarray:
    """``num / den``; ``empty`` where truth and prediction are both empty, ``zero_den`` where
    only the denominator is zero."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1), zero_den)
    return np.where(both_empty, empty, out)


# Every metric takes the four counts (tp, fp, fn, tn), whichever it uses, so that they can be
# called alike (:data:`_FUNCS`).
def dice(tp, fp, fn, tn=None, *, empty: float = 1.0) -> np.ndarray:
    """``2 TP / (2 TP + FP + FN)``; ``empty`` where truth and prediction are both empty."""
    tp, fp, fn = (np.asarray(a) for a in (tp, fp, fn))
    return _ratio(2 * tp, 2 * tp + fp + fn, (tp + fp + fn) == 0, empty, empty)


def iou(tp, fp, fn, tn=None, *, empty: float = 1.0) -> np.ndarray:
    """``TP / (TP + FP + FN)`` (Jaccard); ``empty`` where both are empty."""
    tp, fp, fn = (np.asarray(a) for a in (tp, fp, fn))
    return _ratio(tp, tp + fp + fn, (tp + fp + fn) == 0, empty, empty)


def ppv(tp, fp, fn, tn=None, *, empty: float = 1.0) -> np.ndarray:
    """Precision ``TP / (TP + FP)``; ``empty`` where both are empty, 0 for an empty prediction
    against a non-empty truth."""
    tp, fp, fn = (np.asarray(a) for a in (tp, fp, fn))
    return _ratio(tp, tp + fp, (tp + fp + fn) == 0, empty, 0.0)


def sensitivity(tp, fp, fn, tn=None, *, empty: float = 1.0) -> np.ndarray:
    """Recall ``TP / (TP + FN)``; ``empty`` where both are empty, 0 for an empty truth with a
    non-empty prediction (nothing to find, something wrongly found)."""
    tp, fp, fn = (np.asarray(a) for a in (tp, fp, fn))
    return _ratio(tp, tp + fn, (tp + fp + fn) == 0, empty, 0.0)


def specificity(tp, fp, fn, tn) -> np.ndarray:
    """``TN / (TN + FP)``; 1 where the slice has no negatives and no false positives."""
    fp, tn = np.asarray(fp), np.asarray(tn)
    return _ratio(tn, tn + fp, (tn + fp) == 0, 1.0, 1.0)


_FUNCS = {
    "dice": dice,
    "iou": iou,
    "ppv": ppv,
    "sensitivity": sensitivity,
    "specificity": specificity,
}


def _scores(tp, fp, fn, tn, *, pooled: bool) -> dict[str, float]:
    out = {}
    for name, fn_ in _FUNCS.items():
        v = fn_(tp, fp, fn, tn)
        if pooled:
            den = {
                "dice": 2 * tp + fp + fn,
                "iou": tp + fp + fn,
                "ppv": tp + fp,
                "sensitivity": tp + fn,
                "specificity": tn + fp,
            }[name]
            out[name] = float(v) if den > 0 else float("nan")
        else:
            out[name] = float(np.mean(v)) if np.size(v) else float("nan")
    return out


@dataclass
class ConfusionAccumulator:
    """Collects per-slice counts tagged with their case, then aggregates in any mode.

    Example:
        >>> acc = ConfusionAccumulator()
        >>> acc.add(pred_slices, truth_slices, case="p1")  # (N, H, W) booleans
        >>> acc.aggregate("per_slice_mean")["dice"]
    """

    counts: list[np.ndarray] = field(default_factory=list)  # rows (tp, fp, fn, tn)
    cases: list[str] = field(default_factory=list)

    def add(self, pred: np.ndarray, truth: np.ndarray, case: str) -> None:
        """Add ``(N, H, W)`` (or ``(H, W)``) binary prediction and truth of one case."""
        pred, truth = np.asarray(pred), np.asarray(truth)
        if pred.ndim == 2:
            pred, truth = pred[None], truth[None]
        tp, fp, fn, tn = confusion(pred, truth, axes=(1, 2))
        self.counts.extend(np.stack([tp, fp, fn, tn], axis=1))
        self.cases.extend([case] * len(tp))

    def aggregate(self, mode: str) -> dict[str, float]:
        return aggregate(np.array(self.counts).reshape(-1, 4), self.cases, mode)

    @property
    def n_items(self) -> int:
        return len(self.counts)


def aggregate(counts: np.ndarray, cases: Iterable[str], mode: str) -> dict[str, float]:
    """Aggregate per-slice counts ``(N, 4)`` = ``(tp, fp, fn, tn)`` with their case ids.

    Args:
        counts: one row per slice.
        cases: the case (patient/volume) of each row.
        mode: ``"per_slice_mean"``, ``"per_volume_mean"`` or ``"pooled"`` (module docstring).

    Returns:
        ``{"dice", "iou", "ppv", "sensitivity", "specificity"}`` as floats.
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, 4)
    if mode == "per_slice_mean":
        return _scores(*counts.T, pooled=False)
    if mode == "pooled":
        return _scores(*counts.sum(axis=0), pooled=True)
    if mode == "per_volume_mean":
        cases = list(cases)
        ids = sorted(set(cases))
        per_case = np.array([counts[[c == i for c in cases]].sum(axis=0) for i in ids])
        return _scores(*per_case.reshape(-1, 4).T, pooled=False)
    raise ValueError(f"unknown aggregation mode {mode!r}")


#: The strata of :func:`by_lesion_size`: ``(label, upper bound)`` of the truth's share of the
#: slice's pixels, a resolution-free size (at 256²: 0.15 % ≈ 100 px, 0.5 % ≈ 330, 1.5 % ≈ 980,
#: 5 % ≈ 3,300; a 512² slice has 4× the pixels in each stratum).
LESION_STRATA: tuple[tuple[str, float], ...] = (
    ("no lesion", 0.0),
    ("< 0.15 %", 0.0015),
    ("0.15-0.5 %", 0.005),
    ("0.5-1.5 %", 0.015),
    ("1.5-5 %", 0.05),
    (">= 5 %", float("inf")),
)


def by_lesion_size(counts: np.ndarray | list) -> list[dict[str, float | int | str]]:
    """Where a per-slice mean loses: slices grouped by the truth's share of the slice
    (:data:`LESION_STRATA`; a share exactly at a bound falls in the stratum above it).

    Args:
        counts: ``(N, 4)`` per-slice ``(tp, fp, fn, tn)`` (array or rows; ``N`` may be 0).

    Returns:
        One row per non-empty stratum, in order: ``stratum``, ``n_slices``, ``dice``
        (per-slice mean, the empty rule of :func:`dice`), ``sensitivity`` and ``ppv`` (pooled
        over the stratum's pixels; NaN without truth or prediction), ``no_prediction`` (share
        of its slices with no predicted pixel: missed lesions, or clean healthy slices) and
        ``fp_share`` (mean share of a slice's pixels wrongly marked).
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, 4)
    tp, fp, fn, _ = counts.T
    total = np.maximum(counts.sum(axis=1), 1)
    share = (tp + fn) / total
    bounds = np.array([b for _, b in LESION_STRATA[1:-1]])
    # stratum 0: no truth pixel; then by the bounds (np.digitize puts a share on a bound above it)
    which = np.where(tp + fn == 0, 0, 1 + np.digitize(share, bounds))
    rows: list[dict[str, float | int | str]] = []
    for k, (label, _) in enumerate(LESION_STRATA):
        m = which == k
        if not m.any():
            continue
        pooled = _scores(*counts[m].sum(axis=0), pooled=True)
        rows.append(
            {
                "stratum": label,
                "n_slices": int(m.sum()),
                "dice": float(np.mean(dice(tp[m], fp[m], fn[m]))),
                "sensitivity": pooled["sensitivity"],
                "ppv": pooled["ppv"],
                "no_prediction": float(np.mean((tp[m] + fp[m]) == 0)),
                "fp_share": float(np.mean(fp[m] / total[m])),
            }
        )
    return rows


def format_lesion_size_table(rows: list[dict[str, float | int | str]], title: str) -> str:
    """A Markdown block of :func:`by_lesion_size`'s rows."""
    lines = [
        f"### {title}",
        "",
        "| Lesion share of the slice | Slices | Dice (per-slice mean) | Sensitivity | PPV "
        "| No prediction | FP share |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stratum']} | {r['n_slices']} | {r['dice']:.4f} | {r['sensitivity']:.4f} "
            f"| {r['ppv']:.4f} | {r['no_prediction']:.2f} | {100 * float(r['fp_share']):.2f} % |"
        )
    return "\n".join(lines) + "\n"


def surface_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...], tolerance_mm: float = 3.0
) -> dict[str, float]:
    """HD95 (mm) and normalised surface Dice at ``tolerance_mm`` of one 3-D (or 2-D) case, by
    MONAI. Both empty: HD95 0 and NSD 1; exactly one empty: HD95 ``nan`` (undefined) and NSD 0.

    Args:
        pred: binary prediction ``(X, Y, Z)`` or ``(H, W)``.
        truth: binary truth of the same shape.
        spacing: voxel size in mm per axis.
    """
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    p, t = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    if not p.any() and not t.any():
        return {"hd95_mm": 0.0, "nsd_3mm": 1.0}
    if not p.any() or not t.any():
        return {"hd95_mm": float("nan"), "nsd_3mm": 0.0}
    pt = torch.from_numpy(p)[None, None].float()
    tt = torch.from_numpy(t)[None, None].float()
    hd = compute_hausdorff_distance(pt, tt, percentile=95, spacing=list(spacing))
    nsd = compute_surface_dice(pt, tt, class_thresholds=[tolerance_mm], spacing=list(spacing))
    return {"hd95_mm": float(hd.item()), "nsd_3mm": float(nsd.item())}
