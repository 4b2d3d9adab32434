"""The infection burden on out-of-fold predictions: calibration, post-processing and interval
chosen on every cross-validated patient, and their honest (nested) estimate.

A finished ``covseg cv`` predicts every case once with a network that never saw it
(:func:`covseg.studies.oof.collect_oof`, through the Segmenter of ``segment``). On those
out-of-fold probabilities this module fits, in order:

1. **Calibration** of the infection head (:func:`covseg.inference.calibration.fit_platt`) on the
   pixels of the predicted lungs (lung probability >= the lung threshold: where the expected
   volume is summed), an equal number of pixels drawn from each data source.
2. **The post-processing** (threshold on calibrated probabilities x minimum component x lung
   margin) that maximises the objective stated before any result was seen (2026-12-06):

       J = mean over sources of [ (per-slice mean Dice + mean per-case pooled Dice) / 2
                                  - median over cases of |relative infected-volume error| ]

   Each source weighs the same however many slices it has; the burden error counts as much as
   the Dice.
3. **The burden interval**: two calibrated thresholds ``low < high``; the mask volumes at
   ``high`` and ``low`` bound the infected volume. The pair chosen is the narrowest (median
   width relative to the mask volume, averaged over sources) whose coverage of the true volume
   is at least :data:`COVERAGE` in every source; if none reaches it, the best-covering pair.

:func:`nested` repeats all three on the other folds for every fold and scores the fold with
them: what choosing this way is worth on patients it did not see. :func:`fit` on all folds is
what is shipped (:func:`covseg.studies.oof.ship_calibrated`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from covseg.config import Calibration, PostProcessing, to_dict
from covseg.evaluation.agreement import case_burden
from covseg.evaluation.metrics import confusion, dice
from covseg.inference.calibration import calibrate, fit_platt
from covseg.inference.postprocess import (
    component_sizes,
    masks_from_probabilities,
    near_lungs,
    scaled,
)

__all__ = [
    "COVERAGE",
    "Fitted",
    "OOFCase",
    "evaluate",
    "fit",
    "nested",
]

log = logging.getLogger(__name__)

#: The grid of the post-processing search (thresholds on calibrated probabilities).
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))
MIN_COMPONENTS = (0, 10, 40)
LUNG_MARGINS: tuple[int | None, ...] = (2, 0, 8, None)
#: The interval's target coverage of the true infected volume, in every source.
COVERAGE = 0.9
#: Pixels per source drawn for the calibration fit.
FIT_PIXELS = 400_000


@dataclass(frozen=True)
class OOFCase:
    """One case's out-of-fold prediction and truth, ``(N, H, W)`` each.

    Attributes:
        run: the run (fold) that predicted it.
        source: its dataset.
        case: its id.
        lung: lung probabilities (``None``: no lung head).
        infection: infection probabilities (uncalibrated: the run's own).
        truth: boolean infection truth.
        lung_truth: boolean lung truth, or ``None`` (then "% infected" is scored against the
            predicted lungs, see :func:`covseg.evaluation.agreement.case_burden`).
        voxel_ml: mL per voxel, or ``None``.
        own: the run's own post-processing (chosen on its validation slices).
    """

    run: str
    source: str
    case: str
    lung: np.ndarray | None
    infection: np.ndarray
    truth: np.ndarray
    lung_truth: np.ndarray | None
    voxel_ml: float | None
    own: PostProcessing


@dataclass(frozen=True)
class Fitted:
    """What :func:`fit` chose: the calibration (with its interval) and the post-processing."""

    calibration: Calibration
    postprocessing: PostProcessing
    objective: float
    grid: dict[str, float]


def _lung_region(c: OOFCase, post: PostProcessing) -> np.ndarray | None:
    return None if c.lung is None else c.lung >= post.lung_threshold


def fit_calibration(cases: Sequence[OOFCase], seed: int = 0) -> tuple[float, float]:
    """Platt ``(slope, offset)`` of the infection head, :data:`FIT_PIXELS` pixels of the
    predicted lungs drawn from every source (all of them where a source has fewer)."""
    rng = np.random.default_rng(seed)
    ps = []
    base = PostProcessing()
    for source in sorted({c.source for c in cases}):
        p = []
        y = []
        for c in cases:
            if c.source != source:
                continue
            region = _lung_region(c, base)
            region = np.ones(c.truth.shape, bool) if region is None else region
            p.append(c.infection[region])
            y.append(c.truth[region])
        pp, yy = np.concatenate(p), np.concatenate(y)
        if len(pp) > FIT_PIXELS:
            pick = rng.choice(len(pp), FIT_PIXELS, replace=False)
            pp, yy = pp[pick], yy[pick]
        # equal weight per source whatever its pixel count
        ps.append((pp, yy, np.full(len(pp), 1.0 / len(pp))))
    p = np.concatenate([x[0] for x in ps])
    y = np.concatenate([x[1] for x in ps])
    w = np.concatenate([x[2] for x in ps])
    return fit_platt(p, y, w)


def _calibrated(c: OOFCase, slope: float, offset: float) -> OOFCase:
    return OOFCase(
        c.run, c.source, c.case, c.lung, calibrate(c.infection, slope, offset), c.truth,
        c.lung_truth, c.voxel_ml, c.own,
    )  # fmt: skip


@dataclass
class _CaseGrid:
    """Per-candidate counts of one case: per-slice (tp, fp, fn) and the predicted volume."""

    slice_dice: dict[str, np.ndarray]
    tp: dict[str, int]
    n_pred: dict[str, int]


def _key(t: float, mc: int, margin: int | None) -> str:
    return f"{t:.2f}/{mc}/{'none' if margin is None else margin}"


def _grid_case(
    c: OOFCase,
    model_size: int,
    base: PostProcessing,
    min_components: Sequence[int] = MIN_COMPONENTS,
    lung_margins: Sequence[int | None] = LUNG_MARGINS,
) -> _CaseGrid:
    """Every candidate of the grid on one case, with the stages of
    :func:`~covseg.inference.postprocess.masks_from_probabilities` (shared work: the lung region
    once per margin, one labelling per threshold)."""
    out = _CaseGrid({}, {}, {})
    lung = _lung_region(c, base)
    truth = c.truth
    shape_hw = c.infection.shape[1:]
    min_px = [
        scaled(base.replace(min_component=mc), shape_hw, model_size)[0] for mc in min_components
    ]
    for margin in lung_margins:
        post_m = base.replace(lung_margin_px=margin)
        near = None
        if lung is not None and margin is not None:
            _, m = scaled(post_m, shape_hw, model_size)
            near = near_lungs(lung, m, where=c.infection >= min(THRESHOLDS))
        for t in THRESHOLDS:
            inf = c.infection >= t
            if near is not None:
                inf &= near
            labels, sizes = (None, None)
            for mc, px in zip(min_components, min_px, strict=True):
                if px <= 1:
                    pred = inf
                else:
                    if labels is None:
                        labels, sizes = component_sizes(inf)
                    keep = sizes >= px
                    keep[0] = False
                    pred = keep[labels]
                tp, fp, fn, tn = confusion(pred, truth, axes=(1, 2))
                k = _key(t, mc, margin)
                out.slice_dice[k] = dice(tp, fp, fn, tn)
                out.tp[k] = int(tp.sum())
                out.n_pred[k] = int(np.count_nonzero(pred))
    return out


def _score_grid(cases: Sequence[OOFCase], grids: Sequence[_CaseGrid]) -> dict[str, float]:
    """:math:`J` of every candidate."""
    sources = sorted({c.source for c in cases})
    keys = list(grids[0].tp) if grids else []
    scores: dict[str, float] = {}
    for k in keys:
        per_source = []
        for s in sources:
            idx = [i for i, c in enumerate(cases) if c.source == s]
            slice_d = np.concatenate([grids[i].slice_dice[k] for i in idx])
            pooled, rel = [], []
            for i in idx:
                n_true = int(np.count_nonzero(cases[i].truth))
                tp, n_pred = grids[i].tp[k], grids[i].n_pred[k]
                d = n_pred + n_true
                pooled.append(1.0 if d == 0 else 2 * tp / d)
                if n_true > 0:
                    rel.append(abs(n_pred - n_true) / n_true)
            med = float(np.median(rel)) if rel else 0.0
            per_source.append(0.5 * (float(slice_d.mean()) + float(np.mean(pooled))) - med)
        scores[k] = float(np.mean(per_source))
    return scores


def _parse(k: str, base: PostProcessing) -> PostProcessing:
    t, mc, m = k.split("/")
    return base.replace(
        threshold=float(t), min_component=int(mc), lung_margin_px=None if m == "none" else int(m)
    )


def _choose_interval(
    cases: Sequence[OOFCase], grids: Sequence[_CaseGrid], post: PostProcessing
) -> tuple[tuple[float, float], float]:
    """``((low, high), min coverage)`` of the interval thresholds (module docstring)."""
    mc, m = post.min_component, post.lung_margin_px
    sources = sorted({c.source for c in cases})
    n_true = np.array([np.count_nonzero(c.truth) for c in cases], float)
    vol = {t: np.array([g.n_pred[_key(t, mc, m)] for g in grids], float) for t in THRESHOLDS}
    mask = vol[min(THRESHOLDS, key=lambda t: abs(t - post.threshold))]
    best: tuple | None = None
    for i, lo in enumerate(THRESHOLDS):
        for hi in THRESHOLDS[i + 1 :]:
            upper, lower = vol[lo], vol[hi]
            cov, width = [], []
            for s in sources:
                sel = np.array([c.source == s for c in cases]) & (n_true > 0)
                if not sel.any():
                    continue
                cov.append(
                    float(((lower[sel] <= n_true[sel]) & (n_true[sel] <= upper[sel])).mean())
                )
                width.append(float(np.median((upper[sel] - lower[sel]) / np.maximum(mask[sel], 1))))
            if not cov:
                continue
            ok = min(cov) >= COVERAGE
            rank = (ok, -float(np.mean(width)) if ok else min(cov), -float(np.mean(width)))
            if best is None or rank > best[0]:
                best = (rank, (lo, hi), min(cov))
    if best is None:
        return (post.threshold, post.threshold), float("nan")
    return best[1], best[2]


def fit(
    cases: Sequence[OOFCase], model_size: int, seed: int = 0, rule: PostProcessing | None = None
) -> Fitted:
    """Calibration, post-processing and interval chosen on ``cases`` (module docstring).

    Args:
        cases: out-of-fold cases.
        model_size: the network's input side.
        seed: of the calibration's pixel sample.
        rule: keep this post-processing (its threshold on the *uncalibrated* probabilities,
            moved to the same cut on the calibrated ones: the masks do not change) and choose
            only the calibration and the interval; ``None``: search the post-processing too.
    """
    slope, offset = fit_calibration(cases, seed)
    cal = [_calibrated(c, slope, offset) for c in cases]
    base = PostProcessing()
    if rule is not None:
        t = float(calibrate(np.array([rule.threshold]), slope, offset)[0])
        post = rule.replace(threshold=min(max(t, 1e-6), 1 - 1e-6))
        grids = [
            _grid_case(c, model_size, base, (rule.min_component,), (rule.lung_margin_px,))
            for c in cal
        ]
        (lo, hi), cov = _choose_interval(cal, grids, post)
        return Fitted(Calibration(slope, offset, (lo, hi), cov), post, float("nan"), {})
    grids = [_grid_case(c, model_size, base) for c in cal]
    scores = _score_grid(cal, grids)
    # ties: the threshold nearest 0.5, then no component filter, then the margin listed first
    order = {m: i for i, m in enumerate(LUNG_MARGINS)}

    def rank(k: str) -> tuple:
        p = _parse(k, base)
        return (scores[k], -abs(p.threshold - 0.5), -p.min_component, -order[p.lung_margin_px])

    best = max(scores, key=rank)
    post = _parse(best, base)
    (lo, hi), cov = _choose_interval(cal, grids, post)
    calibration = Calibration(
        infection_slope=slope,
        infection_offset=offset,
        interval_thresholds=(lo, hi),
        interval_coverage=cov,
    )
    return Fitted(calibration, post, scores[best], scores)


def evaluate(
    cases: Sequence[OOFCase],
    model_size: int,
    post_of: Any,
    calibration: Calibration | None,
) -> list[dict[str, Any]]:
    """Score every case as ``segment`` would write it: per case the per-slice Dice, the
    :class:`~covseg.evaluation.agreement.CaseBurden` of the mask volume and, with a
    calibration, of the expected volume with its interval.

    Args:
        cases: out-of-fold cases (uncalibrated probabilities).
        model_size: the network's input side.
        post_of: the post-processing of a case (``callable(case) -> PostProcessing``).
        calibration: applied to the probabilities first (``None``: raw, no expected volume).
    """
    rows = []
    for c in cases:
        post = post_of(c)
        inf_p = c.infection
        if calibration is not None:
            inf_p = calibrate(inf_p, calibration.infection_slope, calibration.infection_offset)
        masks = masks_from_probabilities(c.lung, inf_p, post, model_size)
        tp, fp, fn, tn = confusion(masks.infection, c.truth, axes=(1, 2))
        lung_truth = c.lung_truth
        mask_b = case_burden(
            c.case, masks.infection, c.truth, masks.lung, lung_truth,
            voxel_ml=c.voxel_ml, source=c.source,
        )  # fmt: skip
        row: dict[str, Any] = {
            "run": c.run,
            "slice_dice": dice(tp, fp, fn, tn),
            "mask": mask_b,
        }
        if calibration is not None:
            region = _lung_region(c, post)
            expected = float(inf_p[region].sum()) if region is not None else float(inf_p.sum())
            interval = None
            if calibration.interval_thresholds is not None:
                lo, hi = calibration.interval_thresholds
                vols = [
                    int(np.count_nonzero(
                        masks_from_probabilities(c.lung, inf_p, post.replace(threshold=t), model_size).infection
                    ))
                    for t in (hi, lo)
                ]  # fmt: skip
                interval = (float(vols[0]), float(vols[1]))
            row["expected"] = case_burden(
                c.case, masks.infection, c.truth, masks.lung, lung_truth,
                voxel_ml=c.voxel_ml, source=c.source, estimate=expected, interval=interval,
            )  # fmt: skip
        rows.append(row)
    return rows


def nested(
    cases: Sequence[OOFCase], model_size: int, seed: int = 0, rule: PostProcessing | None = None
) -> dict[str, Any]:
    """Every run's cases scored with what :func:`fit` (with ``rule``) chooses on the *other*
    runs' cases.

    Returns:
        ``{"rows": [...], "chosen": {run: {...}}}``; the rows as :func:`evaluate`'s.
    """
    runs = sorted({c.run for c in cases})
    rows: list[dict[str, Any]] = []
    chosen: dict[str, Any] = {}
    for run in runs:
        train = [c for c in cases if c.run != run]
        test = [c for c in cases if c.run == run]
        f = fit(train, model_size, seed, rule)
        log.info("nested %s: %s, calibration %s", run, f.postprocessing, f.calibration)
        chosen[run] = {
            "postprocessing": to_dict(f.postprocessing),
            "calibration": to_dict(f.calibration),
            "objective_on_other_folds": f.objective,
        }
        rows += evaluate(test, model_size, lambda c, p=f.postprocessing: p, f.calibration)
    return {"rows": rows, "chosen": chosen}
