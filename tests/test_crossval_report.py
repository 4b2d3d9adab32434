"""Report numbers equal a hand aggregation of fold JSONs; cv runs, skips and reruns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _train_helpers import FAST, TINY, prepared_phantoms
from covseg.cli import main
from covseg.errors import DataError
from covseg.evaluation.report import make_report
from covseg.studies.crossval import run_cv


def _write_run(root, fold, rep, counts, cases, surface=None):
    d = root / f"fold{fold}_rep{rep}"
    d.mkdir(parents=True)
    kinds = dict.fromkeys(cases, "volume" if surface else "slice")
    payload = {
        "fold": fold,
        "repeat": rep,
        "checkpoint": "best",
        "postprocessing": {
            "threshold": 0.5,
            "min_component": 0,
            "lung_threshold": 0.5,
            "lung_margin_px": 2,
        },
        "threshold": 0.5,
        "min_component": 0,
        "cases": cases,
        "counts": counts,
        "kinds": kinds,
        "surface": surface or {},
        "resolution": dict.fromkeys(cases, "original"),
        "per_slice_mean": {},
    }
    (d / "test_metrics.json").write_text(json.dumps(payload))


def test_report_equals_hand_aggregation(tmp_path):
    # fold 0: two repeats; slice dice by hand: rep0 -> [2*8/(16+2+0)=0.8889, 1.0 (both empty)],
    # rep1 -> [2*5/(10+5+0)=0.6667, 0.0 (false positive on an empty slice)]
    _write_run(tmp_path, 0, 0, [[8, 2, 0, 90], [0, 0, 0, 100]], ["a", "a"])
    _write_run(tmp_path, 0, 1, [[5, 5, 0, 90], [0, 4, 0, 96]], ["a", "b"])
    # fold 1: one repeat, one slice: dice 2*3/(6+1+2)=0.6667
    _write_run(tmp_path, 1, 0, [[3, 1, 2, 94]], ["c"])
    out = make_report(tmp_path, panels=False)
    row = out["tables"]["per_slice_mean"]["rows"]["dice"]
    f0 = np.mean([np.mean([16 / 18, 1.0]), np.mean([10 / 15, 0.0])])
    f1 = 6 / 9
    assert row["folds"] == pytest.approx([f0, f1])
    assert row["mean"] == pytest.approx((f0 + f1) / 2)
    assert row["std"] == pytest.approx(np.std([f0, f1]))
    # pooled: fold 0 rep0 sums (8,2,0,190) -> IoU 8/10; rep1 (5,9,0,186) -> 5/14
    iou = out["tables"]["pooled"]["rows"]["iou"]["folds"]
    assert iou == pytest.approx([np.mean([8 / 10, 5 / 14]), 3 / 6])
    md = (tmp_path / "report.md").read_text()
    assert "| Dice |" in md and "Fold 1" in md and "Fold 2" in md and "Average ± std" in md
    assert "per_volume_mean" not in out["tables"]  # slice data: no volume mode
    csv_text = (tmp_path / "report.csv").read_text().splitlines()
    assert csv_text[0] == "mode,metric,fold1,fold2,mean,std"
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["tables"]["pooled"]
    # by lesion size: every test slice of every run once (5), the healthy ones (2) apart
    sizes = {r["stratum"]: r for r in saved["by_lesion_size"]}
    assert sum(r["n_slices"] for r in sizes.values()) == 5
    assert sizes["no lesion"]["n_slices"] == 2 and sizes["no lesion"]["dice"] == pytest.approx(0.5)
    assert "By lesion size" in md


def test_report_volume_modes_and_surface(tmp_path):
    _write_run(
        tmp_path,
        0,
        0,
        [[8, 2, 0, 90], [0, 0, 2, 98]],
        ["v1", "v1"],
        {"v1": {"hd95_mm": 4.0, "nsd_3mm": 0.5}},
    )
    _write_run(
        tmp_path, 1, 0, [[4, 0, 0, 96]], ["v2"], {"v2": {"hd95_mm": float("nan"), "nsd_3mm": 0.0}}
    )
    out = make_report(tmp_path, panels=False)
    vol = out["tables"]["per_volume_mean"]["rows"]["dice"]["folds"]
    assert vol == pytest.approx([16 / 20, 1.0])  # v1 summed: tp 8, fp 2, fn 2
    hd = out["tables"]["per_slice_mean"]["rows"]["hd95_mm"]
    assert hd["folds"][0] == 4.0 and np.isnan(hd["folds"][1]) and hd["mean"] == 4.0
    assert "HD95 (mm)" in out["markdown"] and "NSD@3mm" in out["markdown"]


def test_report_of_an_empty_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(DataError, match="no fold"):
        make_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "no fold*_rep*" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage",
    [
        "not json",
        "[1, 2]",
        '{"cases": ["a"]}',
        '{"cases": ["a"], "counts": [[1, 2, 3]]}',
        '{"cases": ["a", "b"], "counts": [[1, 0, 0, 9]]}',
        '{"cases": ["a"], "counts": [[1, -1, 0, 9]]}',
    ],
)
def test_report_of_a_damaged_run_is_a_clear_error(tmp_path, capsys, damage):
    _write_run(tmp_path, 0, 0, [[8, 2, 0, 90]], ["a"])
    (tmp_path / "fold1_rep0").mkdir()
    (tmp_path / "fold1_rep0" / "test_metrics.json").write_text(damage)
    with pytest.raises(DataError, match=r"fold1_rep0.test_metrics\.json"):
        make_report(tmp_path, panels=False)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fold1_rep0" in err[0], err


def test_cv_runs_every_fold_then_skips_finished_runs(tmp_path, caplog):
    data = prepared_phantoms(tmp_path, cases=4, slices=3, size=32)
    cv = tmp_path / "cv"
    runs = run_cv(data, cv, TINY, FAST.replace(epochs=1), folds=2, repeats=1)
    assert [r.name for r in runs] == ["fold0_rep0", "fold1_rep0"]
    splits = json.loads((cv / "splits.json").read_text())["folds"]
    for k, r in enumerate(runs):
        m = json.loads((r / "test_metrics.json").read_text())
        assert set(m) == {
            "fold", "repeat", "checkpoint", "postprocessing", "threshold", "min_component",
            "cases", "counts", "kinds", "surface", "resolution", "per_slice_mean", "burden",
        }  # fmt: skip
        assert set(m["burden"]) == set(m["cases"])  # one burden per test case (patient)
        assert (m["fold"], m["repeat"], m["checkpoint"]) == (k, 0, "best")
        best = json.loads((r / "best.json").read_text())["postprocessing"]
        assert m["postprocessing"] == best and m["threshold"] == best["threshold"]
        # scored as `segment` writes the masks: the original volumes at their own resolution
        assert set(m["resolution"].values()) == {"original"}
        assert sorted(set(m["cases"])) == splits[k]["test"]  # each run tests its own fold
        assert len(m["counts"]) == 3 * len(splits[k]["test"])
        assert set(m["surface"]) == set(splits[k]["test"])  # volume data: surface metrics
    mtime = (runs[0] / "best.safetensors").stat().st_mtime_ns
    caplog.set_level("INFO")
    run_cv(data, cv, TINY, FAST.replace(epochs=1), folds=2, repeats=1, fold=0, repeat=0)
    assert (runs[0] / "best.safetensors").stat().st_mtime_ns == mtime
    assert "finished, skipping" in caplog.text
    with np.load(runs[0] / "panels.npz") as panels:
        assert panels["image"].shape[1:] == panels["pred"].shape[1:] == (256, 256)
        assert panels["truth"].shape == panels["pred"].shape
    out = make_report(cv)
    assert set(out["tables"]) == {"per_slice_mean", "per_volume_mean", "pooled"}
    assert (cv / "panels.png").stat().st_size > 1000
    assert out["robustness"] is None and "Robustness" not in out["markdown"]
    # --robustness on finished runs: scored from their checkpoints, nothing retrained
    run_cv(data, cv, TINY, FAST.replace(epochs=1), folds=2, repeats=1, robustness=True)
    assert (runs[0] / "best.safetensors").stat().st_mtime_ns == mtime
    for r in runs:
        rob = json.loads((r / "test_robustness.json").read_text())["variants"]
        m = json.loads((r / "test_metrics.json").read_text())
        assert next(iter(rob)) == "plain" and {"crop_lungs", "zoom_out", "window"} <= set(rob)
        assert rob["plain"]["counts"] == m["counts"]  # plain is exactly the test fold's scores
        assert rob["zoom_out"]["cases"] == m["cases"]
    out = make_report(cv, panels=False)
    table = out["robustness"]["rows"]
    assert table["plain"]["mean"] == pytest.approx(
        out["tables"]["per_slice_mean"]["rows"]["dice"]["mean"]
    )
    assert table["plain"]["ratio_to_plain"] == pytest.approx(1.0)
    assert "### Robustness" in out["markdown"] and "| zoom_out |" in out["markdown"]
    assert "robustness:window,dice" in (cv / "report.csv").read_text()
    (runs[1] / "test_robustness.json").unlink()
    with pytest.raises(DataError, match=r"fold1_rep0 have no test_robustness\.json"):
        make_report(cv, panels=False)
