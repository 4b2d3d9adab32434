"""The numbers users act on, checked as a hostile reviewer would (review R2, 2026-12-06):
`compare-scans` refuses reports whose numbers are no volumes (one line naming the file, exit 2,
never a traceback or a NaN change) and notes every setting that makes two reports differ;
`evaluate` refuses an unwritable `--json` before any work and scores `segment`'s own masks as
perfect; the burden summary counts an overestimated case without true infection; `report`
refuses a damaged burden row in one line."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covseg.cli import main
from covseg.errors import DataError
from covseg.evaluation.agreement import agreement, case_burden
from covseg.evaluation.scores import Scores

FIELDS = ("lung_volume_ml", "infection_volume_ml", "infection_percent")


def _report(case: str, both=(4000.0, 800.0, 20.0), **extra) -> dict:
    """A segment report's burden fields, both lungs and each lung alike."""
    region = dict(zip(FIELDS, both, strict=True))
    return {"case": case, "model_id": "m1", "threshold": 0.5, **region, "left": dict(region),
            "right": dict(region), **extra}  # fmt: skip


def _write(path: Path, report: dict) -> Path:
    path.write_text(json.dumps(report))
    return path


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("covseg compare-scans: error: ")
    return captured.err


@pytest.mark.parametrize(
    ("where", "value", "shown"),
    [
        ("lung_volume_ml", "abc", "'abc'"),  # was a ValueError traceback
        ("infection_volume_ml", [1, 2], "[1, 2]"),  # was a TypeError traceback
        ("infection_volume_ml", float("nan"), "nan"),  # was a NaN change, exit 0
        ("infection_volume_ml", -5.0, "-5.0"),  # was a change from a negative volume
        ("lung_volume_ml", True, "True"),  # was read as 1 mL
        ("infection_percent", "12", "'12'"),
    ],
)
def test_compare_scans_refuses_report_fields_that_are_no_volumes(
    where, value, shown, tmp_path, capsys
):
    good = _write(tmp_path / "jan_report.json", _report("jan"))
    bad = _report("feb")
    bad["right"][where] = value
    path = _write(tmp_path / "feb_report.json", bad)
    assert main(["compare-scans", str(good), str(path)]) == 2
    err = _one_line_error(capsys)
    assert f"feb_report.json: feb: right.{where} is {shown}, not a number >= 0" in err


def test_compare_scans_of_a_json_that_is_no_report_names_the_file(tmp_path, capsys):
    good = _write(tmp_path / "jan_report.json", _report("jan"))
    other = _write(tmp_path / "metrics.json", {"dice": 0.8})
    assert main(["compare-scans", str(other), str(good)]) == 2
    assert "metrics.json: the report lacks lung_volume_ml" in _one_line_error(capsys)


def test_compare_scans_notes_tta_framing_and_intensity_rule(tmp_path, capsys):
    a = _write(tmp_path / "a_report.json",
               _report("a", tta=False, framing="lungs", intensity_rule="hu"))  # fmt: skip
    b = _write(tmp_path / "b_report.json",
               _report("b", tta=True, framing="full", intensity_rule="uint8"))  # fmt: skip
    assert main(["compare-scans", str(a), str(b)]) == 0
    captured = capsys.readouterr()
    notes = json.loads(captured.out)["notes"]
    assert len(notes) == 3 and captured.err.count("warning:") == 3
    for words in ("test-time augmentation settings (False and True)", "framings (lungs and full)",
                  "intensity rules (hu and uint8)"):  # fmt: skip
        assert sum(words in n for n in notes) == 1, notes
    # The same settings: no note, and a report compared with itself changes by nothing.
    assert main(["compare-scans", str(a), str(a)]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["notes"] == [] and same["regions"]["both"]["infection_change_ml"] == 0.0


def test_overestimated_counts_cases_without_true_infection():
    empty = np.zeros((1, 4, 4), bool)
    some = empty.copy()
    some[0, :2, :2] = True  # 4 px
    lung = np.ones((1, 4, 4), bool)
    cases = [
        case_burden("healthy", some, empty, lung, lung),  # 4 px predicted, none true: over
        case_burden("under", empty, some, lung, lung),
        case_burden("exact", some, some, lung, lung),
    ]
    result = agreement(cases)
    assert result["overestimated"] == 1 and result["n_cases"] == 3
    assert result["median_abs_relative_error"] == pytest.approx(0.5)  # |-1| and 0
    # Bland-Altman of "% infected" by hand: +25, -25, 0 points.
    assert result["bland_altman"]["bias"] == pytest.approx(0.0)
    assert result["bland_altman"]["sd"] == pytest.approx(25.0)


@pytest.mark.parametrize(("field", "value"), [("true_infection", "abc"), ("tp", [1])])
def test_a_damaged_burden_row_is_a_data_error(field, value, tmp_path):
    row = {"case": "A", "source": "", "unit": "px", "true_infection": 7.0,
           "pred_infection": 6.0, "true_lung": 50.0, "pred_lung": 60.0, "tp": 5, "fp": 1,
           "fn": 2, "interval": None, "lung_from_prediction": False}  # fmt: skip
    record = {"cases": ["A"], "counts": [[5, 1, 2, 100]], "burden": {"A": {"mask": row}}}
    assert Scores.from_record(record, "ok.json").burden["A"]["mask"].pooled_dice == 10 / 13
    record["burden"]["A"]["mask"] = row | {field: value}
    with pytest.raises(DataError, match=r"bad\.json: damaged metrics"):
        Scores.from_record(record, tmp_path / "bad.json")


@pytest.mark.parametrize("kind", ["under_a_file", "a_folder"])
def test_evaluate_refuses_an_unwritable_json_before_any_work(kind, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    dest = tmp_path / "afile" / "m.json" if kind == "under_a_file" else tmp_path
    # The checkpoint and data do not exist: the --json check comes first, before any work.
    argv = ["evaluate", "--checkpoint", str(tmp_path / "no.safetensors"),
            "--data", str(tmp_path / "nowhere"), "--json", str(dest)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--json" in err and str(dest) in err, err


@pytest.mark.slow
def test_evaluate_scores_segments_own_masks_as_perfect_and_half_of_them_by_hand(tmp_path):
    """Truth = the masks `segment` wrote (case 1) and half of them (case 2): Dice, volume
    error and Bland-Altman bias of `evaluate` equal the hand computation."""
    from covseg import Segmenter
    from covseg.data.synthetic import make_phantom
    from covseg.evaluation.evaluate import evaluate

    seg = Segmenter.from_pretrained(device="cpu")
    root = tmp_path / "z"
    for sub in ("COVID-19-CT-Seg_20cases", "Infection_Mask", "Lung_Mask"):
        (root / sub).mkdir(parents=True)
    affine = np.diag([-1.2, -1.2, 4.0, 1.0])
    voxels = []
    for k, seed in enumerate((0, 1)):
        hu, _, _ = make_phantom(seed=seed, shape=(96, 96, 3))
        res = seg.predict_volume(hu, affine=affine)
        truth = res.infection.copy()
        if k == 1:  # drop the first half of the infected voxels
            idx = np.argwhere(truth)
            truth[tuple(idx[: len(idx) // 2].T)] = 0
        voxels.append((int(res.infection.sum()), int(truth.sum()), int(res.lungs.sum())))
        name = f"coronacases_00{k + 1}.nii.gz"
        for sub, arr in (("COVID-19-CT-Seg_20cases", hu.astype(np.int16)),
                         ("Infection_Mask", truth), ("Lung_Mask", res.lungs)):  # fmt: skip
            nib.save(nib.Nifti1Image(arr, affine), str(root / sub / name))
    assert all(p > 0 for p, _, _ in voxels), voxels  # the phantoms have predicted infection
    result = evaluate("pretrained", root, tmp_path / "m.json", device="cpu")
    (p0, t0, _), (p1, t1, l1) = voxels
    assert t0 == p0 and t1 < p1
    assert result["per_volume_mean"]["dice"] == pytest.approx((1.0 + 2 * t1 / (t1 + p1)) / 2)
    burden = result["burden"]
    assert burden["median_abs_relative_error"] == pytest.approx(abs(p1 - t1) / t1 / 2)
    assert burden["overestimated"] == 1
    # % infected: the truth's lungs are segment's, so only case 2 differs.
    assert burden["bland_altman"]["bias"] == pytest.approx(100 * (p1 - t1) / l1 / 2)
    assert json.loads((tmp_path / "m.json").read_text())["burden"]["n_cases"] == 2


def test_evaluate_on_a_file_says_it_wants_a_dataset_folder(tmp_path, capsys):
    # It said "no such folder" about a file that exists.
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.int16), np.eye(4)), scan)
    assert main(["evaluate", "--checkpoint", "pretrained", "--data", str(scan)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{scan}: a file, not a dataset folder" in err, err
