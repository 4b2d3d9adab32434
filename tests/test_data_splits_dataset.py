"""Patient-level folds, validation split, the prepared-dataset reader, augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from covseg.data.augment import AugmentConfig, make_augment
from covseg.data.dataset import PreparedDataset, SliceDataset
from covseg.data.splits import load_or_make_folds, make_folds, split_validation
from covseg.errors import DataError


def _prepared(root, n_cases=5, n_slices=3, size=32):
    (root / "cases").mkdir(parents=True)
    cases = []
    rng = np.random.default_rng(0)
    for i in range(n_cases):
        cid = f"p{i}"
        lung = np.zeros((n_slices, size, size), np.uint8)
        lung[:, 8:24, 4:28] = 1
        inf = np.zeros_like(lung)
        inf[:, 10:14, 6:12] = 1
        np.savez_compressed(
            root / "cases" / f"{cid}.npz",
            image=rng.random(lung.shape).astype(np.float16),
            lung=lung,
            infection=inf,
        )
        cases.append({"id": cid, "file": f"cases/{cid}.npz", "n_slices": n_slices})
    (root / "manifest.json").write_text(json.dumps({"format": 1, "cases": cases}))
    return PreparedDataset(root)


def test_folds_deterministic_balanced_disjoint():
    ids = [f"c{i}" for i in range(11)]
    folds = make_folds(ids, 5, seed=3)
    assert folds == make_folds(list(reversed(ids)), 5, seed=3)
    assert folds != make_folds(ids, 5, seed=4)
    tests = [set(f["test"]) for f in folds]
    assert sorted(len(t) for t in tests) == [2, 2, 2, 2, 3]
    assert set().union(*tests) == set(ids) and sum(map(len, tests)) == len(ids)
    for f in folds:
        assert not set(f["train"]) & set(f["test"]) and set(f["train"]) | set(f["test"]) == set(ids)
    with pytest.raises(DataError):
        make_folds(["a"], 2)


def test_splits_file_is_reused_and_checked(tmp_path):
    path = tmp_path / "splits.json"
    a = load_or_make_folds(path, ["a", "b", "c", "d"], 2, 0)
    assert path.exists() and load_or_make_folds(path, ["d", "c", "b", "a"], 2, 99) == a
    with pytest.raises(DataError, match=r"splits\.json"):
        load_or_make_folds(path, ["a", "b", "c"], 2, 0)


def test_validation_never_uses_test_cases(tmp_path):
    data = _prepared(tmp_path / "P")
    fold = make_folds(data.case_ids, 5)[0]
    train, val = split_validation(data, fold["train"], fraction=0.12, by="slices")
    assert len(val) == round(0.12 * 12) and len(train) + len(val) == 12
    assert {c for c, _ in train + val} <= set(fold["train"])
    tr, va = split_validation(data, fold["train"], by="patients")
    assert not {c for c, _ in tr} & {c for c, _ in va}
    tr1, va1 = split_validation(data, ["p0"], by="patients")  # falls back to slices
    assert {c for c, _ in tr1 + va1} == {"p0"} and len(va1) == 1


def test_slice_dataset_samples(tmp_path):
    data = _prepared(tmp_path / "P")
    ds = SliceDataset(data, data.items(["p1", "p2"]))
    assert len(ds) == 6
    s = ds[4]
    assert s["case"] == "p2" and s["index"] == 1
    for k in ("image", "lung", "infection"):
        assert s[k].shape == (1, 32, 32) and s[k].dtype == torch.float32


def test_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="missing"):
        PreparedDataset(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 99, "cases": []}))
    with pytest.raises(DataError, match="newer"):
        PreparedDataset(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        PreparedDataset(tmp_path)


def test_augment_keeps_masks_binary_and_aligned(tmp_path):
    data = _prepared(tmp_path / "P")
    aug = make_augment(AugmentConfig(prob=1.0), seed=0)
    assert make_augment(None) is None and make_augment(AugmentConfig(prob=0)) is None
    ds = SliceDataset(data, data.items(["p0"]), transform=aug)
    s = ds[0]
    for k in ("lung", "infection"):
        assert s[k].shape == (1, 32, 32) and set(torch.unique(s[k]).tolist()) <= {0.0, 1.0}
    assert float(s["image"].min()) >= 0 and float(s["image"].max()) <= 1
    assert float((s["infection"] * (1 - s["lung"])).sum()) == 0  # same geometry for both masks
    assert type(s["image"]) is torch.Tensor
