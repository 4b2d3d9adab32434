from __future__ import annotations

import math

import numpy as np
import pytest

from covseg.evaluation.metrics import (
    LESION_STRATA,
    ConfusionAccumulator,
    aggregate,
    by_lesion_size,
    confusion,
    dice,
    iou,
    ppv,
    sensitivity,
    specificity,
)


def _m(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows])


PRED = _m(["##..", "##..", "....", "...."])
TRUTH = _m(["###.", "....", "....", "...#"])


def test_metrics_on_a_hand_made_4x4_case():
    tp, fp, fn, tn = confusion(PRED, TRUTH)
    assert (tp, fp, fn, tn) == (2, 2, 2, 10)
    assert dice(tp, fp, fn) == pytest.approx(4 / 8)
    assert iou(tp, fp, fn) == pytest.approx(2 / 6)
    assert ppv(tp, fp, fn) == pytest.approx(2 / 4)
    assert sensitivity(tp, fp, fn) == pytest.approx(2 / 4)
    assert specificity(tp, fp, fn, tn) == pytest.approx(10 / 12)


def test_empty_rules():
    empty = np.zeros((4, 4), bool)
    counts = confusion(empty, empty)
    for f in (dice, iou, ppv, sensitivity, specificity):
        assert f(*counts) == 1.0  # both empty: a perfect slice (the paper's rule)
    missed = confusion(empty, TRUTH)  # nothing predicted, something there
    assert dice(*missed) == 0 and ppv(*missed) == 0 and sensitivity(*missed) == 0
    spurious = confusion(PRED, empty)  # something predicted, nothing there
    assert dice(*spurious) == 0 and sensitivity(*spurious) == 0
    assert specificity(*spurious) == pytest.approx(12 / 16)


def test_aggregation_modes():
    empty = np.zeros((4, 4), bool)
    acc = ConfusionAccumulator()
    acc.add(np.stack([PRED, empty]), np.stack([TRUTH, empty]), case="a")
    acc.add(TRUTH, TRUTH, case="b")
    assert acc.n_items == 3
    per_slice = acc.aggregate("per_slice_mean")
    assert per_slice["dice"] == pytest.approx((0.5 + 1 + 1) / 3)
    per_volume = acc.aggregate("per_volume_mean")
    assert per_volume["dice"] == pytest.approx((0.5 + 1) / 2)  # case a summed over its slices
    pooled = acc.aggregate("pooled")
    assert pooled["dice"] == pytest.approx(2 * 6 / (2 * 6 + 2 + 2))
    all_empty = aggregate(np.array([[0, 0, 0, 16]]), ["x"], "pooled")
    assert math.isnan(all_empty["dice"]) and all_empty["specificity"] == 1.0
    with pytest.raises(ValueError):
        aggregate(np.zeros((1, 4)), ["x"], "median")


def test_by_lesion_size_strata_and_consistency():
    # 10,000-pixel slices: truth shares 0 (clean), 0 (false alarm), 0.1 %, 0.5 % (on a bound:
    # the stratum above), 2 %, 20 %; the last lesion missed entirely
    counts = np.array(
        [
            [0, 0, 0, 10_000],
            [0, 30, 0, 9_970],
            [5, 5, 5, 9_985],
            [40, 0, 10, 9_950],
            [150, 50, 50, 9_750],
            [0, 0, 2_000, 8_000],
        ]
    )
    rows = by_lesion_size(counts)
    by = {r["stratum"]: r for r in rows}
    labels = [label for label, _ in LESION_STRATA]
    assert [r["stratum"] for r in rows] == [labels[0], labels[1], labels[3], labels[4], labels[5]]
    assert by[labels[0]]["n_slices"] == 2
    assert by[labels[0]]["dice"] == pytest.approx(0.5)  # clean slice 1, false alarm 0
    assert by[labels[0]]["no_prediction"] == pytest.approx(0.5)
    assert by[labels[0]]["fp_share"] == pytest.approx(30 / 10_000 / 2)
    assert math.isnan(by[labels[0]]["sensitivity"])
    assert by[labels[3]]["dice"] == pytest.approx(80 / 90)  # 0.5 % goes above the bound
    assert by[labels[5]]["dice"] == 0 and by[labels[5]]["no_prediction"] == 1
    assert math.isnan(by[labels[5]]["ppv"])
    # the strata partition the slices: their weighted Dice is the per-slice mean
    overall = aggregate(counts, ["c"] * len(counts), "per_slice_mean")["dice"]
    weighted = sum(r["n_slices"] * r["dice"] for r in rows) / len(counts)
    assert weighted == pytest.approx(overall)
    # the share is resolution-free: the same slices at 4x the pixels land in the same strata
    assert [r["n_slices"] for r in by_lesion_size(4 * counts)] == [r["n_slices"] for r in rows]
    assert by_lesion_size(np.zeros((0, 4), np.int64)) == []


def test_surface_metrics_known_shift():
    from covseg.evaluation.metrics import surface_metrics

    a = np.zeros((20, 20, 20), bool)
    a[5:15, 5:15, 5:15] = True
    b = np.roll(a, 2, axis=0)  # shifted by 2 voxels of 1.5 mm = 3 mm
    out = surface_metrics(a, b, spacing=(1.5, 1.0, 1.0))
    assert out["hd95_mm"] == pytest.approx(3.0, abs=1e-6)
    assert 0.5 < out["nsd_3mm"] <= 1.0
    empty = surface_metrics(np.zeros_like(a), np.zeros_like(a), spacing=(1, 1, 1))
    assert empty == {"hd95_mm": 0.0, "nsd_3mm": 1.0}
