"""Burden error arithmetic (covseg.evaluation.agreement), checked by hand on tiny masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covseg.evaluation.agreement import agreement, case_burden


def _masks(n_true: int, n_pred: int, overlap: int, size: int = 100) -> tuple[np.ndarray, ...]:
    true = np.zeros(size, bool)
    pred = np.zeros(size, bool)
    true[:n_true] = True
    pred[n_true - overlap : n_true - overlap + n_pred] = True
    return pred.reshape(1, 10, 10), true.reshape(1, 10, 10)


def test_one_case_by_hand():
    # truth: 20 infected px of a 50 px lung (40 %); prediction: 30 px, 15 of them true, in a
    # 60 px lung (50 %); voxel 0.5 mL
    pred, true = _masks(20, 30, 15)
    lung_t = np.zeros((1, 10, 10), bool)
    lung_t.flat[:50] = True
    lung_p = np.zeros((1, 10, 10), bool)
    lung_p.flat[:60] = True
    c = case_burden("p1", pred, true, lung_p, lung_t, voxel_ml=0.5, source="a")
    assert (c.true_infection, c.pred_infection) == (10.0, 15.0)
    assert c.unit == "ml"
    assert c.relative_error == pytest.approx(0.5)
    assert c.true_percent == pytest.approx(40.0)
    assert c.pred_percent == pytest.approx(50.0)
    assert c.percent_error == pytest.approx(10.0)
    assert c.pooled_dice == pytest.approx(2 * 15 / (30 + 20))
    assert c.covered is None


def test_estimate_and_interval_replace_the_mask_volume():
    pred, true = _masks(20, 30, 15)
    c = case_burden("p", pred, true, None, None, estimate=18.0, interval=(16.0, 25.0))
    assert c.unit == "px"
    assert c.pred_infection == 18.0
    assert c.relative_error == pytest.approx(-0.1)
    assert c.covered is True
    assert c.percent_error is None  # no lungs at all
    c2 = case_burden("p", pred, true, None, None, estimate=18.0, interval=(21.0, 25.0))
    assert c2.covered is False


def test_agreement_by_hand():
    # three cases, lungs of 100 px each; true/pred infection 10/12, 20/15, 40/44 px
    cases = []
    for name, t, p in (("a", 10, 12), ("b", 20, 15), ("c", 40, 44)):
        pred, true = _masks(t, p, min(t, p))
        lung = np.ones((1, 10, 10), bool)
        cases.append(case_burden(name, pred, true, lung, lung))
    s = agreement(cases)
    # relative errors +0.2, -0.25, +0.1 -> median |.| 0.2, mean 0.01667
    assert s["median_abs_relative_error"] == pytest.approx(0.2)
    assert s["mean_relative_error"] == pytest.approx((0.2 - 0.25 + 0.1) / 3)
    assert s["overestimated"] == 2
    # % errors +2, -5, +4 pp: bias 1/3, SD of (2, -5, 4)
    d = np.array([2.0, -5.0, 4.0])
    ba = s["bland_altman"]
    assert ba["bias"] == pytest.approx(d.mean())
    assert ba["sd"] == pytest.approx(d.std(ddof=1))
    assert ba["loa_low"] == pytest.approx(d.mean() - 1.96 * d.std(ddof=1))
    assert ba["loa_high"] == pytest.approx(d.mean() + 1.96 * d.std(ddof=1))
    assert s["spearman"] == pytest.approx(1.0)  # same order: 10 < 20 < 40 and 12 < 15 < 44
    assert s["n_cases"] == 3


def test_agreement_with_too_few_cases_is_nan_not_an_error():
    pred, true = _masks(10, 10, 10)
    s = agreement([case_burden("a", pred, true, None, None)])
    assert s["median_abs_relative_error"] == 0.0
    assert math.isnan(s["spearman"]) and math.isnan(s["bland_altman"]["sd"])
    empty = agreement([])
    assert empty["n_cases"] == 0 and math.isnan(empty["median_abs_relative_error"])


def test_a_case_without_true_infection_has_no_relative_error():
    pred, true = _masks(0, 5, 0)
    c = case_burden("a", pred, true, None, None)
    assert c.relative_error is None
    assert c.pooled_dice == 0.0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ"):
        case_burden("a", np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5), bool), None, None)


def test_without_lung_truth_the_percent_is_of_the_predicted_lungs():
    pred, true = _masks(20, 30, 15)
    lung_p = np.zeros((1, 10, 10), bool)
    lung_p.flat[:50] = True
    c = case_burden("p", pred, true, lung_p, None)
    assert c.lung_from_prediction
    assert c.true_percent == pytest.approx(40.0) and c.pred_percent == pytest.approx(60.0)
    assert c.percent_error == pytest.approx(20.0)
