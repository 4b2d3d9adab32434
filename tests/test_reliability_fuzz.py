"""Reliability: bad inputs give one clear error (DataError / exit 2), never a crash or a hang.

The readers are fuzzed with hypothesis: a valid small NIfTI's bytes truncated or garbled (header
and body), random bytes under every supported suffix, DICOM series with mutated tags, and
volumes of odd dtypes and shapes. Then the same kinds of input go through ``covseg segment`` and
``covseg prepare`` (``covseg.cli.main``): exit code 2, exactly one stderr line, no partial output.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _dicom import hu_to_stored, write_dicom_series
from covseg.cli import main
from covseg.data.io import read_image
from covseg.data.synthetic import make_phantom, write_synthetic_dataset
from covseg.errors import DataError
from segment_tiny import save_tiny_checkpoint

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)

# NIfTI-1 header field offsets (bytes) that readers must not trust.
NIFTI_FIELDS = {
    "dim": (40, "<8h"),
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    "pixdim": (76, "<8f"),
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    "srow_x": (280, "<4f"),
    "magic": (344, "4s"),
}
NIFTI_DATATYPES = [
    0,
    1,
    2,
    4,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    768,
    1024,
    1280,
    1536,
    1792,
    2048,
    2304,
    7,
    9999,
    -1,
]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _valid_nifti_bytes(gz: bool) -> bytes:
    hu = make_phantom(1, (12, 10, 3))[0]
    img = nib.Nifti1Image(hu, np.diag([0.8, 0.8, 3.0, 1.0]))
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


VALID_NII = _valid_nifti_bytes(False)


def _read_only_data_error(path: Path) -> str:
    """Read ``path``; a DataError is fine (returns "error"), a valid image is fine ("ok")."""
    try:
        image = read_image(path)
    except DataError as err:
        assert str(path) in str(err) or path.name in str(err), err
        return "error"
    assert image.array.size > 0
    return "ok"


# ----------------------------------------------------------------------------- readers
@FUZZ
@given(cut=st.integers(0, len(VALID_NII) - 1), gz=st.booleans())
def test_truncated_nifti_is_a_data_error(cut, gz):
    data = VALID_NII[:cut]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("t.nii.gz" if gz else "t.nii")
        p.write_bytes(gzip.compress(data) if gz else data)
        assert _read_only_data_error(p) == "error"


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, len(VALID_NII) - 1), st.integers(0, 255)), max_size=12),
    gz=st.booleans(),
)
def test_garbled_nifti_bytes_never_crash(edits, gz):
    data = bytearray(VALID_NII)
    for pos, value in edits:
        data[pos] = value
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("g.nii.gz" if gz else "g.nii")
        p.write_bytes(gzip.compress(bytes(data)) if gz else bytes(data))
        _read_only_data_error(p)


def _field_values(name: str):
    fmt = NIFTI_FIELDS[name][1]
    if name == "datatype":
        return st.sampled_from(NIFTI_DATATYPES).map(lambda v: (v,))
    if name == "magic":
        return st.sampled_from([b"n+1\0", b"ni1\0", b"n+2\0", b"xxxx"]).map(lambda v: (v,))
    n = struct.calcsize(fmt) // (4 if "f" in fmt else 2)
    if "f" in fmt:
        floats = st.sampled_from([0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), 3.0, 352.0])
        return st.tuples(*[floats] * n)
    return st.tuples(*[st.sampled_from([0, 1, 3, 5, -1, 7, 8, 32767, -32768])] * n)


@FUZZ
@given(data=st.data(), gz=st.booleans())
def test_nifti_header_fields_out_of_range_never_crash(data, gz):
    raw = bytearray(VALID_NII)
    names = data.draw(st.lists(st.sampled_from(sorted(NIFTI_FIELDS)), min_size=1, max_size=3))
    for name in names:
        offset, fmt = NIFTI_FIELDS[name]
        struct.pack_into(fmt, raw, offset, *data.draw(_field_values(name)))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("h.nii.gz" if gz else "h.nii")
        p.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
        _read_only_data_error(p)


@FUZZ
@given(
    payload=st.binary(max_size=600),
    suffix=st.sampled_from([".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".dcm", ".NII.GZ"]),
    prefix=st.sampled_from(
        [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\x1f\x8b", b"\0" * 128 + b"DICM"]
    ),
)
def test_random_bytes_with_image_suffixes_are_data_errors(payload, suffix, prefix):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"r{suffix}"
        p.write_bytes(prefix + payload)
        assert _read_only_data_error(p) == "error"


@FUZZ
@given(payload=st.binary(min_size=0, max_size=400), n=st.integers(1, 3))
def test_folder_of_garbage_dicom_is_a_data_error(payload, n):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "series"
        folder.mkdir()
        for k in range(n):
            (folder / f"{k}.dcm").write_bytes(b"\0" * 128 + b"DICM" + payload[k:])
        assert _read_only_data_error(folder) == "error"


def _dicom_series(folder: Path, n: int = 3, edit=None) -> Path:
    hu = make_phantom(2, (16, 12, n))[0]
    z = [3.0 * k for k in range(n)]
    return write_dicom_series(folder, hu_to_stored(hu), z, edit=edit, enforce_file_format=False)


DICOM_EDITS = {
    "rows": lambda ds, k: setattr(ds, "Rows", 7),
    "rows_one_slice": lambda ds, k: setattr(ds, "Rows", 6) if k == 1 else None,
    "bits": lambda ds, k: setattr(ds, "BitsAllocated", 12),
    "samples": lambda ds, k: setattr(ds, "SamplesPerPixel", 3),
    "no_orientation": lambda ds, k: delattr(ds, "ImageOrientationPatient"),
    "bad_orientation": lambda ds, k: setattr(ds, "ImageOrientationPatient", [1, 0, 0]),
    "no_position": lambda ds, k: delattr(ds, "ImagePositionPatient"),
    "same_position": lambda ds, k: setattr(ds, "ImagePositionPatient", [0.0, 0.0, 0.0]),
    "no_spacing": lambda ds, k: delattr(ds, "PixelSpacing"),
    "short_pixels": lambda ds, k: setattr(ds, "PixelData", ds.PixelData[:-10]),
    "no_pixels": lambda ds, k: delattr(ds, "PixelData"),
    "slope_text": lambda ds, k: ds.add_new(0x00281053, "LO", "abc"),  # not a number
    "slope_multi": lambda ds, k: setattr(ds, "RescaleSlope", [1, 2]),
    "intercept_nan": lambda ds, k: setattr(ds, "RescaleIntercept", "nan"),
    "photometric": lambda ds, k: setattr(ds, "PhotometricInterpretation", "RGB"),
}


@pytest.mark.parametrize("edit", sorted(DICOM_EDITS))
def test_mutated_dicom_series_is_a_data_error_or_valid(edit, tmp_path):
    folder = _dicom_series(tmp_path / "s", edit=DICOM_EDITS[edit])
    _read_only_data_error(folder)


ODD_VOLUMES = {
    "complex64": lambda: np.ones((8, 8, 3), np.complex64),
    "complex128": lambda: np.ones((8, 8, 3), np.complex128),
    "rgb24": lambda: np.zeros((8, 8, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]),
    "1d": lambda: np.ones((9,), np.int16),
    "2d": lambda: np.ones((9, 7), np.int16),
    "4d": lambda: np.ones((8, 8, 3, 2), np.int16),
    "5d": lambda: np.ones((8, 8, 3, 1, 2), np.int16),
    "zero_size": lambda: np.ones((0, 8, 3), np.int16),
    "nan": lambda: np.full((8, 8, 3), np.nan, np.float32),
    "inf": lambda: np.full((8, 8, 3), np.inf, np.float64),
}
# Accepted by design (a real-valued 3-D volume): the readers may return them.
VALID_ODD = {
    "int8": lambda: np.ones((8, 8, 3), np.int8),
    "uint16": lambda: np.ones((8, 8, 3), np.uint16),
    "float64": lambda: np.zeros((8, 8, 3), np.float64) - 1000,
    "4d_singleton": lambda: np.ones((8, 8, 3, 1), np.int16),
}


@pytest.mark.parametrize("kind", sorted(ODD_VOLUMES))
def test_odd_dtype_or_shape_volume_is_a_data_error(kind, tmp_path):
    p = tmp_path / f"{kind}.nii"
    nib.save(nib.Nifti1Image(ODD_VOLUMES[kind](), np.eye(4)), str(p))
    with pytest.raises(DataError, match=kind):
        read_image(p)


@pytest.mark.parametrize("kind", sorted(VALID_ODD))
def test_real_valued_odd_dtypes_are_read(kind, tmp_path):
    p = tmp_path / f"{kind}.nii.gz"
    nib.save(nib.Nifti1Image(VALID_ODD[kind](), np.eye(4)), str(p))
    assert read_image(p).array.shape == (8, 8, 3)


@pytest.mark.parametrize(
    "mode, shape",
    [
        ("L", (5, 7)),
        ("I;16", (5, 7)),
        ("RGB", (5, 7)),
        ("RGBA", (5, 7)),
        ("1", (5, 7)),
        ("LA", (5, 7)),
        ("P", (5, 7)),
        ("F", (5, 7)),
        ("L", (1, 1)),
    ],
)
def test_picture_modes_are_read_as_2d(mode, shape, tmp_path):
    from PIL import Image as PILImage

    p = tmp_path / "pic.png"
    pic = PILImage.new(mode, shape[::-1])
    if mode == "F":
        p = tmp_path / "pic.tif"  # PNG cannot hold float; not a supported suffix -> DataError
        pic.save(p)
        with pytest.raises(DataError, match="unsupported file type"):
            read_image(p)
        return
    pic.save(p)
    assert read_image(p).array.shape == shape


# --------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def _cli(argv: list[str]) -> tuple[int, list[str]]:
    """Run ``covseg argv`` in process; ``(exit code, stderr lines)``. Exceptions propagate."""
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        rc = main(argv)
    return rc, [line for line in err.getvalue().splitlines() if line.strip()]


def _bad_inputs(root: Path) -> dict[str, Path]:
    """One file per kind of bad input (the CLI cases)."""
    root.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        cases[name] = root / name
        cases[name].write_bytes(data)

    put("truncated_header.nii", VALID_NII[:200])
    put("truncated_body.nii", VALID_NII[: len(VALID_NII) - 100])
    put("truncated_gz.nii.gz", gzip.compress(VALID_NII)[:150])
    put("random.nii.gz", os.urandom(300))
    put("random.png", b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    put("random.jpg", b"\xff\xd8\xff" + os.urandom(200))
    put("empty.nii", b"")
    hdr = bytearray(VALID_NII)
    struct.pack_into("<8h", hdr, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)  # huge dims, no data
    put("huge_dims.nii", bytes(hdr))
    for kind in ("complex64", "rgb24", "4d", "zero_size", "nan"):
        cases[f"{kind}.nii.gz"] = root / f"{kind}.nii.gz"
        nib.save(nib.Nifti1Image(ODD_VOLUMES[kind](), np.eye(4)), str(cases[f"{kind}.nii.gz"]))
    dcm = _dicom_series(root / "dicom_short_pixels", edit=DICOM_EDITS["short_pixels"])
    cases["dicom_short_pixels"] = dcm
    return cases


BAD_KINDS = sorted(_bad_inputs(Path(tempfile.mkdtemp(prefix="covseg-bad-"))))


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_segment_cli_bad_input_exit_2_one_line_no_output(kind, tiny_ckpt, tmp_path):
    src = _bad_inputs(tmp_path / "in")[kind]
    out = tmp_path / "out"
    argv = ["segment", str(src), "--out", str(out), "--checkpoint", str(tiny_ckpt)]
    rc, lines = _cli([*argv, "--device", "cpu"])
    assert rc == 2 and len(lines) == 1, (rc, lines)
    assert lines[0].startswith("covseg segment: error: ") and src.name in lines[0]
    # Nothing of the case; a case that failed while running is a row of the cohort table.
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert set(left) <= {"cohort.csv", ".covseg-failed"}, sorted(out.rglob("*"))


def test_segment_cli_lists_the_bad_case_and_keeps_good_ones_complete(tiny_ckpt, tmp_path):
    """A bad case is one error line and a ``failed`` row; the good cases, before and after
    it, are complete; nothing of the bad one is written."""
    good = tmp_path / "in" / "a_good.nii.gz"
    good.parent.mkdir()
    nib.save(nib.Nifti1Image(make_phantom(3, (32, 32, 3))[0], np.eye(4)), str(good))
    bad = tmp_path / "in" / "b_bad.nii"
    bad.write_bytes(VALID_NII[:300])
    shutil.copyfile(good, tmp_path / "in" / "c_good.nii.gz")
    out = tmp_path / "out"
    rc, lines = _cli(
        [
            "segment",
            str(good.parent),
            "--out",
            str(out),
            "--checkpoint",
            str(tiny_ckpt),
            "--device",
            "cpu",
        ]
    )
    assert rc == 2 and len([x for x in lines if "error" in x]) == 1
    assert "b_bad.nii" in next(x for x in lines if "error" in x)
    names = sorted(p.name for p in out.iterdir())  # hidden temp folders would show here too
    assert names == [
        ".covseg-failed",  # the failure's record (the cohort table is rebuilt from it)
        *(f"{c}_{s}" for c in ("a_good", "c_good")
          for s in ("infection.nii.gz", "lungs.nii.gz", "overlay.png", "report.json")),
        "cohort.csv",
    ]  # fmt: skip
    rows = (out / "cohort.csv").read_text().splitlines()
    assert [r.split(",")[2] for r in rows[1:]] == ["done", "failed", "done"]


@pytest.mark.parametrize(
    "kind",
    [
        "truncated_body.nii",
        "random.nii.gz",
        "complex64.nii.gz",
        "rgb24.nii.gz",
        "4d.nii.gz",
        "nan.nii.gz",
    ],
)
def test_prepare_cli_bad_case_exit_2_one_line_no_output(kind, tmp_path):
    raw = write_synthetic_dataset(tmp_path / "raw", "zenodo20", 2, seed=0, slices=3, size=32)
    bad = _bad_inputs(tmp_path / "bad")[kind]
    target = raw / "COVID-19-CT-Seg_20cases" / "coronacases_001.nii.gz"
    shutil.copyfile(bad, target)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, lines = _cli(["prepare", str(raw), str(tmp_path / "prepared"), "--size", "32"])
    assert rc == 2 and len(lines) == 1, (rc, lines)
    assert lines[0].startswith("covseg prepare: error: ") and "coronacases_001" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temp folder


def test_prepare_cli_bad_mask_exit_2(tmp_path):
    raw = write_synthetic_dataset(tmp_path / "raw", "zenodo20", 2, seed=0, slices=3, size=32)
    (raw / "Infection_Mask" / "coronacases_001.nii.gz").write_bytes(os.urandom(100))
    rc, lines = _cli(["prepare", str(raw), str(tmp_path / "prepared"), "--size", "32"])
    assert rc == 2 and len(lines) == 1 and "coronacases_001" in lines[0], lines
    assert not (tmp_path / "prepared").exists()


@pytest.mark.slow
def test_segment_cli_subprocess_stderr_is_one_line(tiny_ckpt, tmp_path):
    """The real process: no warnings, log lines or traceback besides the one error line."""
    import subprocess
    import sys

    bad = _bad_inputs(tmp_path / "in")
    for kind in ("truncated_body.nii", "huge_dims.nii"):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "covseg",
                "segment",
                str(bad[kind]),
                "--out",
                str(tmp_path / "out"),
                "--checkpoint",
                str(tiny_ckpt),
                "--device",
                "cpu",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1, (kind, r.returncode, r.stderr[-2000:])
    assert not (tmp_path / "out").exists()
