"""Reliability of input handling, round three (issue 39): every kind of input in a folder is
seen; junk is refused in milliseconds by its first bytes (DICOM candidates, zip entries);
``covseg segment x.zip`` works like the viewer's upload; out-of-range options are one line before
any work; NIfTI units, EXIF orientation and non-CT intensities are honoured or refused.
"""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _dicom import hu_to_stored, write_dicom_series
from covseg.cli import main
from covseg.data.io import find_inputs, read_image, write_mask
from covseg.data.io.archive import inspect_zip
from covseg.data.io.common import looks_like_dicom
from covseg.data.io.magic import dicom_start
from covseg.data.preprocess import detect_intensity_rule
from covseg.data.synthetic import make_phantom
from covseg.errors import DataError

FAST = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)


def _cli(*argv: str) -> tuple[int, list[str]]:
    """``covseg argv`` in process: ``(exit code, non-empty stderr lines)``."""
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        rc = main(list(argv))
    lines = [ln.split("\r")[-1] for ln in err.getvalue().split("\n")]
    return rc, [ln for ln in lines if ln.strip() and "s/slice" not in ln and "%|" not in ln]


def _series(folder: Path, n: int = 4) -> Path:
    hu = make_phantom(1, (32, 32, n))[0]
    return write_dicom_series(folder, hu_to_stored(hu), [2.5 * k for k in range(n)])


def _png(path: Path, array: np.ndarray, exif_orientation: int | None = None, fmt="PNG") -> Path:
    from PIL import Image as PILImage

    pic = PILImage.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L")
    kw = {}
    if exif_orientation is not None:
        exif = PILImage.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    pic.save(path, format=fmt, **({"quality": 100} if fmt == "JPEG" else {}), **kw)
    return path


def _zip(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


# ------------------------------------------------------------- 1. every input of a folder is seen
def test_dicom_series_beside_a_picture_is_a_case_of_its_own(tmp_path):
    folder = _series(tmp_path / "study")
    preview = _png(folder / "preview.png", np.full((8, 8), 100))
    assert find_inputs(folder) == [folder, preview]
    image = read_image(folder)  # the reader skips the picture, by its content
    assert image.kind == "dicom" and image.array.shape == (32, 32, 4)


def test_nifti_beside_dicom_files_hides_neither(tmp_path):
    folder = _series(tmp_path / "study")
    nifti = folder / "scan.nii.gz"
    nib.save(nib.Nifti1Image(make_phantom(2, (16, 16, 3))[0], np.eye(4)), str(nifti))
    sub = _series(tmp_path / "study" / "later")
    assert find_inputs(folder) == [folder, sub, nifti]
    assert read_image(folder).array.shape == (32, 32, 4)


def test_segment_cli_writes_both_cases_of_a_mixed_folder(checkpoint, tmp_path):
    folder = _series(tmp_path / "study")
    _png(folder / "preview.png", make_phantom(0, (32, 32, 1))[0][..., 0].clip(0, 255))
    out = tmp_path / "out"
    rc, lines = _cli("segment", str(folder), "--out", str(out), "--checkpoint", str(checkpoint),
                     "--device", "cpu", "--intensity", "auto")  # fmt: skip
    assert rc == 0, lines
    reports = sorted(p.name for p in out.glob("*_report.json"))
    assert reports == ["preview_report.json", "study_report.json"]


# ------------------------------------------------------------------- 2. junk refused in ms
def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)  # zeros, without writing them
    return path


def test_a_40mb_zero_dcm_is_refused_in_milliseconds(tmp_path):
    folder = tmp_path / "zero"
    folder.mkdir()
    _sparse(folder / "x.dcm", 40 << 20)
    read_image(_series(tmp_path / "warm"))  # imports done, as in a run
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        for path in find_inputs(folder):
            read_image(path)
    took = time.perf_counter() - start
    assert str(err.value).startswith(f"{folder}: no DICOM image slices found")
    assert "x.dcm" in str(err.value) and "\n" not in str(err.value)
    assert took < 0.5, f"{took:.2f} s"


def test_a_zip_of_one_60mb_zero_entry_is_refused_before_expanding(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", [("x.dcm", b"\0" * (60 << 20))])
    assert archive.stat().st_size < 100_000
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"no DICOM, NIfTI or PNG/JPEG data .*'x\.dcm'"):
        inspect_zip(archive)
    assert time.perf_counter() - start < 0.5


@FAST
@given(size=st.integers(0, 4096), junk=st.binary(max_size=64))
def test_zeros_and_group_zero_never_look_like_dicom(size, junk):
    assert not dicom_start(b"\0" * size, size)
    head = b"\0\0" + junk  # group 0: the command group, never first in a stored file
    assert not dicom_start(head, len(head))


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit-vr", "explicit-vr"])
def test_raw_datasets_without_preamble_still_count_as_dicom(implicit, tmp_path):
    import pydicom

    folder = _series(tmp_path / "s", 3)
    for path in folder.iterdir():  # each slice as a bare dataset: no preamble, no file meta
        bare = pydicom.Dataset()
        bare.update(pydicom.dcmread(path))
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, bare, implicit_vr=implicit, little_endian=True)
        path.write_bytes(buf.getvalue())
        assert b"DICM" not in path.read_bytes()[:200] and looks_like_dicom(path)
    assert read_image(folder).array.shape == (32, 32, 3)


# ------------------------------------------------------------------- 3. covseg segment x.zip
def test_segment_a_zipped_dicom_series_like_the_server(checkpoint, tmp_path):
    folder = _series(tmp_path / "series")
    entries = [(f"export/series/{p.name}", p.read_bytes()) for p in sorted(folder.iterdir())]
    entries += [("__MACOSX/export/._0.dcm", b"mac"), ("export/README.txt", b"hello")]
    archive = _zip(tmp_path / "scan.zip", entries)
    common = ["--checkpoint", str(checkpoint), "--device", "cpu"]
    assert _cli("segment", str(folder), "--out", str(tmp_path / "plain"), *common)[0] == 0
    rc, lines = _cli("segment", str(archive), "--out", str(tmp_path / "zip"), *common)
    assert rc == 0, lines
    plain = json.loads((tmp_path / "plain" / "series_report.json").read_text())
    zipped = json.loads((tmp_path / "zip" / "scan_report.json").read_text())
    assert zipped["input"] == str(archive)
    keys = ("lung_voxels", "infection_voxels", "lung_volume_ml", "voxel_volume_ml", "left")
    assert {k: zipped[k] for k in keys} == {k: plain[k] for k in keys}
    for key in ("lungs", "infection"):
        a = nib.load(str(tmp_path / "plain" / f"series_{key}.nii.gz"))
        b = nib.load(str(tmp_path / "zip" / f"scan_{key}.nii.gz"))
        assert np.array_equal(a.get_fdata(), b.get_fdata()) and np.allclose(a.affine, b.affine)


def test_segment_a_zip_of_pictures_names_cases_after_entries(checkpoint, tmp_path):
    slices = make_phantom(3, (32, 32, 2))[0].clip(0, 255).astype(np.uint8)
    pics = [_png(tmp_path / f"s{k}.png", slices[..., k]) for k in range(2)]
    entries = [(f"pics/slice_{k}.png", p.read_bytes()) for k, p in enumerate(pics)]
    archive = _zip(tmp_path / "pics.zip", entries)
    out = tmp_path / "out"
    rc, lines = _cli("segment", str(archive), "--out", str(out), "--checkpoint",
                     str(checkpoint), "--device", "cpu")  # fmt: skip
    assert rc == 0, lines
    assert sorted(p.name for p in out.glob("*_report.json")) == [
        "slice_0_report.json",
        "slice_1_report.json",
    ]
    # reports name the zip's entries, not the temporary copy; a rerun finds them finished
    report = json.loads((out / "slice_1_report.json").read_text())
    assert report["input"] == f"{archive}/slice_1.png"
    rc, lines = _cli("segment", str(archive), "--out", str(out), "--checkpoint",
                     str(checkpoint), "--device", "cpu")  # fmt: skip
    assert rc == 0, lines
    with open(out / "cohort.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["input"], r["status"]) for r in rows] == [
        (f"{archive}/slice_0.png", "skipped"),
        (f"{archive}/slice_1.png", "skipped"),
    ]


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ([("../evil.png", b"x")], "unsafe entry '../evil.png'"),
        ([("x.dcm", b"\0" * 1000)], "no DICOM, NIfTI or PNG/JPEG data"),
        ([("a/s.png", b"\x89PNG\r\n\x1a\n"), ("b/s.png", b"\x89PNG\r\n\x1a\n")], "one case name"),
    ],
    ids=["traversal", "junk", "same-name"],
)
def test_bad_zips_are_one_line_exit_2(entries, words, checkpoint, tmp_path):
    archive = _zip(tmp_path / "bad.zip", entries)
    out = tmp_path / "out"
    rc, lines = _cli("segment", str(archive), "--out", str(out), "--checkpoint", str(checkpoint))
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"covseg segment: error: {archive}: ") and words in lines[0]
    assert not out.exists() and not (tmp_path / "evil.png").exists()


# -------------------------------------------------------------- 4. options out of range
@pytest.mark.parametrize(
    "argv",
    [
        ["export-onnx", "m.onnx", "--opset", "1"],
        ["export-onnx", "m.onnx", "--opset", "99"],
        ["synth", "OUT", "--size", "60000"],
        ["synth", "OUT", "--size", "4096", "--slices", "4096"],
        ["synth", "OUT", "--cases", "0"],
        ["synth", "OUT", "--seed", "-1"],
        ["prepare", "SRC", "OUT", "--size", "5"],
        ["segment", "x.nii.gz", "--out", "OUT", "--batch-size", "0"],
        ["segment", "x.nii.gz", "--out", "OUT", "--batch-size", "many"],
        ["evaluate", "--checkpoint", "c", "--data", "d", "--threshold", "1.5"],
        ["evaluate", "--checkpoint", "c", "--data", "d", "--threshold", "nan"],
        ["train", "--data", "d", "--out", "OUT", "--epochs", "-1"],
        ["train", "--data", "d", "--out", "OUT", "--threads", "-2"],
        ["train", "--data", "d", "--out", "OUT", "--lr", "0"],
        ["cv", "--data", "d", "--out", "OUT", "--folds", "1"],
        ["serve", "--port", "70000"],
        ["model-info", "--size", "8"],
    ],
)
def test_out_of_range_options_are_one_line_before_any_work(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, lines = _cli(*argv)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"covseg {argv[0]}: error: ")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_empty_out_is_refused(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scan = tmp_path / "in" / "scan.nii.gz"
    scan.parent.mkdir()
    nib.save(nib.Nifti1Image(make_phantom(0, (16, 16, 2))[0], np.eye(4)), str(scan))
    rc, lines = _cli("segment", str(scan), "--out", "", "--checkpoint", str(checkpoint))
    assert rc == 2 and len(lines) == 1 and "empty folder name" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_onnx_exports_at_both_ends_of_the_opset_range(checkpoint, tmp_path):
    import onnx
    import onnxruntime as ort

    from covseg.config.choices import ONNX_OPSETS
    from covseg.inference.export import export_onnx

    for opset in ONNX_OPSETS:
        out = export_onnx(checkpoint, tmp_path / f"m{opset}.onnx", opset=opset)
        model = onnx.load(str(out))
        onnx.checker.check_model(model)
        assert model.opset_import[0].version == opset
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        logits = session.run(None, {"image": np.zeros((2, 1, 32, 32), np.float32)})
        assert [x.shape for x in logits] == [(2, 1, 32, 32)] * 3


# ------------------------------------------------------------ 5. units, orientation, intensity
def _unit_nifti(path: Path, zoom: float, code: int) -> Path:
    img = nib.Nifti1Image(make_phantom(0, (16, 16, 3))[0], np.diag([zoom, zoom, 2 * zoom, 1]))
    img.header["xyzt_units"] = code
    nib.save(img, str(path))
    return path


@FAST
@given(
    unit=st.sampled_from([(0, 1.0), (1, 1000.0), (2, 1.0), (3, 0.001)]),
    mm=st.floats(0.02, 40.0),
)
def test_nifti_units_become_millimetres_and_masks_keep_the_files_own(unit, mm, tmp_path):
    code, mm_per_unit = unit
    path = _unit_nifti(tmp_path / "u.nii.gz", mm / mm_per_unit, code)
    image = read_image(path)
    assert image.spacing == pytest.approx((mm, mm, 2 * mm), rel=1e-5)
    mask = write_mask(np.ones(image.array.shape, np.uint8), image, tmp_path / "m.nii.gz")
    assert np.allclose(nib.load(str(mask)).affine, nib.load(str(path)).affine)
    assert nib.load(str(mask)).header["xyzt_units"] & 7 == code


@pytest.mark.parametrize(
    ("zoom", "code", "words"),
    [
        (0.7, 3, ["µm", "xyzt_units", "0.0007"]),  # a mm voxel size labelled µm
        (700.0, 1, ["m,", "xyzt_units"]),
        (0.7, 6, ["undefined spatial unit code 6"]),
    ],
)
def test_implausible_or_undefined_units_are_refused(zoom, code, words, tmp_path):
    path = _unit_nifti(tmp_path / "u.nii.gz", zoom, code)
    with pytest.raises(DataError) as err:
        read_image(path)
    assert str(err.value).startswith(str(path)) and all(w in str(err.value) for w in words)


def test_micrometre_header_gives_millilitres_not_1e11(checkpoint, tmp_path):
    path = _unit_nifti(tmp_path / "um.nii.gz", 700.0, 3)  # 0.7 x 0.7 x 1.4 mm in µm
    out = tmp_path / "out"
    rc, lines = _cli("segment", str(path), "--out", str(out), "--checkpoint", str(checkpoint),
                     "--device", "cpu")  # fmt: skip
    assert rc == 0, lines
    report = json.loads((out / "um_report.json").read_text())
    assert report["voxel_volume_ml"] == pytest.approx(0.7 * 0.7 * 1.4 / 1000)
    assert report["lung_volume_ml"] <= 16 * 16 * 3 * 0.7 * 0.7 * 1.4 / 1000


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied_and_masks_follow_the_display(fmt, tmp_path):
    upright = np.zeros((24, 40), np.uint8)
    upright[2:6, 3:20] = 250  # a bar near the top left, as displayed
    stored = np.rot90(upright, 1)  # Orientation 6: displayed = stored turned 90° clockwise
    path = _png(tmp_path / f"p.{fmt.lower()}", stored, exif_orientation=6, fmt=fmt)
    image = read_image(path)
    assert image.array.shape == upright.shape
    tol = 0 if fmt == "PNG" else 40
    assert np.abs(image.array.astype(int) - upright).max() <= tol
    mask = write_mask((image.array > 128).astype(np.uint8), image, tmp_path / "m.png")
    assert np.array_equal(read_image(mask).array > 0, upright > 128)


def test_values_that_are_no_ct_are_refused_naming_the_flag():
    mr_like = np.random.default_rng(0).uniform(0, 800, (4, 16, 16)).astype(np.float32)
    with pytest.raises(DataError, match=r"no air or lung.*--intensity hu"):
        detect_intensity_rule(mr_like)
    shifted = np.random.default_rng(1).uniform(-350, 900, (4, 16, 16)).astype(np.float32)
    with pytest.raises(DataError, match=r"no air or lung.*--intensity hu"):
        detect_intensity_rule(shifted)
    air_only = np.full((4, 16, 16), -1000, np.int16)  # a scan of air is still CT
    assert detect_intensity_rule(air_only) == "hu"


@FAST
@given(seed=st.integers(0, 50), side=st.integers(16, 48), n=st.integers(1, 6))
def test_phantom_ct_volumes_still_read_as_hu(seed, side, n):
    hu = make_phantom(seed, (side, side, n))[0]
    assert detect_intensity_rule(np.moveaxis(hu, 2, 0)) == "hu"
