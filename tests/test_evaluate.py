"""Evaluation at the ground truth's original resolution, on raw and prepared folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from _train_helpers import TINY
from covseg.checkpoint import save_checkpoint
from covseg.cli import main
from covseg.config import to_dict
from covseg.data.io import natural_key
from covseg.data.prepare import prepare
from covseg.data.preprocess import resize_back
from covseg.data.synthetic import write_synthetic_dataset
from covseg.evaluate import evaluate
from covseg.inference import predict_slices
from covseg.metrics import ConfusionAccumulator
from covseg.models import build_model

KEYS = {"dice", "iou", "ppv", "sensitivity", "specificity"}


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    meta = {"model_config": to_dict(TINY), "preprocessing": {"size": 32, "intensity": "auto"}}
    return save_checkpoint(tmp_path / "ckpt" / "best.safetensors", model, meta), model


def test_predict_slices_restores_mode_and_flips(ckpt):
    _, model = ckpt
    model.train()
    x = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    p = predict_slices(model, x, batch_size=2)
    assert p.shape == (3, 32, 32) and p.dtype == np.float32 and model.training
    assert ((p >= 0) & (p <= 1)).all()
    p2 = predict_slices(model, x[0], tta=True)
    assert p2.shape == (32, 32)


def test_raw_slices_folder_at_original_resolution(tmp_path, ckpt):
    path, model = ckpt
    raw = write_synthetic_dataset(tmp_path / "raw", "slices", cases=2, slices=3, size=48)
    # a threshold near the untrained model's median probability gives non-trivial masks
    imgs = sorted((raw / "images").iterdir(), key=lambda p: natural_key(p.name))
    prepared = prepare(raw, tmp_path / "prep", size=32)
    from covseg.data.dataset import PreparedDataset

    ds = PreparedDataset(prepared)
    probs = np.concatenate([predict_slices(model, ds.load(c)["image"]) for c in ds.case_ids])
    thr = float(np.median(probs))
    result = evaluate(path, raw, tmp_path / "m.json", threshold=thr, device="cpu")
    # by hand: predictions resized back to 48 x 48, against the original PNG masks
    acc = ConfusionAccumulator()
    for cid in ds.case_ids:
        p = resize_back(predict_slices(model, ds.load(cid)["image"]), (48, 48), mask=False)
        truth = np.asarray(PILImage.open(raw / "masks" / f"{cid}.png")) > 0
        acc.add(p >= thr, truth[None], case=cid)
    assert result["n_items"] == len(imgs) == 6
    assert result["per_slice_mean"] == pytest.approx(acc.aggregate("per_slice_mean"))
    assert result["pooled"] == pytest.approx(acc.aggregate("pooled"))
    assert acc.counts[0].sum() == 48 * 48  # counted at the original resolution
    written = json.loads((tmp_path / "m.json").read_text())
    assert set(written) == {"n_items", "threshold", "per_slice_mean", "pooled"}
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
        "per_volume_mean",
        "hd95_mm",
        "nsd_3mm",
    }
    assert r["n_items"] == 8 and r["threshold"] == 0.5
    assert "| dice |" in capsys.readouterr().out
    # the same data already prepared: metrics still at the original 40 x 40 (source in manifest)
    prepared = prepare(raw, tmp_path / "prep", size=32)
    r2 = evaluate(path, prepared, device="cpu")
    assert r2["per_slice_mean"] == pytest.approx(r["per_slice_mean"])


def test_pretrained_missing_and_bad_checkpoint_exit_2(tmp_path, capsys):
    import covseg.checkpoint as ck

    if (
        ck.__file__
        and (__import__("pathlib").Path(ck.__file__).parent / "pretrained" / "model.json").exists()
    ):
        pytest.skip("a pretrained model is shipped")
    assert main(["evaluate", "--checkpoint", "pretrained", "--data", str(tmp_path)]) == 2
    assert "no pretrained model is shipped" in capsys.readouterr().err
