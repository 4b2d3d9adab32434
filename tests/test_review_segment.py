"""Regression tests of the hostile review of ``covseg segment`` (2026-12-06, R1): what a CT
researcher met with odd inputs and output folders. A tiny random-init checkpoint is used: the
assertions are about files, exit codes and messages, not accuracy."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covseg.cli import main
from covseg.data.synthetic import make_phantom

pytestmark = pytest.mark.usefixtures("one_thread")


def _segment(inputs, out: Path, ckpt: Path, *flags: str) -> tuple[int, list[str]]:
    """``covseg segment`` in process: ``(exit code, the stderr lines a terminal keeps)``."""
    err = io.StringIO()
    argv = ["segment", *map(str, inputs), "--out", str(out), "--checkpoint", str(ckpt)]
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        rc = main([*argv, "--device", "cpu", *flags])
    lines = [ln.split("\r")[-1] for ln in err.getvalue().split("\n")]  # progress bars redraw
    return rc, [ln for ln in lines if ln.strip()]


def _scan(path: Path) -> Path:
    nib.save(nib.Nifti1Image(make_phantom(0, (32, 32, 3))[0], np.diag([0.8, 0.8, 2.5, 1])), path)
    return path


def test_an_unwritable_cohort_table_is_named_not_its_temporary(checkpoint, tmp_path):
    """A ``cohort.csv`` that cannot be replaced (here a folder of that name) is one line naming
    ``cohort.csv``; the hidden temporary name the table was written under means nothing."""
    out = tmp_path / "out"
    (out / "cohort.csv").mkdir(parents=True)
    rc, lines = _segment([_scan(tmp_path / "scan.nii.gz")], out, checkpoint)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith("covseg segment: error: ") and "Is a directory" in lines[0]
    assert f"{out / 'cohort.csv'}:" in lines[0] and "/.cohort.csv." not in lines[0]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".cohort.csv")]


def _masks(out: Path, case: str) -> list:
    return [nib.load(out / f"{case}_{key}.nii.gz") for key in ("lungs", "infection")]


def test_a_nifti2_scan_gets_nifti2_masks_and_a_quiet_stderr(checkpoint, tmp_path):
    """nibabel "fixes" a NIfTI-2 header put into a NIfTI-1 image with log lines on stderr
    (``sizeof_hdr should be 348``): a good input must leave stderr empty."""
    vol, affine = make_phantom(1, (32, 32, 3))[0], np.diag([-0.8, 0.8, 2.5, 1])
    src = tmp_path / "scan2.nii.gz"
    nib.save(nib.Nifti2Image(vol, affine), src)
    rc, lines = _segment([src], tmp_path / "out", checkpoint)
    assert rc == 0 and lines == []
    for mask in _masks(tmp_path / "out", "scan2"):
        assert isinstance(mask.header, nib.Nifti2Header) and mask.shape == vol.shape
        np.testing.assert_allclose(mask.affine, affine)


def test_masks_drop_the_scans_display_window_and_intent(checkpoint, tmp_path):
    """A scan's ``cal_min``/``cal_max`` (-1000..400 HU) copied onto 0/1 masks makes viewers that
    honour it (FSLeyes, Mango, MRIcroGL) draw the mask and its background alike."""
    img = nib.Nifti1Image(make_phantom(2, (32, 32, 3))[0], np.diag([0.8, 0.8, 2.5, 1]))
    img.header["cal_min"], img.header["cal_max"] = -1000, 400
    img.header.set_intent("vector")
    nib.save(img, tmp_path / "windowed.nii.gz")
    rc, lines = _segment([tmp_path / "windowed.nii.gz"], tmp_path / "out", checkpoint)
    assert rc == 0 and lines == []
    for mask in _masks(tmp_path / "out", "windowed"):
        assert (mask.header["cal_min"], mask.header["cal_max"]) == (0, 0)
        assert mask.header.get_intent()[0] == "none"
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


@pytest.mark.parametrize("thickness", [None, 5.0])
def test_one_dicom_slice_reports_millilitres_only_with_a_known_thickness(
    checkpoint, tmp_path, thickness
):
    # One slice without SliceThickness was given 1 mm silently, and its mL were reported.
    from _dicom import hu_to_stored, write_dicom_series

    hu = make_phantom(0, (32, 32, 1))[0]  # (X, Y, Z): one slice
    edit = None if thickness is None else (lambda ds, k: setattr(ds, "SliceThickness", thickness))
    folder = write_dicom_series(tmp_path / "one", hu_to_stored(hu), [0.0], edit=edit)
    rc, lines = _segment([folder], tmp_path / "out", checkpoint)
    assert rc == 0, lines
    report = json.loads((tmp_path / "out" / "one_report.json").read_text())
    assert report["area_unit"] == "mm2" and report["infection_percent"] is not None
    if thickness is None:
        assert report["lung_volume_ml"] is None and report["voxel_volume_ml"] is None
        assert not (tmp_path / "out" / "one_sr.dcm").exists()  # no volumes for an SR
    else:
        mm3 = 0.8 * 0.6 * thickness  # write_dicom_series' pixel spacing
        assert report["voxel_volume_ml"] == pytest.approx(mm3 / 1000)
        assert report["lung_volume_ml"] == pytest.approx(report["lung_voxels"] * mm3 / 1000)


def test_a_wrong_checkpoint_names_what_was_given(checkpoint, tmp_path):
    # It used to name a .json sidecar nobody asked for (``scan.nii.json: missing``).
    scan = _scan(tmp_path / "scan.nii.gz")
    for given, problem in (
        (tmp_path / "none.safetensors", "no such checkpoint"),
        (scan, "not a checkpoint"),
    ):
        rc, lines = _segment([scan], tmp_path / "out", checkpoint, "--checkpoint", str(given))
        assert rc == 2 and len(lines) == 1, lines
        assert f"{given}: {problem}" in lines[0], lines
    assert not (tmp_path / "out").exists()
