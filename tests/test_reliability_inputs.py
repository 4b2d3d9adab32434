"""Reliability of the readers against hostile inputs: each class of problem is one DataError
(``"<path>: <problem>"``, one line), raised fast and before allocating, with no warning or log
line escaping; and the inputs that are valid are read correctly.

Classes: 1 non-regular files (FIFO, device, socket) and hidden/AppleDouble files, 2 claimed size
vs file and memory budget, 3 DICOM series geometry, 4 NIfTI geometry, 5 ``(X, Y, Z, 1)`` NIfTI,
6 picture modes (palette as grey vs label indices), 7 values, dtypes and NIfTI scaling.
"""

from __future__ import annotations

import gzip
import logging
import os
import socket
import struct
import tempfile
import threading
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _dicom import write_dicom_series
from covseg.data.io import MAX_SIDE, MAX_VOXELS, Image, find_inputs, read_image, write_mask
from covseg.errors import DataError

FAST = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)


@pytest.fixture(autouse=True)
def _nothing_on_stderr(capfd, caplog):
    """No test may leave text on stderr (a warning, nibabel's own log handler, a traceback)."""
    caplog.set_level(logging.INFO)
    yield
    assert capfd.readouterr().err == ""


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


def _read(path: Path, **kw) -> Image:
    """``read_image`` with every warning turned into an error, and no WARNING log allowed."""
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return read_image(path, **kw)
    finally:
        logging.getLogger().removeHandler(records)
        assert records.messages == []


def _refused(path: Path, *words: str, **kw) -> str:
    """The one-line DataError of ``path``; it names the path and each of ``words``."""
    with pytest.raises(DataError) as err:
        _read(path, **kw)
    msg = str(err.value)
    assert msg.startswith(f"{path}") and "\n" not in msg, msg
    for word in words:
        assert word in msg, (word, msg)
    return msg


def _nifti(path: Path, array: np.ndarray, affine=None, **raw_fields) -> Path:
    """Write ``array`` as NIfTI-1; ``raw_fields`` overwrite header fields as stored on disk
    (``scl_slope``, ``pixdim``, ...), after nibabel's own checks."""
    img = nib.Nifti1Image(array, np.eye(4) if affine is None else affine, dtype=array.dtype)
    data = bytearray(img.to_bytes())
    if raw_fields:
        hdr = nib.Nifti1Header(binaryblock=bytes(data[:348]), check=False)
        for name, value in raw_fields.items():
            hdr[name] = value
        data[:348] = hdr.binaryblock
    data = bytes(data)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _claiming(path: Path, shape: tuple[int, ...], dtype=np.int16) -> Path:
    """A header-only NIfTI (no voxel data) whose header claims ``shape`` of ``dtype``."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr["magic"], hdr["vox_offset"] = b"n+1", 352
    data = hdr.binaryblock + b"\0" * 4
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims ``width x height`` grey pixels, with a few rows of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * min(height, 8))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def _bounded(fn, *args, seconds: float = 2.0):
    """``fn(*args)`` in a thread; fails (instead of hanging) if it does not return in time."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__}{args} blocked for {seconds} s"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


# ------------------------------------------------------------ 1. non-regular files, hidden files
def _special(kind: str, folder: Path) -> Path:
    if kind == "fifo":
        os.mkfifo(folder / "scan.nii.gz")
        return folder / "scan.nii.gz"
    if kind == "socket":
        path = Path(tempfile.mkdtemp(prefix="cs")) / "s.png"  # AF_UNIX paths must be short
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
        return path
    link = folder / f"{kind}.nii"  # a link that hides a device behind an image suffix
    link.symlink_to("/dev/zero" if kind == "dev_zero" else "/dev/null")
    return link


@pytest.mark.parametrize("kind", ["fifo", "socket", "dev_zero", "dev_null"])
def test_non_regular_inputs_are_refused_before_opening(kind, tmp_path):
    path = _special(kind, tmp_path)
    with pytest.raises(DataError, match="not a regular file") as err:
        _bounded(_read, path)
    assert str(err.value).startswith(str(path))
    with pytest.raises(DataError, match="not a regular file"):
        _bounded(find_inputs, path)


def test_folders_skip_hidden_appledouble_and_special_entries(tmp_path, caplog):
    good = _nifti(tmp_path / "a.nii.gz", np.zeros((4, 4, 3), np.int16))
    (tmp_path / "._a.nii.gz").write_bytes(b"\0\x05\x16\x07AppleDouble")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    os.mkfifo(tmp_path / "b.nii")
    stored = np.full((3, 6, 5), 1024, np.uint16)
    series = write_dicom_series(tmp_path / "series", stored, [0.0, 2.0, 4.0])
    (series / "._0.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 40)  # AppleDouble twin
    os.mkfifo(series / "pipe.dcm")

    assert _bounded(find_inputs, tmp_path) == [good, series]
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert notes == [
        f"skipped 2 hidden/AppleDouble file(s) and 1 FIFO/socket/device/broken-link entr(ies) in {tmp_path}"
    ]
    image = _bounded(_read, series)
    assert image.array.shape == (5, 6, 3) and (image.array == 0).all()


# ------------------------------------------------------- 2. claimed size vs file and memory budget
def _claim_128mib_gz(d: Path) -> Path:  # within the memory budget, beyond what gzip can hold
    return _claiming(d / "claim128m.nii.gz", (512, 512, 128), np.int32)


SIZE_CASES = {
    "claim128m.nii.gz": (_claim_128mib_gz, ["128.0 MiB", "gzip"]),
    "claim256m.nii": (
        lambda d: _claiming(d / "claim256m.nii", (1024, 1024, 128)),
        ["256.0 MiB", "352 B"],
    ),
    "budget.nii.gz": (
        lambda d: _claiming(d / "budget.nii.gz", (1024, 1024, 1025), np.uint8),
        [f"memory budget of {MAX_VOXELS * 4 // 3} voxels of 1 bytes ({MAX_VOXELS} as int16"],
    ),
    "ct1024.nii.gz": (  # issue 39: a 1 GiB int16 claim that compresses to ~1 MB
        lambda d: _claiming(d / "ct1024.nii.gz", (1024, 1024, 512)),
        ["1024x1024x512 = 536870912 voxels", f"memory budget of {MAX_VOXELS} voxels of 2 bytes"],
    ),
    "f64.nii.gz": (  # wider voxels, fewer of them: 300 slices of 512² as float64
        lambda d: _claiming(d / "f64.nii.gz", (512, 512, 300), np.float64),
        [f"memory budget of {MAX_VOXELS * 4 // 10} voxels of 8 bytes"],
    ),
    "slice16384.nii.gz": (
        lambda d: _claiming(d / "slice16384.nii.gz", (16384, 16384, 1)),
        ["16384x16384 px", f"{MAX_SIDE} px limit"],
    ),
    "wide.nii.gz": (
        lambda d: _nifti(d / "wide.nii.gz", np.zeros((5000, 8, 2), np.uint8)),
        ["5000x8 px", f"{MAX_SIDE} px limit"],
    ),
    "p9000.png": (lambda d: _png_header(d / "p9000.png", 9000, 9000), ["9000x9000 px"]),
    "p16384.png": (lambda d: _png_header(d / "p16384.png", 16384, 16384), ["16384x16384 px"]),
    "p4097.png": (lambda d: _png_header(d / "p4097.png", 4097, 3), ["3x4097 px slices"]),
}


@pytest.mark.parametrize("name", sorted(SIZE_CASES))
def test_claimed_size_is_refused_fast_without_allocating(name, tmp_path):
    build, words = SIZE_CASES[name]
    path = build(tmp_path)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        _refused(path, *words)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5 and peak < 8 * 2**20, (elapsed, peak)


@FAST
@given(
    shape=st.lists(st.integers(1, 32767), min_size=3, max_size=4).map(tuple),
    gz=st.booleans(),
    dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.float64]),
)
def test_any_claimed_shape_beyond_the_file_is_refused_without_allocating(shape, gz, dtype):
    with tempfile.TemporaryDirectory() as d:
        path = _claiming(Path(d) / ("c.nii.gz" if gz else "c.nii"), shape, dtype)
        tracemalloc.start()
        try:
            with pytest.raises(DataError) as err:
                _read(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert str(path) in str(err.value) and peak < 8 * 2**20, (str(err.value), peak)


def test_picture_at_the_side_limit_is_read(tmp_path):
    from PIL import Image as PILImage

    path = tmp_path / "edge.png"
    PILImage.fromarray(np.full((2, MAX_SIDE), 7, np.uint8)).save(path)
    assert _read(path).array.shape == (2, MAX_SIDE)


# ---------------------------------------------------------------------- 3. DICOM series geometry
def _series(folder: Path, n: int = 6, z=None, edit=None, prefix: str = "", uid=None) -> Path:
    stored = np.arange(n * 4 * 5, dtype=np.uint16).reshape(n, 4, 5) + 1000
    z = [2.5 * k for k in range(n)] if z is None else z

    def change(ds, k):
        if uid is not None:
            ds.SeriesInstanceUID = uid
        if edit is not None:
            edit(ds, k)

    with warnings.catch_warnings():  # pydicom warns when a test writes a broken tag
        warnings.simplefilter("ignore")
        return write_dicom_series(
            folder, stored, z, prefix=prefix, edit=change, enforce_file_format=False
        )


def _two_series(folder: Path) -> Path:
    _series(folder, 4, prefix="a", uid="1.2.3.1")
    return _series(folder, 3, prefix="b", uid="1.2.3.2")


def _tag(name, value, only=None):
    def edit(ds, k):
        if only is None or k == only:
            setattr(ds, name, value)

    return edit


DICOM_BAD = {
    "two_series": (_two_series, ["2 DICOM series", "4, 3 slices", "own folder"]),
    "iop_not_unit": (
        lambda f: _series(f, edit=_tag("ImageOrientationPatient", [2, 0, 0, 0, 1, 0])),
        ["ImageOrientationPatient", "unit"],
    ),
    "iop_not_orthogonal": (
        lambda f: _series(f, edit=_tag("ImageOrientationPatient", [1, 0, 0, 0.1, 0.995, 0])),
        ["orthogonal"],
    ),
    "iop_five_values": (
        lambda f: _series(f, edit=_tag("ImageOrientationPatient", [1, 0, 0, 0, 1])),
        ["ImageOrientationPatient", "6 finite"],
    ),
    "iop_nan_one_slice": (
        lambda f: _series(f, edit=_tag("ImageOrientationPatient", [1, 0, 0, 0, 1, "nan"], 3)),
        ["ImageOrientationPatient", "finite"],
    ),
    "iop_mixed": (
        lambda f: _series(f, edit=_tag("ImageOrientationPatient", [0, 1, 0, 1, 0, 0], 2)),
        ["different orientations"],
    ),
    "spacing_zero": (lambda f: _series(f, edit=_tag("PixelSpacing", [0, 0.7])), ["PixelSpacing"]),
    "spacing_negative": (
        lambda f: _series(f, edit=_tag("PixelSpacing", [0.7, -0.7], 1)),
        ["PixelSpacing", "> 0"],
    ),
    "spacing_nan": (
        lambda f: _series(f, edit=_tag("PixelSpacing", ["nan", 0.7])),
        ["PixelSpacing", "finite"],
    ),
    "spacing_mixed": (
        lambda f: _series(f, edit=_tag("PixelSpacing", [0.5, 0.5], 4)),
        ["different pixel spacings"],
    ),
    "position_nan": (
        lambda f: _series(f, edit=_tag("ImagePositionPatient", [0, "nan", 5], 2)),
        ["ImagePositionPatient", "finite"],
    ),
    "position_two_values": (
        lambda f: _series(f, edit=_tag("ImagePositionPatient", [0, 0])),
        ["ImagePositionPatient"],
    ),
    "duplicate_position": (
        lambda f: _series(f, z=[0.0, 2.5, 5.0, 5.0, 7.5, 10.0]),
        ["share one position"],
    ),
    "missing_slice": (
        lambda f: _series(f, z=[0.0, 2.5, 5.0, 10.0, 12.5, 15.0]),
        ["slice spacing not uniform", "a 5 mm gap after slice 3", "others are 2.5 mm", "missing"],
    ),
    "extra_slice": (
        lambda f: _series(f, z=[0.0, 2.5, 5.0, 6.0, 7.5, 10.0]),
        ["slice spacing not uniform", "1 mm gap after slice 3"],
    ),
    "too_wide": (
        lambda f: write_dicom_series(f, np.zeros((1, 2, MAX_SIDE + 1), np.uint16), [0.0]),
        [f"{MAX_SIDE} px limit"],
    ),
}


@pytest.mark.parametrize("case", sorted(DICOM_BAD))
def test_dicom_series_geometry_is_validated(case, tmp_path):
    build, words = DICOM_BAD[case]
    folder = build(tmp_path / case)
    _refused(folder, *words)


@pytest.mark.parametrize(
    "slope, intercept, dtype",
    [(1, -1024, np.int16), (2, -1024, np.int16), (0.5, -1024, np.float32), (1, 40000, np.float32)],
)
def test_dicom_values_are_rescaled_exactly_into_the_smallest_type(
    slope, intercept, dtype, tmp_path
):
    def rescale(ds, k):
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept

    folder = _series(tmp_path / "s", edit=rescale)
    image = _read(folder)
    stored = np.arange(6 * 4 * 5).reshape(6, 4, 5) + 1000
    assert image.array.dtype == dtype and image.array.shape == (5, 4, 6)
    np.testing.assert_array_equal(image.array, (stored * slope + intercept).transpose(2, 1, 0))
    assert image.spacing == pytest.approx((0.6, 0.8, 2.5))


def test_dicom_series_memory_peaks_at_the_volume_plus_a_slice(tmp_path):
    n, rows, cols = 32, 256, 256
    stored = np.random.default_rng(0).integers(0, 2000, (n, rows, cols)).astype(np.uint16)
    folder = write_dicom_series(tmp_path / "s", stored, [2.5 * k for k in range(n)])
    tracemalloc.start()
    try:
        image = _read(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.array.dtype == np.int16
    np.testing.assert_array_equal(image.array[:, :, 7], stored[7].T.astype(np.int16) - 1024)
    assert peak < 1.6 * image.array.nbytes, peak / image.array.nbytes  # was ~14x


# --------------------------------------------------------------------------- 4. NIfTI geometry
@pytest.mark.parametrize(
    "zooms",
    [
        (0.01, 0.01, 0.01),
        (0.001, 0.001, 0.002),
        (1e-5, 1e-5, 1e-5),
        (1e-4, 1e-4, 0.5),
        (0.8, 0.8, 5.0),
    ],
)
def test_small_voxels_are_accepted_with_exact_spacing(zooms, tmp_path):
    volume = np.zeros((4, 5, 3), np.int16)
    image = _read(_nifti(tmp_path / "micro.nii.gz", volume, np.diag([*zooms, 1.0])))
    assert image.spacing == tuple(float(np.float32(z)) for z in zooms)  # as stored, exactly
    oblique = np.diag([*zooms, 1.0])
    oblique[:3, :3] = _rotation(0.3) @ oblique[:3, :3]  # the test is scale-free, not axis-bound
    image = _read(_nifti(tmp_path / "oblique.nii.gz", volume, oblique))
    assert image.spacing == pytest.approx(zooms, rel=1e-6)


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _degenerate(kind: str) -> np.ndarray:
    a = np.diag([0.01, 0.01, 0.01, 1.0])
    if kind == "zero_column":
        a[:, 1] = 0
    elif kind == "parallel_columns":
        a[:3, 2] = a[:3, 0] * 3
    elif kind == "nearly_parallel":
        a[:3, 2] = a[:3, 0] + [0, 1e-9, 0]
    elif kind == "nan_entry":
        a[0, 1] = np.nan
    elif kind == "inf_offset":
        a[2, 3] = np.inf
    return a


@pytest.mark.parametrize(
    "kind", ["zero_column", "parallel_columns", "nearly_parallel", "nan_entry", "inf_offset"]
)
def test_degenerate_affine_is_refused(kind, tmp_path):
    path = tmp_path / f"{kind}.nii"
    # Written through the raw sform so nibabel stores the broken affine as is.
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4, 4, 3))
    hdr.set_data_dtype(np.int16)
    hdr["magic"], hdr["vox_offset"], hdr["sform_code"], hdr["qform_code"] = b"n+1", 352, 1, 0
    a = _degenerate(kind)
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = a[0], a[1], a[2]
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 96)
    _refused(path, "invalid affine")


@pytest.mark.parametrize("form", ["qform", "no_form"])
@pytest.mark.parametrize("pixdim", [0.0, float("nan"), -2.0])
def test_pixdim_gives_a_positive_finite_spacing_or_an_error(form, pixdim, tmp_path):
    raw = nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), np.eye(4)).to_bytes()
    data = bytearray(raw)
    struct.pack_into("<hh", data, 252, 1 if form == "qform" else 0, 0)  # qform_code, sform_code
    struct.pack_into("<f", data, 80, pixdim)  # pixdim[1]
    path = tmp_path / f"pix_{form}.nii"
    path.write_bytes(bytes(data))
    if pixdim == -2.0:
        image = _read(path)
        assert image.spacing == (2.0, 1.0, 1.0)
        assert np.isfinite(image.affine).all() and np.linalg.det(image.affine[:3, :3]) != 0
    else:
        _refused(path, "pixdim" if pixdim == 0 else "non-finite")


# ------------------------------------------------------------------ 5. (X, Y, Z, 1) NIfTI masks
@pytest.mark.parametrize("disk_shape", [(8, 7, 3), (8, 7, 3, 1), (8, 7, 3, 1, 1)])
def test_masks_keep_the_inputs_stored_shape(disk_shape, tmp_path):
    arr = np.arange(np.prod(disk_shape), dtype=np.int16).reshape(disk_shape)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    image = _read(_nifti(tmp_path / "ct.nii.gz", arr, affine))
    assert image.array.shape == (8, 7, 3) and image.disk_shape == disk_shape
    mask = (image.array % 3 == 0).astype(np.uint8)
    out = nib.load(str(write_mask(mask, image, tmp_path / "mask.nii.gz")))
    assert out.shape == disk_shape and out.header.get_data_shape() == disk_shape
    np.testing.assert_array_equal(np.asanyarray(out.dataobj).reshape(8, 7, 3), mask)
    np.testing.assert_allclose(out.affine, affine)
    back = _read(tmp_path / "mask.nii.gz")
    assert back.array.shape == (8, 7, 3) and back.disk_shape == disk_shape


def test_masks_of_dicom_refs_stay_3d(tmp_path):
    image = _read(_series(tmp_path / "s"))
    out = write_mask(np.ones(image.array.shape, np.uint8), image, tmp_path / "m.nii.gz")
    assert nib.load(str(out)).shape == image.array.shape == (5, 4, 6)


# ------------------------------------------------------------------------------- 6. pictures
GREYS = [0, 40, 90, 200, 255]


def _palette_png(path: Path, mode: str = "P") -> Path:
    from PIL import Image as PILImage

    indices = np.array([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]], np.uint8)
    pic = PILImage.fromarray(indices, mode="L").convert("P")
    pic.putpalette([v for g in GREYS for v in (g, g, g)])
    pic.putdata(indices.ravel().tolist())
    # With a tRNS chunk (transparent index 0) the grey still comes from the palette.
    if mode == "P+tRNS":
        pic.save(path, transparency=0)
    else:
        pic.save(path)
    return path


@pytest.mark.parametrize("mode", ["P", "P+tRNS"])
def test_palette_png_is_grey_as_image_and_indices_as_labels(mode, tmp_path):
    path = _palette_png(tmp_path / "palette.png", mode)
    indices = np.array([[0, 1, 2, 3, 4], [4, 3, 2, 1, 0]])
    grey = _read(path).array
    np.testing.assert_array_equal(grey, np.array(GREYS)[indices])
    labels = _read(path, labels=True).array
    np.testing.assert_array_equal(labels, indices)


@pytest.mark.parametrize(
    "mode, values, expected",
    [
        ("I;16", np.array([[0, 40000, 65535]], np.uint16), [[0, 40000, 65535]]),
        ("L", np.array([[3, 250, 7]], np.uint8), [[3, 250, 7]]),
        ("LA", np.array([[[10, 0], [20, 128], [30, 255]]], np.uint8), [[10, 20, 30]]),
        (
            "RGBA",
            np.array([[[90, 90, 90, 0], [200, 200, 200, 9], [0, 0, 0, 255]]], np.uint8),
            [[90, 200, 0]],
        ),
        ("1", np.array([[True, False, True]]), [[1, 0, 1]]),
    ],
)
def test_picture_modes_keep_or_convert_values(mode, values, expected, tmp_path):
    from PIL import Image as PILImage

    path = tmp_path / "pic.png"
    pic = PILImage.fromarray(values)
    assert pic.mode == mode
    pic.save(path)
    for labels in (False, True):
        array = _read(path, labels=labels).array
        np.testing.assert_array_equal(array, expected)
        assert array.ndim == 2


def test_grey_jpeg_is_read(tmp_path):
    from PIL import Image as PILImage

    PILImage.fromarray(np.full((9, 11), 128, np.uint8)).save(tmp_path / "g.jpg", quality=95)
    array = _read(tmp_path / "g.jpg").array
    assert array.shape == (9, 11) and abs(int(array.mean()) - 128) <= 1


# ------------------------------------------------------------- 7. values, dtypes and scaling
BAD_VALUES = {
    "complex64": (np.ones((4, 4, 3), np.complex64), {}, "unsupported voxel type"),
    "complex128": (np.ones((4, 4, 3), np.complex128), {}, "unsupported voxel type"),
    "rgb24": (
        np.zeros((4, 4, 3), [("R", "u1"), ("G", "u1"), ("B", "u1")]),
        {},
        "unsupported voxel type",
    ),
    "nan": (np.full((4, 4, 3), np.nan, np.float32), {}, "NaN/inf"),
    "inf64": (np.full((4, 4, 3), -np.inf), {}, "NaN/inf"),
    "huge64": (np.full((4, 4, 3), 1e300), {}, "float32 range"),
    "slope_inf": (np.ones((4, 4, 3), np.int16), {"scl_slope": np.inf}, "scl_slope=inf"),
    "slope_minus_inf": (np.ones((4, 4, 3), np.int16), {"scl_slope": -np.inf}, "scl_slope=-inf"),
    "inter_inf": (np.ones((4, 4, 3), np.int16), {"scl_slope": 2, "scl_inter": np.inf}, "inter"),
    "inter_nan": (np.ones((4, 4, 3), np.int16), {"scl_slope": 2, "scl_inter": np.nan}, "inter"),
    "slope_overflows": (
        np.full((4, 4, 3), 30000, np.int16),
        {"scl_slope": 1e38},
        "inf voxel(s) after scaling by scl_slope=1e+38",
    ),
    "float_slope_overflows": (
        np.full((4, 4, 3), 3e38, np.float32),
        {"scl_slope": 10},
        "after scaling",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_bad_values_dtypes_and_scaling_are_errors_not_warnings(kind, tmp_path):
    array, fields, words = BAD_VALUES[kind]
    _refused(_nifti(tmp_path / f"{kind}.nii", array, **fields), words)


@pytest.mark.parametrize(
    "array, fields, dtype, expected",
    [
        (np.full((4, 4, 3), 1000, np.uint16), {"scl_slope": 1, "scl_inter": -1024}, np.int16, -24),
        (np.full((4, 4, 3), 3, np.int16), {"scl_slope": 0.5, "scl_inter": 1}, np.float32, 2.5),
        (np.full((4, 4, 3), 7, np.int16), {"scl_slope": np.nan, "scl_inter": 5}, np.int16, 7),
        (np.full((4, 4, 3), 7, np.int16), {"scl_slope": 0, "scl_inter": 5}, np.int16, 7),
        (np.full((4, 4, 3), 2**62, np.int64), {}, np.int64, 2**62),
        (np.full((4, 4, 3), -3e38, np.float64), {}, np.float64, -3e38),
    ],
)
def test_valid_scaling_and_wide_dtypes_are_read(array, fields, dtype, expected, tmp_path):
    image = _read(_nifti(tmp_path / "v.nii.gz", array, **fields))
    assert image.array.dtype == dtype and (image.array == expected).all()


SPECIAL = [0.0, 1.0, -1.0, 0.5, 1e-30, 1e30, 3e38, -3e38, np.nan, np.inf, -np.inf]


@FAST
@given(
    values=st.lists(st.sampled_from(SPECIAL), min_size=1, max_size=6),
    slope=st.sampled_from(SPECIAL),
    inter=st.sampled_from(SPECIAL),
    dtype=st.sampled_from([np.float32, np.float64, np.int16, np.uint8]),
)
def test_any_values_and_scaling_give_an_error_or_finite_float32_range_data(
    values, slope, inter, dtype
):
    data = np.resize(np.array(values, np.float64), (2, 2, 3))
    with np.errstate(all="ignore"):
        data = data.astype(dtype) if np.dtype(dtype).kind == "f" else np.zeros((2, 2, 3), dtype)
    with tempfile.TemporaryDirectory() as d:
        path = _nifti(Path(d) / "h.nii", data, scl_slope=slope, scl_inter=inter)
        try:
            image = _read(path)
        except DataError as err:
            assert str(err).startswith(str(path)) and "\n" not in str(err)
            return
        a = image.array.astype(np.float64)
        assert np.isfinite(a).all() and np.abs(a).max() <= np.finfo(np.float32).max
