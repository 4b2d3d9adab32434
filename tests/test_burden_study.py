"""The out-of-fold burden study (covseg.studies.burden) on synthetic out-of-fold predictions."""

from __future__ import annotations

import numpy as np

from covseg.config import PostProcessing
from covseg.studies.burden import COVERAGE, OOFCase, fit, nested
from covseg.studies.calibrate import headline, study


def _case(run: str, source: str, k: int, bias: float, rng: np.random.Generator) -> OOFCase:
    """A 4-slice 32x32 case: a disc of infection in a square lung, probabilities that rank the
    pixels well but are shifted by ``bias`` on the logit (miscalibrated)."""
    yy, xx = np.mgrid[:32, :32]
    r = 3 + (k % 5)
    truth = np.stack([(yy - 16) ** 2 + (xx - 14 - s) ** 2 <= r * r for s in range(4)])
    lung_truth = np.zeros((4, 32, 32), bool)
    lung_truth[:, 4:28, 4:28] = True
    z = np.where(truth, 1.5, -1.5) + rng.normal(0, 1.2, truth.shape) + bias
    inf = (1 / (1 + np.exp(-z))).astype(np.float32)
    lung = np.where(lung_truth, 0.95, 0.05).astype(np.float32)
    return OOFCase(run, source, f"{source}-{run}-{k}", lung, inf, truth, lung_truth, None,
                   PostProcessing(threshold=0.5))  # fmt: skip


def _cases(seed: int = 0) -> list[OOFCase]:
    rng = np.random.default_rng(seed)
    return [
        _case(run, src, k, bias, rng)
        for run in ("fold0", "fold1", "fold2")
        for src, bias in (("a", 1.0), ("b", 1.0))
        for k in range(4)
    ]


def test_fit_calibrates_and_chooses_a_rule_and_an_interval():
    cases = _cases()
    f = fit(cases, model_size=32)
    # the probabilities were shifted up by 1 on the logit: the fit shifts them back down
    assert f.calibration.infection_offset < -0.3
    lo, hi = f.calibration.interval_thresholds
    assert 0 < lo < hi < 1
    assert f.calibration.interval_coverage >= COVERAGE
    assert f.objective == max(f.grid.values())


def test_nested_choice_never_sees_its_own_fold():
    cases = _cases()
    before = nested(cases, model_size=32)["chosen"]
    # wreck fold0's truth: what fold0 is scored with must not change, the others' must
    wrecked = [
        c
        if c.run != "fold0"
        else OOFCase(
            c.run,
            c.source,
            c.case,
            c.lung,
            c.infection,
            np.roll(c.truth, 9, axis=2),
            c.lung_truth,
            c.voxel_ml,
            c.own,
        )
        for c in cases
    ]
    after = nested(wrecked, model_size=32)["chosen"]
    assert after["fold0"] == before["fold0"]
    assert after["fold1"] != before["fold1"] or after["fold2"] != before["fold2"]


def test_study_reports_both_estimates_per_source_and_a_headline():
    rec = study(_cases(), model_size=32)
    assert set(rec["nested"]["summary"]) == {"a", "b"}
    for s in rec["nested"]["summary"].values():
        assert {"mask", "expected"} <= set(s)
        assert s["n_cases"] == 12
    # the raw probabilities overestimate: the calibrated expected volume errs less than the
    # raw sum would, and the study names one headline estimate
    assert headline(rec) in ("mask", "expected")
    exp = rec["nested"]["summary"]["a"]["expected"]
    assert abs(exp["mean_relative_error"]) < 0.5
    assert exp["n_intervals"] == 12
    own = rec["own"]["summary"]["a"]
    assert "expected" not in own and own["mask"]["n_cases"] == 12


def test_the_headline_is_judged_under_the_rule_that_is_shipped():
    rec = study(_cases(), model_size=32, rule=PostProcessing(threshold=0.5))
    for part in ("nested", "nested_rule"):
        per = rec[part]["summary"].values()
        mask = np.mean([s["mask"]["median_abs_relative_error"] for s in per])
        exp = np.mean([s["expected"]["median_abs_relative_error"] for s in per])
        assert headline(rec, part) == ("expected" if exp < mask else "mask")
    # the two parts disagree here once the kept rule's masks are made worse than the chosen
    worse = rec["nested_rule"]["summary"]
    for s in worse.values():
        s["mask"]["median_abs_relative_error"] = 9.0
    assert headline(rec, "nested_rule") == "expected"
