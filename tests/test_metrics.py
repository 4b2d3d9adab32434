from __future__ import annotations

import math

import numpy as np
import pytest

from covseg.evaluation.metrics import (
    ConfusionAccumulator,
    aggregate,
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
