"""`covseg report A B ...`: the comparison table and its paired test against hand computations;
`cv` over slices whose case names need patient grouping (the zenodo10-expert layout)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from _train_helpers import FAST, TINY
from covseg.cli import main
from covseg.data.dataset import PreparedDataset
from covseg.data.preprocess import normalize_intensity
from covseg.data.synthetic import make_phantom
from covseg.errors import DataError
from covseg.studies.compare import compare_runs, paired_test
from covseg.studies.crossval import run_cv


def _dice_counts(dice: float, n: int = 1000) -> list[int]:
    """(tp, fp, fn, tn) of one slice whose Dice is ``dice`` (tp = n, fp = fn)."""
    fp = round(n * (1 - dice) / dice / 2)
    return [n, fp, fp, 100_000]


def _cv_folder(root: Path, dice: dict[tuple[int, int], float], test=(["a"], ["b"], ["c"])) -> Path:
    """A fake `covseg cv` folder: one one-slice test case per run, with the given Dice."""
    root.mkdir(parents=True)
    folds = [{"fold": k, "train": [], "test": list(t)} for k, t in enumerate(test)]
    (root / "splits.json").write_text(json.dumps({"seed": 0, "folds": folds}))
    for (f, r), d in dice.items():
        run = root / f"fold{f}_rep{r}"
        run.mkdir()
        record = {
            "postprocessing": {"threshold": 0.5},
            "cases": [test[f][0]],
            "counts": [_dice_counts(d)],
            "kinds": {test[f][0]: "slice"},
        }
        (run / "test_metrics.json").write_text(json.dumps(record))
    return root


def _dice(counts):
    tp, fp, fn, _ = counts
    return 2 * tp / (2 * tp + fp + fn)


def test_paired_test_by_hand():
    # |d| ranks: 0.05 -> 1, 0.1 -> 2, 0.15 -> 3, 0.2 -> 4, 0.3 -> 5; W- = 1 (the one negative).
    # Exact null of n = 5: 32 equally likely sign patterns; P(W- <= 1) = 2/32 (W- = 0 or 1),
    # two-sided p = 2 * 2/32 = 0.125.
    d = [0.1, 0.2, -0.05, 0.3, 0.15]
    out = paired_test(d)
    assert out["n"] == 5 and (out["wins"], out["losses"], out["ties"]) == (4, 1, 0)
    assert out["mean"] == pytest.approx(0.14)
    assert out["std"] == pytest.approx(np.std(d, ddof=1))
    assert out["p"] == pytest.approx(0.125)
    # all five better: the smallest exact p of five pairs, 2/32
    assert paired_test([0.01, 0.02, 0.03, 0.04, 0.05])["p"] == pytest.approx(0.0625)
    # zero differences are dropped from the test (zero_method="wilcox") but counted as ties
    tied = paired_test([0.0, 0.1, 0.2, -0.05, 0.3, 0.15])
    assert tied["ties"] == 1 and tied["p"] == pytest.approx(0.125)
    assert paired_test([0.0, 0.0])["p"] == 1.0
    assert np.isnan(paired_test([])["p"]) and np.isnan(paired_test([0.2])["std"])
    assert paired_test([float("nan"), 0.1])["n"] == 1


def test_comparison_equals_hand_computation(tmp_path):
    ref = {(0, 0): 0.60, (1, 0): 0.70, (2, 0): 0.80, (0, 1): 0.62}
    alt = {(0, 0): 0.65, (1, 0): 0.68, (2, 0): 0.90}  # no (0, 1): only three shared runs
    a = _cv_folder(tmp_path / "ref", ref)
    b = _cv_folder(tmp_path / "alt", alt)
    out = compare_runs([a, b], tmp_path / "cmp", names=["base", "variant"], figure=True)
    d_ref = {u: _dice(_dice_counts(v)) for u, v in ref.items()}
    d_alt = {u: _dice(_dice_counts(v)) for u, v in alt.items()}
    base = out["rows"]["base"]["per_slice_mean"]["dice"]
    # fold 1 of the reference is the mean of its two repeats; mean ± population std over folds
    folds = [np.mean([d_ref[0, 0], d_ref[0, 1]]), d_ref[1, 0], d_ref[2, 0]]
    assert list(base["folds"].values()) == pytest.approx(folds)
    assert base["mean"] == pytest.approx(np.mean(folds))
    assert base["std"] == pytest.approx(np.std(folds))
    assert "paired" not in base
    paired = out["rows"]["variant"]["per_slice_mean"]["dice"]["paired"]
    diffs = [d_alt[u] - d_ref[u] for u in [(0, 0), (1, 0), (2, 0)]]
    assert paired["n"] == 3 and (paired["wins"], paired["losses"]) == (2, 1)
    assert paired["mean"] == pytest.approx(np.mean(diffs))
    # n = 3, ranks of |d|: the negative one (-0.02) is the smallest: W- = 1, P(W- <= 1) = 2/8
    assert paired["p"] == pytest.approx(0.5)
    assert out["rows"]["variant"]["units"] == [[1, 0], [2, 0], [3, 0]]
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| variant | 3 | ? |" in md and "reference" in md and "Δ Dice" in md
    assert f"{np.mean(diffs):+.4f} (2/1)" in md
    assert "do not have the same runs" in md  # the reference has one run more
    rows = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    dice = [r for r in rows if r["metric"] == "dice" and r["mode"] == "per_slice_mean"]
    assert [r["row"] for r in dice] == ["base", "variant"]
    assert float(dice[1]["p"]) == pytest.approx(0.5) and dice[0]["p"] == ""
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["reference"] == "base" and set(saved["rows"]) == {"base", "variant"}
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 5000


def test_comparison_refuses_rows_on_different_folds(tmp_path):
    a = _cv_folder(tmp_path / "a", {(0, 0): 0.6, (1, 0): 0.7, (2, 0): 0.8})
    b = _cv_folder(tmp_path / "b", {(0, 0): 0.6}, test=(["b"], ["a"], ["c"]))
    with pytest.raises(DataError, match="folds differ"):
        compare_runs([a, b], tmp_path / "cmp", figure=False)
    assert not (tmp_path / "cmp" / "comparison.md").exists()
    with pytest.raises(DataError, match="two or more"):
        compare_runs([a], tmp_path / "cmp")
    with pytest.raises(DataError, match="not one of the rows"):
        compare_runs([a, a], tmp_path / "cmp", names=["x", "y"], reference="z")
    with pytest.raises(DataError, match="unique"):
        compare_runs([a, a], tmp_path / "cmp")


def _two_source_folder(root: Path, dice: dict[str, list[float]]) -> Path:
    """A fake cv over datasets ``m`` and ``z``: per fold one test slice of each, Dice given."""
    test = [[f"m/p{k}", f"z/p{k}"] for k in range(3)]
    root.mkdir(parents=True)
    folds = [{"fold": k, "train": [], "test": t} for k, t in enumerate(test)]
    (root / "splits.json").write_text(json.dumps({"seed": 0, "folds": folds}))
    for f, cases in enumerate(test):
        (root / f"fold{f}_rep0").mkdir()
        record = {
            "postprocessing": {"threshold": 0.5},
            "cases": cases,
            "counts": [_dice_counts(dice[c[0]][f]) for c in cases],
            "kinds": {c: "slice" for c in cases},
        }
        (root / f"fold{f}_rep0" / "test_metrics.json").write_text(json.dumps(record))
    return root


def test_comparison_per_dataset_shows_a_gain_on_one_source_and_a_loss_on_the_other(tmp_path):
    da = {"m": [0.6, 0.7, 0.8], "z": [0.5, 0.5, 0.5]}
    db = {"m": [0.7, 0.8, 0.9], "z": [0.4, 0.45, 0.3]}
    a = _two_source_folder(tmp_path / "a", da)
    b = _two_source_folder(tmp_path / "b", db)
    out = compare_runs([a, b], tmp_path / "cmp", figure=False)
    assert set(out["sources"]) == {"m", "z"}
    dm = out["sources"]["m"]["b"]["per_slice_mean"]["dice"]["paired"]
    dz = out["sources"]["z"]["b"]["per_slice_mean"]["dice"]["paired"]
    assert (dm["wins"], dm["losses"], dz["wins"], dz["losses"]) == (3, 0, 0, 3)
    hand = {
        s: np.mean(
            [_dice(_dice_counts(db[s][f])) - _dice(_dice_counts(da[s][f])) for f in range(3)]
        )
        for s in ("m", "z")
    }
    assert dm["mean"] == pytest.approx(hand["m"]) and dz["mean"] == pytest.approx(hand["z"])
    # all slices together: the mean of the two datasets' slices of each fold
    both = out["rows"]["b"]["per_slice_mean"]["dice"]["paired"]["mean"]
    assert both == pytest.approx((hand["m"] + hand["z"]) / 2)
    md = out["markdown"]
    assert md.index("## Dataset m") < md.index("## Dataset z")
    assert f"{hand['z']:+.4f} (0/3)" in md.split("## Dataset z")[1]
    rows = list(csv.DictReader((tmp_path / "cmp" / "comparison.csv").open()))
    assert {r["dataset"] for r in rows} == {"all", "m", "z"}
    # a single-dataset folder has no per-dataset sections
    c = _cv_folder(tmp_path / "c", {(0, 0): 0.6, (1, 0): 0.7, (2, 0): 0.8})
    d = _cv_folder(tmp_path / "d", {(0, 0): 0.7, (1, 0): 0.7, (2, 0): 0.7})
    single = compare_runs([c, d], tmp_path / "cmp2", figure=False)
    assert single["sources"] == {} and "## Dataset" not in single["markdown"]


def test_report_cli_compares_several_folders(tmp_path, capsys):
    a = _cv_folder(tmp_path / "a", {(0, 0): 0.6, (1, 0): 0.7, (2, 0): 0.8})
    b = _cv_folder(tmp_path / "b", {(0, 0): 0.7, (1, 0): 0.75, (2, 0): 0.7})
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "c"), "--reference", "b"]) == 0
    md = capsys.readouterr().out
    assert "| b | 3 | ? |" in md and "| a | 3 | ? |" in md
    assert json.loads((tmp_path / "c" / "comparison.json").read_text())["reference"] == "b"
    # the comparison's settings are refused with one folder, and --out is required with several
    assert main(["report", str(a), "--out", str(tmp_path / "d")]) == 2
    assert "--out is for comparing several folders" in capsys.readouterr().err
    assert main(["report", str(a), str(b)]) == 2
    assert "needs --out" in capsys.readouterr().err
    assert main(["report", str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "e")]) == 2
    assert "splits.json: missing" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "afile")]) == 2
    assert "afile: exists and is not a folder" in capsys.readouterr().err


def _zenodo10_like(root: Path) -> Path:
    """Slices named like zenodo10-expert: two series of one Radiopaedia patient, two HU cases."""
    for sub in ("images", "masks", "lungs"):
        (root / sub).mkdir(parents=True)
    series = {
        "coronacases_001": 0,
        "coronacases_003": 1,
        "radiopaedia_10_85902_1": 2,
        "radiopaedia_10_85902_3": 3,
        "radiopaedia_7_85703_0": 4,
    }
    for name, seed in series.items():
        hu, lung, inf = make_phantom(seed, (32, 32, 2))
        img = (normalize_intensity(hu, "hu") * 255).astype(np.uint8)
        for k in range(2):
            stem = f"{name}_{k:04d}"
            PILImage.fromarray(img[:, :, k].T).save(root / "images" / f"{stem}.png")
            PILImage.fromarray((inf[:, :, k].T > 0).astype(np.uint8)).save(
                root / "masks" / f"{stem}.png"
            )
            PILImage.fromarray((lung[:, :, k].T > 0).astype(np.uint8)).save(
                root / "lungs" / f"{stem}.png"
            )
    return root


def test_cv_keeps_the_series_of_one_patient_in_one_fold(tmp_path):
    src = _zenodo10_like(tmp_path / "Z")
    out = tmp_path / "P"
    group = r"^(coronacases_\d+|radiopaedia_\d+)_"
    argv = ["prepare", "--layout", "slices", "--group", group, "--size", "32", str(src), str(out)]
    assert main(argv) == 0
    data = PreparedDataset(out)
    # four patients: radiopaedia_10's two series are one case of four slices
    assert sorted(data.case_ids) == [
        "coronacases_001", "coronacases_003", "radiopaedia_10", "radiopaedia_7",
    ]  # fmt: skip
    assert {c["id"]: c["n_slices"] for c in data.cases}["radiopaedia_10"] == 4
    assert {c["lung_mask"] for c in data.cases} == {"expert"}
    cv = tmp_path / "cv"
    runs = run_cv(out, cv, TINY, FAST.replace(epochs=1, val_fraction=0.25), folds=2, repeats=1)
    splits = json.loads((cv / "splits.json").read_text())["folds"]
    tested = []
    for k, r in enumerate(runs):
        m = json.loads((r / "test_metrics.json").read_text())
        assert sorted(set(m["cases"])) == splits[k]["test"]
        tested += sorted(set(m["cases"]))
        if "radiopaedia_10" in splits[k]["test"]:
            assert m["cases"].count("radiopaedia_10") == 4  # both series tested together
        assert not set(splits[k]["test"]) & set(splits[k]["train"])
    assert sorted(tested) == sorted(data.case_ids)  # every patient tested exactly once
    # a row compared with its own copy: zero differences, and the epochs read from the runs
    shutil.copytree(cv, tmp_path / "cv_copy")
    cmp = compare_runs([cv, tmp_path / "cv_copy"], tmp_path / "cmp", figure=False)
    paired = cmp["rows"]["cv_copy"]["per_slice_mean"]["dice"]["paired"]
    assert paired["n"] == 2 and paired["ties"] == 2 and paired["p"] == 1.0
    assert cmp["rows"]["cv"]["settings"]["epochs"] == 1
    assert "| cv | 2 | 1 |" in cmp["markdown"] and "same runs" not in cmp["markdown"]
