"""Hostile scenarios of round three (issue 39): inputs hidden beside others, slow junk, zips
given to ``segment``, options out of range, units, EXIF orientation and values that are no CT."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

from hostile_common import phantom, scenario, segment_argv, write_nifti, write_series


def _reports(*names: str):
    """A check: the output folder holds exactly these cases' reports."""
    want = sorted(f"{n}_report.json" for n in names)
    return lambda out: sorted(p.name for p in out.glob("*_report.json")) == want


def _png(path: Path, array: np.ndarray, orientation: int | None = None, fmt: str = "PNG") -> Path:
    from PIL import Image

    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(array.astype(np.uint8)).save(path, format=fmt, exif=exif.tobytes())
    return path


def _slice8() -> np.ndarray:
    return phantom()[:, :, 1].T.clip(0, 255)


# ---------------------------------------------------------------- inputs beside each other
@scenario("dicom_beside_png", "a 4-slice DICOM series folder that also holds preview.png", "ok",
          _reports("study", "preview"))  # fmt: skip
def _(tmp, ckpt):
    study = write_series(tmp / "study", phantom((32, 32, 4)))
    _png(study / "preview.png", _slice8())
    return segment_argv(tmp, ckpt, study)


@scenario("nifti_beside_dicom", "a NIfTI among the .dcm files of a series", "ok",
          _reports("study", "scan"))  # fmt: skip
def _(tmp, ckpt):
    study = write_series(tmp / "study", phantom((32, 32, 4)))
    write_nifti(study / "scan.nii.gz", phantom())
    return segment_argv(tmp, ckpt, study)


# ------------------------------------------------------------------------------ slow junk
@scenario("zero_dcm_40mb", "a folder holding one 40 MB all-zero x.dcm", "error")
def _(tmp, ckpt):
    (tmp / "zero").mkdir()
    with open(tmp / "zero" / "x.dcm", "wb") as f:
        f.truncate(40 << 20)
    return segment_argv(tmp, ckpt, tmp / "zero")


def _zip(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


@scenario("zip_zero_entry_60mb", "a 59 KB zip of one 60 MB all-zero entry", "error")
def _(tmp, ckpt):
    return segment_argv(tmp, ckpt, _zip(tmp / "x.zip", [("x.dcm", b"\0" * (60 << 20))]))


# ------------------------------------------------------------------------ zips to segment
@scenario("zip_dicom_series", "covseg segment x.zip of a DICOM series", "ok", _reports("x"))
def _(tmp, ckpt):
    series = write_series(tmp / "series", phantom((32, 32, 4)))
    entries = [(f"export/{p.name}", p.read_bytes()) for p in sorted(series.iterdir())]
    return segment_argv(tmp, ckpt, _zip(tmp / "x.zip", entries))


@scenario("zip_pngs", "covseg segment x.zip of two PNG slices", "ok", _reports("a", "b"))
def _(tmp, ckpt):
    entries = [(f"p/{n}.png", _png(tmp / f"{n}.png", _slice8()).read_bytes()) for n in "ab"]
    return segment_argv(tmp, ckpt, _zip(tmp / "x.zip", entries))


@scenario("zip_traversal", "a zip whose entry is ../evil.nii.gz", "error")
def _(tmp, ckpt):
    nifti = write_nifti(tmp / "s.nii.gz", phantom()).read_bytes()
    return segment_argv(tmp, ckpt, _zip(tmp / "x.zip", [("../evil.nii.gz", nifti)]))


# ---------------------------------------------------------------------- options out of range
@scenario("opset_1", "covseg export-onnx m.onnx --opset 1", "error")
def _(tmp, ckpt):
    return ["export-onnx", str(tmp / "m.onnx"), "--checkpoint", str(ckpt), "--opset", "1"]


@scenario("synth_size_60000", "covseg synth OUT --size 60000", "error")
def _(tmp, ckpt):
    return ["synth", str(tmp / "synth"), "--size", "60000"]


@scenario("out_empty", 'covseg segment scan --out ""', "error")
def _(tmp, ckpt):
    return [*segment_argv(tmp, ckpt, write_nifti(tmp / "scan.nii.gz", phantom()))[:2], "--out",
            "", "--checkpoint", str(ckpt)]  # fmt: skip


@scenario("batch_size_0", "covseg segment --batch-size 0", "error")
def _(tmp, ckpt):
    return [*segment_argv(tmp, ckpt, write_nifti(tmp / "s.nii.gz", phantom())), "--batch-size", "0"]


# ------------------------------------------------------------- units, orientation, values
def _um(zoom: float):
    def build(tmp, ckpt):
        img = nib.Nifti1Image(phantom(), np.diag([zoom, zoom, 2.5 * zoom / 0.8, 1.0]))
        img.header["xyzt_units"] = 3  # micrometres
        nib.save(img, str(tmp / "scan.nii.gz"))
        return segment_argv(tmp, ckpt, tmp / "scan.nii.gz")

    return build


scenario("nifti_micrometres", "a NIfTI with 800 µm voxels and xyzt_units = µm", "ok",
         lambda out: abs(json.loads((out / "scan_report.json").read_text())["voxel_volume_ml"]
                         - 0.8 * 0.8 * 2.5 / 1000) < 1e-9)(_um(800.0))  # fmt: skip
scenario("nifti_um_mislabelled", "a NIfTI with 0.8 voxels but xyzt_units = µm", "error")(_um(0.8))


@scenario("exif_orientation_6", "a JPEG with EXIF Orientation=6 (stored sideways)", "ok",
          lambda out: np.asarray(__import__("PIL.Image").Image.open(out / "slice_lungs.png"))
          .shape == (32, 40))  # fmt: skip
def _(tmp, ckpt):
    upright = np.zeros((32, 40), np.uint8)
    upright[:, :32] = _slice8()
    return segment_argv(tmp, ckpt, _png(tmp / "slice.jpg", np.rot90(upright), 6, "JPEG"))


@scenario("float_0_800", "a float volume in [0, 800] (MR-like, no air)", "error")
def _(tmp, ckpt):
    v = np.random.default_rng(0).uniform(0, 800, (32, 32, 3)).astype(np.float32)
    return segment_argv(tmp, ckpt, write_nifti(tmp / "scan.nii.gz", v))


# ------------------------------------------------------------------- many cases, one name
def _one_set(out: Path) -> bool:
    """The folder holds the NIfTI's set of files for case ``scan``, nothing of the PNG's."""
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("scan_"))
    report = json.loads((out / "scan_report.json").read_text())
    return report["input"].endswith("scan.nii.gz") and not any(n.endswith(".png") and
                                                                "overlay" not in n for n in names)  # fmt: skip


@scenario("png_then_nifti_one_case", "scan.png, then n/scan.nii.gz into the same --out", "ok",
          _one_set)  # fmt: skip
def _(tmp, ckpt):
    import subprocess
    import sys

    _png(tmp / "scan.png", _slice8())
    (tmp / "n").mkdir()
    write_nifti(tmp / "n" / "scan.nii.gz", phantom())
    first = [sys.executable, "-m", "covseg", *segment_argv(tmp, ckpt, tmp / "scan.png")]
    subprocess.run(first, check=True, capture_output=True)
    return segment_argv(tmp, ckpt, tmp / "n" / "scan.nii.gz")


@scenario("png_8x8_1000", "a folder of 1000 PNG slices of 8x8 (one case each)", "ok",
          lambda out: len(list(out.glob("*_report.json"))) == 1000)  # fmt: skip
def _(tmp, ckpt):
    (tmp / "many").mkdir()
    tile = _slice8()[::4, ::4][:8, :8]
    for k in range(1000):
        _png(tmp / "many" / f"s{k:04d}.png", np.roll(tile, k % 8, axis=1))
    return segment_argv(tmp, ckpt, tmp / "many")
