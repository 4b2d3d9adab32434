"""Hostile scenarios: geometry and intensities of the images."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from hostile_common import phantom, scenario, segment_argv, write_nifti, write_series


# ------------------------------------------------------------------------------ geometry
@scenario("dicom_two_series", "two DICOM series in one folder", "error")
def _(tmp, ckpt):
    s = write_series(tmp / "series", phantom((32, 32, 4)), prefix="a")
    write_series(s, phantom((32, 32, 3)), z0=1.25, prefix="b")
    return segment_argv(tmp, ckpt, s)


@scenario("dicom_missing_slice", "a DICOM series with one slice removed", "error")
def _(tmp, ckpt):
    s = write_series(tmp / "series", phantom((32, 32, 6)))
    sorted(s.iterdir())[2].unlink()
    return segment_argv(tmp, ckpt, s)


@scenario("nifti_10um", "a NIfTI with 10 µm voxels", "ok",
          lambda out: json.loads((out / "scan_report.json").read_text())["lung_volume_ml"]
          is not None)  # fmt: skip
def _(tmp, ckpt):
    return segment_argv(
        tmp, ckpt, write_nifti(tmp / "scan.nii.gz", phantom(), np.diag([0.01] * 3 + [1]))
    )


@scenario("nifti_xyz1", "an (X, Y, Z, 1) NIfTI", "ok",
          lambda out: nib.load(str(out / "scan_lungs.nii.gz")).shape == (32, 32, 3, 1))  # fmt: skip
def _(tmp, ckpt):
    return segment_argv(tmp, ckpt, write_nifti(tmp / "scan.nii.gz", phantom()[..., None]))


@scenario("nifti_zero_pixdim", "a NIfTI without s/qform whose pixdim[2] is 0", "error")
def _(tmp, ckpt):
    img = nib.Nifti1Image(phantom(), None)
    img.header.set_sform(None, code=0)
    img.header.set_qform(None, code=0)
    img.header["pixdim"][2] = 0.0
    nib.save(img, str(tmp / "scan.nii.gz"))
    return segment_argv(tmp, ckpt, tmp / "scan.nii.gz")


# ------------------------------------------------------------------------------ intensities
@scenario("hu_plus_1024", "stored values without the rescale intercept (HU + 1024)", "error")
def _(tmp, ckpt):
    return segment_argv(
        tmp, ckpt, write_nifti(tmp / "scan.nii.gz", (phantom() + 1024).astype(np.int16))
    )


@scenario("float_unit", "a float scan scaled to [0, 1]", "error")
def _(tmp, ckpt):
    v = ((phantom().astype(np.float32) + 1250) / 1500).clip(0, 1)
    return segment_argv(tmp, ckpt, write_nifti(tmp / "scan.nii.gz", v))


@scenario("palette_png", "a palette (P mode) PNG slice", "ok",
          lambda out: (out / "slice_lungs.png").exists())  # fmt: skip
def _(tmp, ckpt):
    from PIL import Image

    from covseg.data.preprocess import normalize_intensity

    g = (normalize_intensity(phantom()[:, :, 1].T, "hu") * 255).astype(np.uint8)
    Image.fromarray(g).convert("P", palette=Image.ADAPTIVE, colors=64).save(tmp / "slice.png")
    return segment_argv(tmp, ckpt, tmp / "slice.png")


@scenario("nifti_huge_floats", "a float64 NIfTI with values of 1e300", "error")
def _(tmp, ckpt):
    v = phantom().astype(np.float64)
    v[0, 0, 0] = 1e300
    return segment_argv(tmp, ckpt, write_nifti(tmp / "scan.nii.gz", v))
