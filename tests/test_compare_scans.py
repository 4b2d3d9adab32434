"""`covseg compare-scans`: two segment results in, the change out as JSON or CSV (numbers checked
against hand arithmetic), the voxel-level change from the masks beside the reports, a rigid
registration that undoes a patient's move, and one-line refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covseg.cli import main
from covseg.data.synthetic import make_phantom

FIELDS = ("lung_volume_ml", "infection_volume_ml", "infection_percent")


def _report(case: str, both, left, right, model="m1") -> dict:
    """A report's burden fields: (lung mL, infection mL, percent) per region."""
    return {
        "case": case,
        "input": f"{case}.nii.gz",
        "model_id": model,
        "threshold": 0.5,
        **dict(zip(FIELDS, both, strict=True)),
        "left": dict(zip(FIELDS, left, strict=True)),
        "right": dict(zip(FIELDS, right, strict=True)),
    }


def _write_case(out: Path, report: dict, infection: np.ndarray | None = None, affine=None) -> Path:
    """``segment``'s files of one case: the report and, if given, the infection mask."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{report['case']}_report.json"
    path.write_text(json.dumps(report))
    if infection is not None:
        image = nib.Nifti1Image(infection.astype(np.uint8), affine)
        nib.save(image, str(out / f"{report['case']}_infection.nii.gz"))
    return path


JAN = _report("jan", (4000.0, 800.0, 20.0), (1900.0, 300.0, 15.7895), (2100.0, 500.0, 23.8095))
FEB = _report("feb", (4100.0, 410.0, 10.0), (2000.0, 0.0, 0.0), (2100.0, 410.0, 19.5238))


def test_two_reports_give_the_change_as_json_on_stdout_and_as_csv(tmp_path, capsys):
    a = _write_case(tmp_path / "a", JAN)
    b = _write_case(tmp_path / "b", FEB)
    assert main(["compare-scans", str(a), str(b)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["before"], out["after"], out["notes"], out["voxels"]) == ("jan", "feb", [], None)
    both, left, right = (out["regions"][r] for r in ("both", "left", "right"))
    assert both["infection_ml"] == [800.0, 410.0] and both["infection_change_ml"] == -390.0
    assert both["infection_change_relative"] == pytest.approx(-390 / 800)
    assert both["percent_change"] == pytest.approx(10.0 - 20.0)
    assert left["infection_change_ml"] == -300.0 and left["infection_change_relative"] == -1.0
    assert right["percent_change"] == pytest.approx(19.5238 - 23.8095)
    # The same as CSV, the cases named by their output prefix and by their folder.
    dest = tmp_path / "res" / "change.csv"
    assert (
        main(
            ["compare-scans", str(tmp_path / "a" / "jan"), str(tmp_path / "b"), "--out", str(dest)]
        )
        == 0
    )
    rows = list(csv.DictReader(dest.open()))
    assert [r["region"] for r in rows] == ["both", "left", "right"]
    assert float(rows[2]["infection_change_ml"]) == pytest.approx(410.0 - 500.0)
    assert float(rows[1]["infected_percent_after"]) == 0.0 and rows[0]["new_ml"] == ""
    assert [p.name for p in dest.parent.iterdir()] == ["change.csv"]  # no temporary left


def test_other_models_are_noted_in_the_output_and_on_stderr(tmp_path, capsys):
    a = _write_case(tmp_path, JAN)
    b = _write_case(tmp_path, FEB | {"model_id": "m2"})
    dest = tmp_path / "change.json"
    assert main(["compare-scans", str(a), str(b), "--out", str(dest)]) == 0
    err = capsys.readouterr().err
    assert "warning: the scans were segmented with different models (m1 and m2)" in err
    assert "different models" in json.loads(dest.read_text())["notes"][0]


def test_masks_beside_the_reports_give_new_resolved_and_persisting_infection(tmp_path, capsys):
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])  # 1.6 mm3 per voxel
    before = np.zeros((10, 8, 4), np.uint8)
    before[2:6, 2:4, 1] = 1  # 8 voxels
    after_grid = np.zeros_like(before)
    after_grid[4:8, 2:4, 1] = 1  # 8 voxels, 4 of them where infection was
    # The second scan stored flipped along X (its affine says so) and two slices further up.
    after = np.pad(after_grid, ((0, 0), (0, 0), (2, 0)))[::-1]
    after_affine = affine @ np.array([[-1, 0, 0, 9], [0, 1, 0, 0], [0, 0, 1, -2], [0, 0, 0, 1.0]])
    a = _write_case(tmp_path / "a", JAN, before, affine)
    b = _write_case(tmp_path / "b", FEB, after, after_affine)
    assert main(["compare-scans", str(a), str(b)]) == 0
    voxels = json.loads(capsys.readouterr().out)["voxels"]
    ml = 0.8 * 0.8 * 2.5 / 1000
    assert voxels["new_ml"] == pytest.approx(4 * ml) and voxels["resolved_ml"] == pytest.approx(
        4 * ml
    )
    assert voxels["persisting_ml"] == pytest.approx(4 * ml) and voxels["dice"] == 0.5
    assert voxels["registered"] is False and voxels["transform"] == np.eye(4).tolist()


def _shifted_pair(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """Two segment results of one phantom, the patient 6 mm to the left and 3 mm forward in the
    second scan; their scans beside them."""
    hu, _, infection = make_phantom(2, (64, 64, 16))
    affine = np.diag([1.5, 1.5, 2.5, 1.0])
    shift = (-4, 2, 0)  # voxels along X (x mm grows with the index: 6 mm less) and Y
    hu2 = np.roll(np.pad(hu, 8, constant_values=-1000), shift, axis=(0, 1, 2))[8:-8, 8:-8, 8:-8]
    inf2 = np.roll(np.pad(infection, 8), shift, axis=(0, 1, 2))[8:-8, 8:-8, 8:-8]
    scans = []
    for name, image in (("jan", hu), ("feb", hu2)):
        scans.append(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(image.astype(np.int16), affine), str(scans[-1]))
    a = _write_case(tmp_path / "out", JAN, infection, affine)
    b = _write_case(tmp_path / "out", FEB, inf2, affine)
    return a, b, *scans


def test_register_undoes_the_move_of_the_patient(tmp_path, capsys):
    pytest.importorskip("SimpleITK")
    a, b, scan_a, scan_b = _shifted_pair(tmp_path)
    assert main(["compare-scans", str(a), str(b)]) == 0
    unaligned = json.loads(capsys.readouterr().out)["voxels"]
    assert (
        main(["compare-scans", str(a), str(b), "--register", "--scans", str(scan_a), str(scan_b)])
        == 0
    )
    aligned = json.loads(capsys.readouterr().out)["voxels"]
    assert aligned["registered"] is True
    assert np.asarray(aligned["transform"])[:3, 3] == pytest.approx([-6.0, 3.0, 0.0], abs=0.75)
    assert aligned["dice"] > 0.9 > unaligned["dice"]
    assert aligned["new_ml"] < unaligned["new_ml"] / 3


def test_register_without_simpleitk_is_one_line(tmp_path, capsys, monkeypatch):
    a, b, scan_a, scan_b = _shifted_pair(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "SimpleITK", None)  # as if not installed
    argv = ["compare-scans", str(a), str(b), "--register", "--scans", str(scan_a), str(scan_b)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "registration needs SimpleITK" in err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: [str(d / "nope_report.json"), str(d / "b")], r"nope_report\.json: no such file"),
        (
            lambda d: [str(d / "a"), str(d / "b"), "--out", str(d / "x.txt")],
            r"x\.txt: --out must end",
        ),
        (lambda d: [str(d), str(d / "b")], r": 2 \*_report\.json files in the folder: name one"),
        (lambda d: [str(d / "a"), str(d / "pic")], r"slice_3: the report has no volumes"),
        (lambda d: [str(d / "a"), str(d / "b"), "--register"], r"no infection mask beside it"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make, message):
    import re

    _write_case(tmp_path / "a", JAN)
    _write_case(tmp_path / "b", FEB)
    _write_case(tmp_path, JAN)
    _write_case(tmp_path, FEB)
    _write_case(
        tmp_path / "pic",
        _report("slice_3", (None, None, 12.0), (None, None, 1.0), (None, None, 2.0)),
    )
    assert main(["compare-scans", *make(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("covseg compare-scans: error: ")
    assert re.search(message, captured.err), captured.err
    assert not (tmp_path / "x.txt").exists()
