"""Training: learning happens, resume is exact, the post-processing search picks the best one."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _train_helpers import FAST, TINY, prepared_phantoms, tiny_checkpoint
from covseg.checkpoint import FORMAT, load_checkpoint
from covseg.data.dataset import PreparedDataset
from covseg.errors import DataError
from covseg.inference.postprocess import remove_small_components
from covseg.studies.crossval import evaluate_test_fold
from covseg.training.loop import train
from covseg.training.selection import Item, select_postprocessing
from covseg.training.state import LOG_COLUMNS


def test_select_threshold_on_a_constructed_case():
    truth = np.zeros((3, 16, 16), bool)
    truth[:, 4:10, 4:10] = True
    probs = np.where(truth, 0.32, 0.22).astype(np.float32)
    probs[2, 0, 0] = 0.27  # one background pixel above 0.25: only 0.30 is perfect everywhere
    items = [Item(lung=None, infection=probs, truth=truth)]  # no lung head: no restriction
    sel = select_postprocessing(items, 16)
    assert sel.postprocessing.threshold == pytest.approx(0.3) and sel.dice == pytest.approx(1.0)
    assert sel.n_slices == 3 and sel.postprocessing.min_component == 0
    # the default 0.5 finds nothing here
    assert select_postprocessing(items, 16, thresholds=[0.5]).dice == pytest.approx(0.0)


def test_min_component_removes_specks_and_keeps_lesions():
    truth = np.zeros((2, 32, 32), bool)
    truth[:, 5:15, 5:15] = True
    probs = truth.astype(np.float32)
    probs[:, 25:27, 25:27] = 0.9  # 4-pixel false-positive speck
    assert remove_small_components(probs >= 0.5, 10)[:, 25, 25].sum() == 0
    items = [Item(lung=None, infection=probs, truth=truth)]
    sel = select_postprocessing(items, 32, thresholds=(0.5,), min_components=(0, 10, 20, 40))
    # 40 would still keep the 100-px lesion; 10 ties first (the smallest size)
    assert sel.postprocessing.min_component == 10 and sel.dice == pytest.approx(1.0)
    assert sel.scores["0.50/0/2"] < 1.0  # the speck costs Dice without a minimum size
    # Over the whole threshold grid, 0.95 also drops the speck (at size 0), but ties go to the
    # threshold nearest 0.5 first, then to the smallest component size.
    sel = select_postprocessing(items, 32, min_components=(0, 10, 20, 40))
    assert sel.scores["0.95/0/2"] == pytest.approx(1.0)
    assert sel.postprocessing.threshold == 0.5 and sel.postprocessing.min_component == 10


def _weights(path):
    return load_file(str(path))


def test_resume_continues_exactly(tmp_path):
    data = prepared_phantoms(tmp_path, cases=3, slices=4, size=32)
    cfg = FAST.replace(epochs=4, schedule="plateau", augment=True, batch_size=4)
    train(TINY, cfg, data, tmp_path / "straight")
    train(TINY, cfg.replace(epochs=2), data, tmp_path / "resumed")
    train(TINY, cfg, data, tmp_path / "resumed", resume=True)
    a, b = (
        _weights(tmp_path / "straight/last.safetensors"),
        _weights(tmp_path / "resumed/last.safetensors"),
    )
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    with open(tmp_path / "resumed/log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4] and tuple(rows[0]) == LOG_COLUMNS


def test_resume_without_a_run_is_an_error(tmp_path):
    data = prepared_phantoms(tmp_path, cases=2, slices=2, size=32)
    with pytest.raises(DataError, match=r"no last_state\.json"):
        train(TINY, FAST, data, tmp_path / "run", resume=True)


@pytest.mark.slow
def test_short_training_learns_the_phantoms(tmp_path):
    data = prepared_phantoms(tmp_path, cases=6, slices=8, size=64)
    cfg = FAST.replace(epochs=20, batch_size=4, lr=5e-3, fold=0, folds=3)
    run = train(TINY, cfg, data, tmp_path / "run")
    for name in (
        "best.safetensors",
        "best.json",
        "last.json",
        "last_state.json",
        "log.csv",
        "curves.png",
    ):
        assert (run / name).exists(), name
    meta = json.loads((run / "best.json").read_text())
    post = meta["postprocessing"]
    assert meta["format"] == FORMAT and 0.05 <= post["threshold"] <= 0.95
    assert post["min_component"] in (0, 10, 20, 40) and post["lung_margin_px"] == 2
    assert meta["preprocessing"]["size"] == 64 and meta["data"]["test_cases"]
    # validation slices (the paper's protocol), with the chosen post-processing
    assert meta["metrics"]["val_dice_postprocessed"] > 0.8, meta["metrics"]
    # the last weights get their own post-processing, chosen the same way
    last = json.loads((run / "last.json").read_text())
    assert "val_dice_postprocessed" in last["metrics"] and last["postprocessing_source"]
    # the held-out test patients, with the run's own threshold: learned, if less well
    result = evaluate_test_fold(run, PreparedDataset(data), device="cpu")
    assert result["per_slice_mean"]["dice"] > 0.2, result["per_slice_mean"]
    model, _ = load_checkpoint(run / "best.safetensors")
    assert not model.training


def test_training_validates_with_its_framing_and_records_it(tmp_path, monkeypatch):
    """`train --framing lungs`: the validation Dice and the post-processing search see the
    predictions `segment` will make, and the checkpoints tell `segment` to frame so."""
    import covseg.training.validation as validation

    seen: list[str] = []
    real = validation.framed_probabilities

    def spy(predict, images, size, framing="full"):
        seen.append(framing)
        return real(predict, images, size, framing)

    monkeypatch.setattr(validation, "framed_probabilities", spy)
    data = prepared_phantoms(tmp_path, cases=2, slices=3, size=32)
    run = train(TINY, FAST.replace(epochs=1, framing="lungs"), data, tmp_path / "run")
    for name in ("best", "last"):
        meta = json.loads((run / f"{name}.json").read_text())
        assert meta["preprocessing"]["framing"] == "lungs" and meta["train_config"]["framing"]
    # one validation per epoch, one post-processing search per checkpoint
    assert seen == ["lungs"] * 3
    with pytest.raises(ValueError, match="framing"):
        FAST.replace(framing="zoom")


def test_choosing_the_post_processing_again_with_another_framing(tmp_path):
    """A run trained (and validated) whole-slice, its post-processing chosen again with lung
    framing, ends where a run validated with lung framing from the start does: same weights,
    same validation slices, same choice; only the JSON changes."""
    from covseg.training.validation import choose_postprocessing

    data = prepared_phantoms(tmp_path, cases=3, slices=4, size=32)
    cfg = FAST.replace(epochs=1, min_component_candidates=(0, 5))
    full = train(TINY, cfg, data, tmp_path / "full")
    lungs = train(TINY, cfg.replace(framing="lungs"), data, tmp_path / "lungs")
    weights = (full / "last.safetensors").read_bytes()
    meta = choose_postprocessing(full / "last.safetensors", data, framing="lungs")
    expect = json.loads((lungs / "last.json").read_text())
    got = json.loads((full / "last.json").read_text())
    assert meta.preprocessing.framing == got["preprocessing"]["framing"] == "lungs"
    assert got["postprocessing"] == expect["postprocessing"]
    assert got["metrics"]["val_dice_postprocessed"] == expect["metrics"]["val_dice_postprocessed"]
    assert (full / "last.safetensors").read_bytes() == weights
    # a checkpoint that was not trained by covseg, or data without its cases: one error
    with pytest.raises(DataError, match="no recorded training run"):
        choose_postprocessing(tiny_checkpoint(tmp_path / "tiny.safetensors")[0], data)
    other = prepared_phantoms(tmp_path / "other", cases=2, slices=2, size=32)
    with pytest.raises(DataError, match="not in the data"):
        choose_postprocessing(full / "best.safetensors", other)


def test_extra_data_is_training_only_and_weighted(tmp_path):
    data = prepared_phantoms(tmp_path / "a", cases=2, slices=3, size=32)
    extra = prepared_phantoms(tmp_path / "b", cases=1, slices=3, size=32)
    run = train(
        TINY, FAST.replace(epochs=1, pseudo_weight=0.5), data, tmp_path / "run", extra_data=extra
    )
    meta = json.loads((run / "best.json").read_text())
    ids = set(meta["data"]["train_cases"]) | set(meta["data"]["test_cases"])
    assert ids == set(PreparedDataset(data).case_ids)  # the extra cases never enter val/test
