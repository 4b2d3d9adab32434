"""Platt recalibration (covseg.inference.calibration): fit and apply."""

from __future__ import annotations

import numpy as np
import pytest

from covseg.inference.calibration import calibrate, fit_platt, logit


def _sample(slope: float, offset: float, n: int = 200_000, seed: int = 0):
    """Scores whose true probability is sigmoid(slope * logit(p) + offset)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.01, 0.99, n)
    q = 1 / (1 + np.exp(-(slope * logit(p) + offset)))
    return p, rng.uniform(size=n) < q


def test_fit_recovers_a_known_miscalibration():
    p, y = _sample(0.6, -1.2)
    slope, offset = fit_platt(p, y)
    assert slope == pytest.approx(0.6, abs=0.03)
    assert offset == pytest.approx(-1.2, abs=0.03)
    # the calibrated probabilities sum to the positives (what the expected volume relies on)
    assert calibrate(p, slope, offset).sum() == pytest.approx(y.sum(), rel=0.01)
    assert abs(p.sum() - y.sum()) > 0.2 * y.sum()  # and the raw ones did not


def test_weights_let_a_small_source_count():
    # source A (many) is calibrated; source B (few) is overconfident; equal weight per source
    pa, ya = _sample(1.0, 0.0, 100_000, seed=1)
    pb, yb = _sample(1.0, -2.0, 5_000, seed=2)
    p, y = np.concatenate([pa, pb]), np.concatenate([ya, yb])
    plain = fit_platt(p, y)
    w = np.concatenate([np.full(len(pa), 1 / len(pa)), np.full(len(pb), 1 / len(pb))])
    weighted = fit_platt(p, y, w)
    assert abs(weighted[1]) > 5 * abs(plain[1])  # B pulls the offset down once it counts


def test_identity_leaves_probabilities_untouched():
    p = np.random.default_rng(0).uniform(size=(2, 8, 8)).astype(np.float32)
    assert calibrate(p, 1.0, 0.0) is p
    out = calibrate(p, 2.0, 0.5)
    assert out.dtype == np.float32 and out.shape == p.shape
    # monotonic: the order of the pixels is kept
    assert (np.argsort(out.ravel(), kind="stable") == np.argsort(p.ravel(), kind="stable")).all()


def test_one_class_only_gives_the_identity_and_bad_input_is_refused():
    assert fit_platt(np.full(10, 0.3), np.zeros(10, bool)) == (1.0, 0.0)
    with pytest.raises(ValueError, match="labels"):
        fit_platt(np.full(10, 0.3), np.zeros(9, bool))
    with pytest.raises(ValueError, match="weights"):
        fit_platt(np.full(3, 0.3), np.array([0, 1, 0], bool), np.array([-1.0, 1.0, 1.0]))


def test_calibration_round_trip_fit_checkpoint_inference(tmp_path):
    """fit -> checkpoint (format 4) -> the Segmenter's probabilities and the report."""
    from _train_helpers import tiny_checkpoint
    from covseg.checkpoint import CALIBRATED_FORMAT, load_checkpoint, read_meta, save_checkpoint
    from covseg.config import Calibration
    from covseg.data.synthetic import make_phantom
    from covseg.inference.segmenter import Segmenter

    path, _ = tiny_checkpoint(tmp_path / "tiny.safetensors")
    model, meta = load_checkpoint(path)
    hu = make_phantom(0, (32, 32, 4))[0].transpose(2, 1, 0).astype(np.float32)
    plain = Segmenter(model, meta, device="cpu")
    images01 = np.clip((hu + 1000) / 1400, 0, 1)
    raw = plain.framed(images01).infection
    # a calibration fitted on "out-of-fold" labels that say the raw probabilities run high
    truth = np.random.default_rng(0).uniform(size=raw.shape) < calibrate(raw, 1.0, -1.5)
    slope, offset = fit_platt(raw, truth)
    cal = Calibration(slope, offset, interval_thresholds=(0.3, 0.7), interval_coverage=0.9)
    out = save_checkpoint(tmp_path / "cal.safetensors", model, meta.replace(calibration=cal))
    assert read_meta(out).calibration == cal
    assert __import__("json").loads(out.with_suffix(".json").read_text())["format"] == (
        CALIBRATED_FORMAT
    )
    model2, meta2 = load_checkpoint(out)
    seg = Segmenter(model2, meta2, device="cpu")
    np.testing.assert_allclose(
        seg.framed(images01).infection, calibrate(raw, slope, offset), rtol=1e-5, atol=1e-6
    )
    report = seg.predict_volume(hu, spacing=(2.0, 0.8, 0.8)).report.to_dict()
    est = report["infection_estimate"]
    assert est["interval_thresholds"] == [0.3, 0.7]
    lo, hi = est["interval_voxels"]
    assert lo <= hi  # the high threshold's mask is inside the low one's
    assert est["expected_ml"] == pytest.approx(
        est["expected_voxels"] * 2.0 * 0.8 * 0.8 / 1000, rel=1e-3
    )
    # an uncalibrated checkpoint reports no estimate and keeps format 2
    assert plain.predict_volume(hu).report.to_dict()["infection_estimate"] is None
