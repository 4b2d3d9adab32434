"""Burden error: how far the infection burden of a case (patient) is from the expert's.

Per case (a patient: the slices a prepared dataset groups into one case, or a scan), with
volumes in mL where the voxel size is known and in voxels (pixels of the evaluated slices)
where it is not -- the ratios below do not depend on the unit:

* relative volume error ``(predicted - true) / true`` of the infection (``None`` for a case
  without true infection);
* the error of "% of lung infected" in percentage points, ``predicted % - true %``, each
  percentage of its own lung mask (where the truth has no lung mask, e.g. MedSeg's slices, both
  of the predicted lungs: the error the infection mask alone makes);
* the per-case pooled Dice (all the case's pixels together), beside the per-slice mean that
  Table 2 of the paper reports;
* where an estimate gives one, whether its interval holds the true volume.

Across cases (:func:`agreement`): the median absolute relative error, the Bland-Altman bias and
95 % limits of agreement of "% infected" (mean difference +- 1.96 SD, Bland & Altman 1986), and
Spearman's rank correlation of the infection volumes (can the cases be ordered by burden?).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["CaseBurden", "agreement", "case_burden", "format_agreement"]


@dataclass(frozen=True)
class CaseBurden:
    """Predicted and true burden of one case.

    Attributes:
        case: the case id.
        source: the dataset it belongs to (``""`` for one dataset).
        unit: ``"ml"`` or ``"px"`` (voxels of the evaluated masks).
        true_infection: true infected volume.
        pred_infection: predicted infected volume (the estimate scored: mask or expected).
        true_lung: true lung volume (``0`` where the truth has no lungs).
        pred_lung: predicted lung volume.
        tp: infection pixels true and predicted (for the pooled Dice).
        fp: predicted, not true.
        fn: true, not predicted.
        interval: ``(low, high)`` of the predicted infected volume, where the estimate has one.
        lung_from_prediction: the true "% infected" is of the predicted lungs (no lung truth).
    """

    case: str
    source: str
    unit: str
    true_infection: float
    pred_infection: float
    true_lung: float
    pred_lung: float
    tp: int
    fp: int
    fn: int
    interval: tuple[float, float] | None = None
    lung_from_prediction: bool = False

    @property
    def relative_error(self) -> float | None:
        """``(pred - true) / true``; ``None`` without true infection."""
        if self.true_infection <= 0:
            return None
        return (self.pred_infection - self.true_infection) / self.true_infection

    @property
    def true_percent(self) -> float | None:
        lung = self.pred_lung if self.lung_from_prediction else self.true_lung
        return 100.0 * self.true_infection / lung if lung > 0 else None

    @property
    def pred_percent(self) -> float | None:
        return 100.0 * self.pred_infection / self.pred_lung if self.pred_lung > 0 else None

    @property
    def percent_error(self) -> float | None:
        """Predicted minus true "% of lung infected", percentage points."""
        t, p = self.true_percent, self.pred_percent
        return None if t is None or p is None else p - t

    @property
    def pooled_dice(self) -> float:
        """Dice of all the case's pixels together (1 where both masks are empty)."""
        d = 2 * self.tp + self.fp + self.fn
        return 1.0 if d == 0 else 2 * self.tp / d

    @property
    def covered(self) -> bool | None:
        """Whether :attr:`interval` holds the true volume (``None`` without an interval)."""
        if self.interval is None:
            return None
        return self.interval[0] <= self.true_infection <= self.interval[1]

    def row(self) -> dict[str, Any]:
        """The JSON/CSV row of the case."""
        return {
            "case": self.case,
            "source": self.source,
            "unit": self.unit,
            "true_infection": self.true_infection,
            "pred_infection": self.pred_infection,
            "relative_error": self.relative_error,
            "true_percent": self.true_percent,
            "pred_percent": self.pred_percent,
            "percent_error": self.percent_error,
            "pooled_dice": self.pooled_dice,
            "interval": None if self.interval is None else list(self.interval),
            "covered": self.covered,
            "lung_from_prediction": self.lung_from_prediction,
        }


def case_burden(
    case: str,
    pred_infection: np.ndarray,
    true_infection: np.ndarray,
    pred_lung: np.ndarray | None,
    true_lung: np.ndarray | None,
    *,
    voxel_ml: float | None = None,
    source: str = "",
    estimate: float | None = None,
    interval: tuple[float, float] | None = None,
) -> CaseBurden:
    """The :class:`CaseBurden` of boolean masks of one case (any shape, e.g. ``(N, H, W)``).

    Args:
        case: case id.
        pred_infection: predicted infection mask.
        true_infection: true infection mask, same shape.
        pred_lung: predicted lungs (``None``: no lung head).
        true_lung: true lungs (``None``: none known; the true "% infected" is then of the
            predicted lungs).
        voxel_ml: mL per voxel; ``None``: volumes in voxels.
        source: dataset name.
        estimate: the predicted infected volume to score instead of the mask's (e.g. the
            expected volume), in voxels.
        interval: ``(low, high)`` of the estimate, in voxels.

    Raises:
        ValueError: the masks' shapes differ.
    """
    pred = np.asarray(pred_infection, dtype=bool)
    true = np.asarray(true_infection, dtype=bool)
    if pred.shape != true.shape:
        raise ValueError(f"{case}: predicted {pred.shape} and true {true.shape} masks differ")
    scale = 1.0 if voxel_ml is None else float(voxel_ml)
    tp = int(np.count_nonzero(pred & true))
    n_pred, n_true = int(np.count_nonzero(pred)), int(np.count_nonzero(true))
    return CaseBurden(
        case=case,
        source=source,
        unit="px" if voxel_ml is None else "ml",
        true_infection=n_true * scale,
        pred_infection=(n_pred if estimate is None else float(estimate)) * scale,
        true_lung=0.0 if true_lung is None else float(np.count_nonzero(true_lung)) * scale,
        pred_lung=0.0 if pred_lung is None else float(np.count_nonzero(pred_lung)) * scale,
        tp=tp,
        fp=n_pred - tp,
        fn=n_true - tp,
        interval=None if interval is None else (interval[0] * scale, interval[1] * scale),
        lung_from_prediction=true_lung is None and pred_lung is not None,
    )


def agreement(cases: Sequence[CaseBurden]) -> dict[str, Any]:
    """Across-case summary of burden error (see the module docstring).

    Returns:
        ``{"n_cases", "median_abs_relative_error", "mean_relative_error",
        "median_abs_percent_error", "bland_altman": {"bias", "sd", "loa_low", "loa_high",
        "n"}, "spearman", "pooled_dice_mean", "interval_coverage", "n_intervals",
        "overestimated"}``; ``nan`` where a figure has too few cases (the limits of agreement
        need 2, the rank correlation 3).
    """
    rel = np.array([c.relative_error for c in cases if c.relative_error is not None], float)
    pct = np.array([c.percent_error for c in cases if c.percent_error is not None], float)
    covered = [c.covered for c in cases if c.covered is not None]
    nan = float("nan")
    sd = float(pct.std(ddof=1)) if len(pct) >= 2 else nan
    bias = float(pct.mean()) if len(pct) else nan
    vols = [(c.true_infection, c.pred_infection) for c in cases]
    rho = nan
    if len(vols) >= 3:
        t, p = np.array(vols).T
        if np.ptp(t) > 0 and np.ptp(p) > 0:
            rho = float(stats.spearmanr(t, p).statistic)
    return {
        "n_cases": len(cases),
        "median_abs_relative_error": float(np.median(np.abs(rel))) if len(rel) else nan,
        "mean_relative_error": float(rel.mean()) if len(rel) else nan,
        # Of all cases: a case without true infection is overestimated by any prediction.
        "overestimated": sum(c.pred_infection > c.true_infection for c in cases),
        "median_abs_percent_error": float(np.median(np.abs(pct))) if len(pct) else nan,
        "bland_altman": {
            "bias": bias,
            "sd": sd,
            "loa_low": bias - 1.96 * sd if not math.isnan(sd) else nan,
            "loa_high": bias + 1.96 * sd if not math.isnan(sd) else nan,
            "n": len(pct),
        },
        "spearman": rho,
        "pooled_dice_mean": float(np.mean([c.pooled_dice for c in cases])) if cases else nan,
        "interval_coverage": float(np.mean(covered)) if covered else nan,
        "n_intervals": len(covered),
    }


def _f(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_agreement(rows: dict[str, dict[str, Any]], title: str = "Burden (per case)") -> str:
    """A Markdown table of :func:`agreement` results, one row per label (e.g. per estimate or
    per source), without a trailing newline."""
    lines = [
        f"{title}:",
        "",
        "| | cases | per-case pooled Dice | median abs rel. volume error | over / all "
        "| bias (% pts) | 95 % limits | Spearman | interval coverage |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for label, a in rows.items():
        ba = a["bland_altman"]
        cover = _f(a["interval_coverage"], ".2f") if a["n_intervals"] else "-"
        lines.append(
            f"| {label} | {a['n_cases']} | {_f(a['pooled_dice_mean'], '.3f')} "
            f"| {_f(a['median_abs_relative_error'], '.3f')} | {a['overestimated']} / {a['n_cases']} "
            f"| {_f(ba['bias'], '+.2f')} | {_f(ba['loa_low'], '+.1f')} to {_f(ba['loa_high'], '+.1f')} "
            f"| {_f(a['spearman'], '.2f')} | {cover} |"
        )
    return "\n".join(lines)
