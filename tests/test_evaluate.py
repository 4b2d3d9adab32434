"""Evaluation at the ground truth's original resolution, on raw and prepared folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image as PILImage

from _train_helpers import tiny_checkpoint
from covseg.checkpoint import read_meta
from covseg.cli import main
from covseg.data.dataset import PreparedDataset
from covseg.data.io import read_image
from covseg.data.io.folders import natural_key
from covseg.data.prepare import prepare
from covseg.data.synthetic import write_synthetic_dataset
from covseg.evaluation.evaluate import evaluate
from covseg.evaluation.metrics import ConfusionAccumulator, by_lesion_size
from covseg.inference.predict import predict_probabilities
from covseg.inference.segmenter import Segmenter

KEYS = {"dice", "iou", "ppv", "sensitivity", "specificity"}


@pytest.fixture
def ckpt(tmp_path):
    return tiny_checkpoint(tmp_path / "ckpt" / "best.safetensors")


def test_predict_probabilities_restores_mode_and_flips(ckpt):
    _, model = ckpt
    model.train()
    x = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    p = predict_probabilities(model, x, batch_size=2)
    assert p.infection.shape == p.lung.shape == (3, 32, 32) and model.training
    assert p.infection.dtype == np.float32
    assert ((p.infection >= 0) & (p.infection <= 1)).all()
    # TTA averages with the predictions of the flipped slices, flipped back
    p2 = predict_probabilities(model, x[:1], tta=True)
    flipped = predict_probabilities(model, x[:1, :, ::-1].copy()).infection[:, :, ::-1]
    assert p2.infection.shape == (1, 32, 32)
    np.testing.assert_allclose(p2.infection, 0.5 * (p.infection[:1] + flipped), atol=1e-5)
    with pytest.raises(ValueError, match="N, S, S"):  # one slice is (1, S, S), no squeezing
        predict_probabilities(model, x[0])


def test_raw_slices_folder_at_original_resolution(tmp_path, ckpt):
    path, model = ckpt
    raw = write_synthetic_dataset(tmp_path / "raw", "slices", cases=2, slices=3, size=48)
    # a threshold near the untrained model's median probability gives non-trivial masks
    imgs = sorted((raw / "images").iterdir(), key=lambda p: natural_key(p.name))
    prepared = prepare(raw, tmp_path / "prep", size=32)
    ds = PreparedDataset(prepared)
    probs = np.concatenate(
        [predict_probabilities(model, ds.load(c)["image"]).infection for c in ds.case_ids]
    )
    thr = float(np.median(probs))
    result = evaluate(path, raw, tmp_path / "m.json", threshold=thr, device="cpu")
    # by hand: each original 48 x 48 PNG segmented as `covseg segment` does (the checkpoint's
    # pre- and post-processing, lung restriction included), against the original PNG masks
    meta = read_meta(path)
    meta = meta.replace(postprocessing=meta.postprocessing.replace(threshold=thr))
    seg = Segmenter(model, meta, device="cpu")
    acc = ConfusionAccumulator()
    for cid in ds.case_ids:
        pred = seg.predict_image(read_image(raw / "images" / f"{cid}.png")).infection
        truth = np.asarray(PILImage.open(raw / "masks" / f"{cid}.png")) > 0
        assert pred.shape == truth.shape == (48, 48)
        acc.add(pred[None].astype(bool), truth[None], case=cid)
    assert result["n_items"] == len(imgs) == 6
    assert result["threshold"] == pytest.approx(thr)
    assert result["per_slice_mean"] == pytest.approx(acc.aggregate("per_slice_mean"))
    assert result["pooled"] == pytest.approx(acc.aggregate("pooled"))
    assert acc.counts[0].sum() == 48 * 48  # counted at the original resolution
    tp_fp = np.asarray(acc.counts)[:, :2].sum()
    assert 0 < tp_fp < 6 * 48 * 48  # non-trivial masks: the comparison means something
    written = json.loads((tmp_path / "m.json").read_text())
    keys = {"n_items", "threshold", "per_slice_mean", "pooled", "by_lesion_size", "burden"}
    assert set(written) == keys
    # the burden error of the same masks, by hand: per case (predicted - true) / true pixels
    c = np.asarray(acc.counts)
    pred_px, true_px = c[:, 0] + c[:, 1], c[:, 0] + c[:, 2]
    rel = [(p - t) / t for p, t in zip(pred_px, true_px, strict=True) if t > 0]
    assert written["burden"]["n_cases"] == 6
    assert written["burden"]["median_abs_relative_error"] == pytest.approx(np.median(np.abs(rel)))
    # NaN (no truth pixel to find) compares equal through JSON
    assert json.dumps(written["by_lesion_size"]) == json.dumps(by_lesion_size(np.array(acc.counts)))
    assert set(written["per_slice_mean"]) == KEYS


def test_zenodo_volumes_and_cli(tmp_path, ckpt, capsys):
    path, _ = ckpt
    raw = write_synthetic_dataset(tmp_path / "raw", "zenodo20", cases=2, slices=4, size=40)
    out = tmp_path / "e.json"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(path),
                "--data",
                str(raw),
                "--json",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert set(r) == {
        "n_items",
        "threshold",
        "per_slice_mean",
        "pooled",
        "by_lesion_size",
        "per_volume_mean",
        "hd95_mm",
        "nsd_3mm",
        "burden",
    }
    assert r["n_items"] == 8 and r["threshold"] == 0.5
    assert r["burden"]["n_cases"] == 2  # two volumes: one burden per patient
    printed = capsys.readouterr().out
    assert "| dice |" in printed and "Burden (per case)" in printed
    # the same data already prepared: metrics still at the original 40 x 40 (source in manifest)
    prepared = prepare(raw, tmp_path / "prep", size=32)
    r2 = evaluate(path, prepared, device="cpu")
    assert r2["per_slice_mean"] == pytest.approx(r["per_slice_mean"])


def test_pretrained_missing_and_bad_checkpoint_exit_2(tmp_path, capsys, monkeypatch, ckpt):
    import covseg.checkpoint as ck

    raw = write_synthetic_dataset(tmp_path / "raw", "slices", cases=1, slices=2, size=32)
    # an install without the shipped model: pretrained_path() looks next to checkpoint.py
    with monkeypatch.context() as m:
        m.setattr(ck, "__file__", str(tmp_path / "install" / "checkpoint.py"))
        assert main(["evaluate", "--checkpoint", "pretrained", "--data", str(raw)]) == 2
        assert "no pretrained model is shipped" in capsys.readouterr().err
    # a checkpoint whose weights were modified, and one that does not exist
    path, _ = ckpt
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    for bad, needle in [(path, "sha256"), (tmp_path / "nope.safetensors", "missing")]:
        out = tmp_path / "e.json"
        argv = ["evaluate", "--checkpoint", str(bad), "--data", str(raw), "--json", str(out)]
        assert main([*argv, "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not out.exists()
