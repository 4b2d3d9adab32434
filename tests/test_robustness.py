"""Robustness variants: geometry, value conventions, truth alignment, scores and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _train_helpers import tiny_checkpoint
from covseg.checkpoint import read_meta
from covseg.cli import main
from covseg.config import ROBUSTNESS_VARIANTS
from covseg.data.dataset import PreparedDataset
from covseg.data.prepare import prepare
from covseg.data.synthetic import make_phantom, write_synthetic_dataset
from covseg.errors import CovsegError
from covseg.evaluation.cases import LabelledCase, open_labelled
from covseg.evaluation.evaluate import score_cases, score_variants
from covseg.evaluation.robustness import VARIANTS, crop_box, crop_lungs, variant_case, zoom_out
from covseg.inference.predict import predict_probabilities
from covseg.inference.segmenter import Segmenter

GEOMETRIC = ("crop_lungs", "zoom_out")
INTENSITY = ("window", "gamma_0.7", "gamma_1.4", "clahe")


def _phantom(kind: str):
    """Odd-sized ``(3, 33, 47)`` slices (HU int16 or 8-bit uint8), infection and lung truth."""
    hu, lung, inf = (a.transpose(2, 1, 0) for a in make_phantom(1, (47, 33, 3)))
    if kind == "uint8":
        raw = np.round((np.clip(hu, -1250, 250) + 1250) / 1500 * 255).astype(np.uint8)
        return raw, inf > 0, lung > 0, "uint8"
    return hu.astype(np.int16), inf > 0, lung > 0, "hu"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=(0, 2))), np.flatnonzero(mask.any(axis=(0, 1)))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def test_variants_keep_size_dtype_and_range_and_are_deterministic():
    for kind in ("hu", "uint8"):
        raw, inf, lung, rule = _phantom(kind)
        before = raw.copy()
        for name, variant in VARIANTS.items():
            out = variant(raw, inf, lung, rule)
            again = variant(raw, inf, lung, rule)
            assert out.raw.shape == out.truth.shape == out.lung.shape == raw.shape, name
            assert out.truth.dtype == out.lung.dtype == np.bool_, name
            np.testing.assert_array_equal(out.raw, again.raw)
            np.testing.assert_array_equal(out.truth, again.truth)
            if kind == "hu" and name in INTENSITY:
                # the HU scan as an 8-bit picture: the model reads it with its 8-bit rule
                assert out.raw.dtype == np.uint8, name
            else:
                assert out.raw.dtype == raw.dtype, name
            if name in GEOMETRIC:  # resampling stays within the input's values (air included)
                assert raw.min() <= out.raw.min() and out.raw.max() <= raw.max(), name
            if name in INTENSITY:  # no geometry change: the truth is the input's
                assert out.truth is inf and out.lung is lung, name
                assert out.pixel_scale == (1.0, 1.0)
        np.testing.assert_array_equal(raw, before)  # the input is never written to


@pytest.mark.parametrize("name", [*GEOMETRIC, *INTENSITY[:3]])
@pytest.mark.parametrize("rule", ["hu", "uint8"])
def test_an_image_that_is_its_mask_stays_its_mask(name, rule):
    # the lungs as both the image and the truth: after the variant, thresholding the image
    # halfway must give back the transformed truth up to resampling at the border
    _, _, lung, _ = _phantom("hu")
    if rule == "hu":
        raw = np.where(lung, 0, -1000).astype(np.int16)
    else:
        raw = (lung * 255).astype(np.uint8)
    out = VARIANTS[name](raw, lung, lung, rule)
    lo, hi = float(out.raw.min()), float(out.raw.max())
    assert hi > lo
    recovered = out.raw > (lo + hi) / 2
    assert _iou(recovered, out.truth) > 0.9, name
    if name in GEOMETRIC:  # and the geometry did change (the check would catch a shift)
        assert _iou(out.truth, lung) < 0.8


def test_crop_box_holds_the_lungs_with_margin_in_the_slice_aspect():
    mask = np.zeros((2, 60, 80), dtype=bool)
    mask[0, 20:30, 10:50] = True
    mask[1, 25:40, 30:60] = True  # the box is over all slices of a case
    r0, r1, c0, c1 = crop_box(mask, margin=0.1)
    assert 0 <= r0 <= 20 - 6 and r1 >= 40 + 6 and r1 <= 60
    assert 0 <= c0 <= 10 - 8 and c1 >= 60 + 8 and c1 <= 80
    assert (r1 - r0) / (c1 - c0) == pytest.approx(60 / 80, abs=0.03)  # square pixels kept
    # lungs against the border: the box is shifted inside the slice, still holding them
    edge = np.zeros((1, 60, 80), dtype=bool)
    edge[0, 50:60, 60:80] = True
    r0, r1, c0, c1 = crop_box(edge)
    assert r1 == 60 and c1 == 80 and r0 <= 50 and c0 <= 60
    assert crop_box(np.zeros((1, 60, 80), dtype=bool)) == (0, 60, 0, 80)


def test_crop_lungs_zooms_in_on_the_lungs_and_scales_spacing():
    raw, inf, lung, rule = _phantom("hu")
    out = crop_lungs(raw, inf, lung, rule)
    sr, sc = out.pixel_scale
    assert 0.5 < sr < 1 and sr == pytest.approx(sc, abs=0.05)
    # the truth grows by the zoom, and the lungs now fill more of the slice
    assert inf.sum() / sr / sc == pytest.approx(out.truth.sum(), rel=0.1)
    assert out.lung.mean() > lung.mean() * 1.3
    assert out.lung[:, 0].sum() == 0 and out.lung[:, -1].sum() == 0  # the margin is kept
    # without lung truth: the derived lungs with the infection give a similar box
    derived = crop_lungs(raw, inf, None, rule)
    assert derived.lung is None
    assert derived.pixel_scale == pytest.approx(out.pixel_scale, abs=0.1)
    # a case through the variant: spacing in mm per transformed pixel
    case = LabelledCase("c", "volume", inf, (5.0, 0.8, 0.7), raw=raw, lung=lung)
    vcase = variant_case(case, "crop_lungs", rule)
    assert vcase.spacing == pytest.approx((5.0, 0.8 * sr, 0.7 * sc))
    np.testing.assert_array_equal(vcase.raw, out.raw)
    assert case.raw is raw and variant_case(case, "plain", rule) is case


def test_crop_lungs_crops_each_picture_of_a_slice_case_to_its_own_lungs():
    # two 2-D pictures of one patient, lungs in opposite corners: one box each, not their union
    raw = np.zeros((2, 64, 64), dtype=np.uint8)
    lung = np.zeros((2, 64, 64), dtype=bool)
    lung[0, 4:20, 4:20] = True
    lung[1, 40:60, 40:60] = True
    raw[lung] = 200
    case = LabelledCase("p", "slice", lung.copy(), None, raw=raw, lung=lung)
    vcase = variant_case(case, "crop_lungs", "uint8")
    assert vcase.lung.mean(axis=(1, 2)).min() > 0.3  # was 0.06 and 0.10: each cropped to its lungs
    np.testing.assert_array_equal(vcase.truth, vcase.lung)
    volume = variant_case(LabelledCase("v", "volume", lung.copy(), None, raw=raw, lung=lung),
                          "crop_lungs", "uint8")  # fmt: skip
    assert volume.lung.mean(axis=(1, 2)).max() < 0.15  # a volume: one box over all its slices


@pytest.mark.parametrize("kind", ["hu", "uint8"])
def test_zoom_out_keeps_the_whole_truth_inside_a_frame_of_air(kind):
    raw, inf, lung, rule = _phantom(kind)
    out = zoom_out(raw, inf, lung, rule, factor=0.6)
    h, w = raw.shape[1:]
    sh, sw = round(0.6 * h), round(0.6 * w)
    top, left = (h - sh) // 2, (w - sw) // 2
    frame = np.ones((h, w), dtype=bool)
    frame[top : top + sh, left : left + sw] = False
    air = -1024 if kind == "hu" else raw.min(axis=(1, 2))[:, None]
    assert (out.raw[:, frame] == air).all()
    assert not out.truth[:, frame].any() and not out.lung[:, frame].any()
    # all of the lungs are still there, at 0.6 x 0.6 of their area, around the same centre
    assert out.lung.sum() == pytest.approx(0.36 * lung.sum(), rel=0.1)
    before, after = _bbox(lung), _bbox(out.lung)
    for k, offset in ((0, top), (2, left)):  # rows, then columns
        lo, hi = before[k : k + 2]
        assert after[k + 1] - after[k] == pytest.approx(0.6 * (hi - lo), abs=1.5)
        assert sum(after[k : k + 2]) / 2 == pytest.approx(offset + 0.3 * (lo + hi), abs=1.5)
    assert out.pixel_scale == (h / sh, w / sw)
    with pytest.raises(ValueError, match="factor"):
        zoom_out(raw, inf, lung, rule, factor=1.5)


def test_prepared_slices_stay_prepared_slices():
    raw, inf, lung, _ = _phantom("uint8")
    images01 = (raw / 255.0).astype(np.float32)
    case = LabelledCase("p", "slice", inf, None, images01=images01, lung=lung)
    for name in ROBUSTNESS_VARIANTS[1:]:
        vcase = variant_case(case, name, "unit")
        assert vcase.raw is None and vcase.images01.dtype == np.float32, name
        assert vcase.images01.min() >= 0 and vcase.images01.max() <= 1, name
    with pytest.raises(CovsegError, match="unknown robustness variant 'blur'"):
        variant_case(case, "blur", "unit")


@pytest.fixture
def labelled(tmp_path):
    """A tiny checkpoint and a prepared zenodo20 phantom set (one int16 HU, one uint8 volume),
    at a threshold near the untrained model's median probability (non-trivial masks)."""
    path, model = tiny_checkpoint(tmp_path / "ckpt" / "best.safetensors")
    raw = write_synthetic_dataset(tmp_path / "raw", "zenodo20", cases=2, slices=3, size=40)
    ds = PreparedDataset(prepare(raw, tmp_path / "prep", size=32))
    probs = np.concatenate(
        [predict_probabilities(model, ds.load(c)["image"]).infection for c in ds.case_ids]
    )
    thr = float(np.median(probs))
    return path, model, ds, thr


def test_plain_equals_score_cases_and_scores_are_deterministic(labelled, tmp_path):
    path, model, ds, thr = labelled
    meta = read_meta(path)
    meta = meta.replace(postprocessing=meta.postprocessing.replace(threshold=thr))
    seg = Segmenter(model, meta, device="cpu")
    _, originals = open_labelled(ds.root, meta.preprocessing, tmp_path)
    seen = []
    by = score_variants(
        seg, ds, ds.case_ids, originals, ["zoom_out"], on_case=lambda n, c, r, p: seen.append(r)
    )
    assert list(by) == ["plain", "zoom_out"]  # plain always, first
    assert sorted(set(seen)) == ["hu", "uint8"]  # both volumes read as segment reads them
    plain = score_cases(seg, ds, ds.case_ids, originals)
    assert by["plain"].to_record() == plain.to_record()
    assert set(plain.resolution.values()) == {"original"}
    again = score_variants(seg, ds, ds.case_ids, originals, ["zoom_out"])
    assert again["zoom_out"].to_record() == by["zoom_out"].to_record()
    assert by["zoom_out"].n_items == plain.n_items == 6
    assert by["zoom_out"].counts != plain.counts  # the variant did reach the network


def test_evaluate_robustness_cli(labelled, tmp_path, capsys):
    path, _, ds, thr = labelled
    out = tmp_path / "e.json"
    argv = ["evaluate", "--checkpoint", str(path), "--data", str(ds.root), "--device", "cpu"]
    assert main([*argv, "--json", str(out), "--threshold", str(thr), "--robustness"]) == 0
    r = json.loads(out.read_text())
    rob = r["robustness"]
    assert list(rob) == list(ROBUSTNESS_VARIANTS)
    assert rob["plain"]["per_slice_mean"] == r["per_slice_mean"]
    assert rob["plain"]["ratio_to_plain"] == pytest.approx(1.0)
    assert r["per_slice_mean"]["dice"] > 0  # the ratios mean something
    for name, s in rob.items():
        assert s["n_items"] == r["n_items"] == 6, name
        assert {"per_slice_mean", "pooled", "per_volume_mean", "hd95_mm"} <= set(s), name
        ratio = s["per_slice_mean"]["dice"] / r["per_slice_mean"]["dice"]
        assert s["ratio_to_plain"] == pytest.approx(ratio), name
    table = capsys.readouterr().out
    assert "| dice |" in table and "| Variant | Dice (per slice) |" in table
    for name in ROBUSTNESS_VARIANTS:
        assert f"| {name} | " in table
    # an unknown variant: one line, exit 2, before any work and nothing written
    out.unlink()
    assert main([*argv, "--json", str(out), "--variants", "zoom_out,blur"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown robustness variant 'blur'" in err[0], err
    assert "crop_lungs" in err[0] and not out.exists()
