"""`covseg segment --probabilities`: the calibrated infection probability as uint8, written only
when asked, aligned with the masks, exact at the shipped threshold, and part of the settings a
resumed batch compares."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from covseg.checkpoint import load_checkpoint
from covseg.cli import main
from covseg.cohort.batch import segment_pictures
from covseg.config import Calibration
from covseg.data.geometry import canonical_view
from covseg.data.io import read_image
from covseg.data.synthetic import make_phantom
from covseg.inference.probability import (
    probability_level,
    quantize_probability,
    write_probability,
)
from covseg.inference.segmenter import Segmenter

pytestmark = pytest.mark.usefixtures("one_thread")


def _nifti(path: Path, seed: int = 3, shape=(40, 36, 5)) -> Path:
    # An oblique-free but non-trivial orientation (x flipped), as a scanner's NIfTI may have.
    nib.save(nib.Nifti1Image(make_phantom(seed, shape)[0], np.diag([-0.8, 0.7, 2.5, 1.0])), path)
    return path


def _png(path: Path, seed: int = 4, side: int = 40) -> Path:
    hu = make_phantom(seed, (side, side, 1))[0][:, :, 0].T
    PILImage.fromarray((np.clip((hu + 1250) / 1500, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


def _segment(src: Path, out: Path, checkpoint: Path, *flags: str) -> int:
    return main(["segment", str(src), "--out", str(out), "--checkpoint", str(checkpoint),
                 "--device", "cpu", *flags])  # fmt: skip


def _calibrated(checkpoint: Path, **post) -> tuple[Segmenter, Segmenter]:
    """The tiny model without and with a (made-up, non-identity) calibration."""
    model, meta = load_checkpoint(checkpoint)
    meta = meta.replace(postprocessing=meta.postprocessing.replace(**post))
    cal = meta.replace(calibration=Calibration(infection_slope=0.6, infection_offset=-0.4))
    return Segmenter(model, meta, device="cpu"), Segmenter(model, cal, device="cpu")


def _calibrated_probabilities(seg: Segmenter, image) -> np.ndarray:
    """The canonical ``(N, H, W)`` infection probabilities the segmenter thresholds."""
    slices = canonical_view(image.array, image)
    rule = seg.intensity_rule(slices, image.path)
    return np.concatenate([p.infection for _, p in seg.probabilities(slices, rule=rule)])


# ----------------------------------------------------------------------------- quantisation
def test_quantisation_rounds_and_is_exact_at_the_threshold():
    p = np.array([0.0, 0.2, 0.4999, 0.49805, 0.5, 0.71, 1.0], dtype=np.float32)
    q = quantize_probability(p, 0.5)
    assert q.dtype == np.uint8
    assert list(q) == [0, 51, 127, 127, 128, 181, 255]  # 0.49805 * 255 = 127.0: stays 127
    rng = np.random.default_rng(0)
    for t in (0.5, 0.37, 0.42, 0.9, 0.001):
        p = rng.random(20_000, dtype=np.float32)
        p[:50] = t + rng.uniform(-1 / 255, 1 / 255, 50)  # near the threshold on purpose
        q = quantize_probability(p, t)
        assert np.array_equal(q >= probability_level(t), p >= t)
        assert np.abs(q / 255 - np.clip(p, 0, 1)).max() <= 1 / 255 + 1e-7
        # Everywhere but within half a level of the threshold, plain rounding.
        far = np.abs(p - t) > 0.5 / 255
        rounded = np.floor(np.clip(p[far], 0, 1) * 255 + 0.5).astype(np.uint8)
        assert np.array_equal(q[far], rounded)


def test_probability_png_keeps_levels_unscaled(tmp_path):
    image = read_image(_png(tmp_path / "pic.png"))
    q = np.zeros(image.array.shape, np.uint8)
    q[3, 4] = 1  # a binary mask's PNG would store this as 255
    write_probability(q, image, tmp_path / "p.png")
    assert np.array_equal(np.asarray(PILImage.open(tmp_path / "p.png")), q)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------- the array core
def test_probability_is_the_calibrated_one_the_threshold_applies_to(checkpoint, tmp_path):
    image = read_image(_nifti(tmp_path / "scan.nii.gz"))
    plain, calibrated = _calibrated(checkpoint)
    without = plain.predict_image(image)
    assert without.probability is None
    for seg in (plain, calibrated):
        result = seg.predict_image(image, probability=True)
        assert result.probability.shape == image.array.shape
        assert result.probability.dtype == np.uint8
        p = _calibrated_probabilities(seg, image)
        expected = quantize_probability(p, seg.post.threshold)
        assert np.array_equal(canonical_view(result.probability, image), expected)
        assert np.array_equal(result.infection, without.infection) or seg is calibrated
    # The calibration changed what is stored (the calibrated probability, not the raw one).
    raw = plain.predict_image(image, probability=True).probability
    cal = calibrated.predict_image(image, probability=True).probability
    assert not np.array_equal(raw, cal)


def test_at_the_shipped_threshold_the_probability_gives_the_mask(checkpoint, tmp_path):
    """Without the lung restriction and the component removal, ``q >= level`` is the mask;
    with them (the tiny checkpoint: min_component 2, margin 2 px) the mask lies inside it and
    only those two steps remove pixels."""
    image = read_image(_nifti(tmp_path / "scan.nii.gz"))
    bare, _ = _calibrated(checkpoint, min_component=0, lung_margin_px=None)
    result = bare.predict_image(image, probability=True)
    level = probability_level(bare.post.threshold)
    assert result.infection.any()
    assert np.array_equal(result.probability >= level, result.infection > 0)

    shipped = Segmenter.from_checkpoint(checkpoint, device="cpu")
    assert shipped.post.min_component > 0 and shipped.post.lung_margin_px is not None
    result = shipped.predict_image(image, probability=True)
    above = result.probability >= probability_level(shipped.post.threshold)
    inf = result.infection > 0
    assert not (inf & ~above).any()  # every infection voxel is above the threshold
    assert (above & ~inf).any()  # and post-processing removed some above it


def test_batched_pictures_give_the_same_probability(checkpoint, tmp_path):
    seg = Segmenter.from_checkpoint(checkpoint, device="cpu")
    images = [read_image(_png(tmp_path / f"p{i}.png", seed=i)) for i in range(3)]
    batched = segment_pictures(seg, images, probability=True)
    for image, result in zip(images, batched, strict=True):
        alone = seg.predict_image(image, probability=True)
        assert np.array_equal(result.probability, alone.probability)
    assert all(r.probability is None for r in segment_pictures(seg, images))


# ------------------------------------------------------------------------------------ files
def test_flag_writes_the_probability_with_the_masks_geometry(checkpoint, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _nifti(src / "scan.nii.gz")
    _png(src / "pic.png")
    out = tmp_path / "out"
    assert _segment(src, out, checkpoint) == 0
    assert not list(out.glob("*_prob*"))  # opt-in
    assert _segment(src, out, checkpoint, "--probabilities") == 0
    prob = nib.load(out / "scan_infection_prob.nii.gz")
    mask = nib.load(out / "scan_infection.nii.gz")
    assert prob.shape == mask.shape and np.allclose(prob.affine, mask.affine)
    assert prob.get_data_dtype() == np.uint8
    q = np.asarray(prob.dataobj)
    inf = np.asarray(mask.dataobj) > 0
    report = json.loads((out / "scan_report.json").read_text())
    level = probability_level(report["threshold"])
    assert inf.any() and (q[inf] >= level).all()
    assert report["settings"]["probability"] is True
    assert "scan_infection_prob.nii.gz" in report["settings"]["files"]
    pic = np.asarray(PILImage.open(out / "pic_infection_prob.png"))
    pic_inf = np.asarray(PILImage.open(out / "pic_infection.png")) > 0
    assert pic.shape == pic_inf.shape and pic.dtype == np.uint8
    alone = Segmenter.from_checkpoint(checkpoint, device="cpu")
    expected = alone.predict_image(read_image(src / "pic.png"), probability=True).probability
    assert np.array_equal(pic, expected)  # the levels themselves (0..255), never rescaled
    assert pic_inf.any() and (pic[pic_inf] >= level).all()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_resume_tells_runs_with_and_without_the_probability_apart(checkpoint, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _nifti(src / "scan.nii.gz")
    out = tmp_path / "out"
    report = out / "scan_report.json"
    assert _segment(src, out, checkpoint, "--probabilities") == 0
    first = report.stat().st_mtime_ns
    assert _segment(src, out, checkpoint, "--probabilities") == 0  # same settings: skipped
    assert report.stat().st_mtime_ns == first
    assert _segment(src, out, checkpoint) == 0  # without: segmented again, the old file gone
    assert report.stat().st_mtime_ns != first
    assert not (out / "scan_infection_prob.nii.gz").exists()
    assert json.loads(report.read_text())["settings"]["probability"] is False
    second = report.stat().st_mtime_ns
    assert _segment(src, out, checkpoint) == 0
    assert report.stat().st_mtime_ns == second
    (out / "scan_report.json").unlink()
    assert _segment(src, out, checkpoint, "--probabilities") == 0
    (out / "scan_infection_prob.nii.gz").unlink()  # a listed file missing: not done
    assert _segment(src, out, checkpoint, "--probabilities") == 0
    assert (out / "scan_infection_prob.nii.gz").is_file()


def test_a_report_from_before_the_flag_counts_as_without_it(checkpoint, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _nifti(src / "scan.nii.gz")
    out = tmp_path / "out"
    assert _segment(src, out, checkpoint) == 0
    report = out / "scan_report.json"
    record = json.loads(report.read_text())
    del record["settings"]["probability"]  # as an earlier covseg wrote it
    report.write_text(json.dumps(record))
    stamp = report.stat().st_mtime_ns
    assert _segment(src, out, checkpoint) == 0
    assert report.stat().st_mtime_ns == stamp
    assert _segment(src, out, checkpoint, "--probabilities") == 0
    assert report.stat().st_mtime_ns != stamp
