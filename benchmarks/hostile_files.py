"""Hostile scenarios: files and names, sizes and budgets, tampered checkpoints."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from hostile_common import phantom, scenario, segment_argv, write_nifti


# --------------------------------------------------------------------------- files and names
@scenario("fifo", "a FIFO given as the scan", "error")
def _(tmp, ckpt):
    fifo = tmp / "scan.nii.gz"
    os.mkfifo(fifo)
    return segment_argv(tmp, ckpt, fifo)


@scenario("dev_zero_link", "a .nii.gz symlink to /dev/zero", "error")
def _(tmp, ckpt):
    (tmp / "scan.nii.gz").symlink_to("/dev/zero")
    return segment_argv(tmp, ckpt, tmp / "scan.nii.gz")


@scenario("appledouble", "a folder with ._scan.nii.gz and .DS_Store beside a scan", "ok",
          lambda out: sorted(p.name for p in out.iterdir()) == [
              "cohort.csv", "scan_infection.nii.gz", "scan_lungs.nii.gz", "scan_overlay.png",
              "scan_report.json"])  # fmt: skip
def _(tmp, ckpt):
    src = tmp / "in"
    src.mkdir()
    write_nifti(src / "scan.nii.gz", phantom())
    (src / "._scan.nii.gz").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 200)
    (src / ".DS_Store").write_bytes(b"\x00" * 64)
    return segment_argv(tmp, ckpt, src)


@scenario("dotdot_name", "a scan named ..nii.gz", "ok",
          lambda out: not [p for p in out.iterdir() if p.name.startswith(".")])  # fmt: skip
def _(tmp, ckpt):
    return segment_argv(tmp, ckpt, write_nifti(tmp / "..nii.gz", phantom()))


@scenario("newline_name", "a scan name with a newline", "ok",
          lambda out: (out / "a_b_report.json").exists())  # fmt: skip
def _(tmp, ckpt):
    return segment_argv(tmp, ckpt, write_nifti(tmp / "a\nb.nii.gz", phantom()))


@scenario("long_name", "a 240-byte scan name", "error")
def _(tmp, ckpt):
    return segment_argv(tmp, ckpt, write_nifti(tmp / ("x" * 240 + ".nii.gz"), phantom()))


@scenario("out_is_file", "--out is an existing file", "error")
def _(tmp, ckpt):
    (tmp / "out").write_text("x")
    return segment_argv(tmp, ckpt, write_nifti(tmp / "scan.nii.gz", phantom()))


@scenario("out_is_input", "--out is the input folder", "error")
def _(tmp, ckpt):
    src = tmp / "in"
    src.mkdir()
    write_nifti(src / "scan.nii.gz", phantom())
    return segment_argv(tmp, ckpt, src, out=src)


@scenario("stale_partial", "--out holds a .partial folder of a killed run", "ok",
          lambda out: not [p for p in out.iterdir() if p.name.startswith(".")])  # fmt: skip
def _(tmp, ckpt):
    left = tmp / "out" / ".scan.k1ll3d.partial"
    left.mkdir(parents=True)
    (left / "scan_lungs.nii.gz").write_bytes(b"half")
    t = time.time() - 3600
    os.utime(left, (t, t))
    return segment_argv(tmp, ckpt, write_nifti(tmp / "scan.nii.gz", phantom()))


# ------------------------------------------------------------------------- sizes and budgets
@scenario("nifti_4gib_claim", "a 78-byte .nii.gz whose header claims 4 GiB", "error")
def _(tmp, ckpt):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2048, 2048, 512))
    hdr.set_data_dtype(np.float32)
    raw = hdr.binaryblock + b"\x00" * 4
    (tmp / "scan.nii.gz").write_bytes(gzip.compress(raw))
    return segment_argv(tmp, ckpt, tmp / "scan.nii.gz")


@scenario("png_9000", "an 84 KB 9000x9000 PNG", "error")
def _(tmp, ckpt):
    from PIL import Image

    Image.new("L", (9000, 9000)).save(tmp / "big.png", optimize=True)
    return segment_argv(tmp, ckpt, tmp / "big.png")


@scenario("nifti_16384_slice", "a 16384x16384x1 NIfTI", "error")
def _(tmp, ckpt):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((16384, 16384, 1))
    hdr.set_data_dtype(np.uint8)
    (tmp / "scan.nii").write_bytes(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 1024)
    return segment_argv(tmp, ckpt, tmp / "scan.nii")


def _tampered(tmp: Path, ckpt: Path, write=None, **meta_changes) -> list[str]:
    """``segment`` with a copy of ``ckpt`` whose weights ``write(state, path)`` rewrote (else
    copied) and whose JSON got ``meta_changes``, its sha256 made to match (so only the
    structural checks can catch it)."""
    import hashlib
    import shutil

    from safetensors.torch import load_file

    w = tmp / "m.safetensors"
    if write is None:
        shutil.copy(ckpt, w)
    else:
        write(load_file(str(ckpt)), w)
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    meta.update(meta_changes, weights=w.name, sha256=hashlib.sha256(w.read_bytes()).hexdigest())
    w.with_suffix(".json").write_text(json.dumps(meta))
    return segment_argv(tmp, w, write_nifti(tmp / "scan.nii.gz", phantom()))


@scenario("widened_config", "a checkpoint JSON that widens the model 1000x", "error")
def _(tmp, ckpt):
    cfg = json.loads(ckpt.with_suffix(".json").read_text())["model_config"]
    return _tampered(tmp, ckpt, model_config={**cfg, "encoder_channels": [4096] + [8192] * 4})


@scenario("weights_dev_zero", "a checkpoint whose weights are /dev/zero", "error")
def _(tmp, ckpt):
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    meta["weights"] = "m.safetensors"
    (tmp / "m.json").write_text(json.dumps(meta))
    (tmp / "m.safetensors").symlink_to("/dev/zero")
    return segment_argv(tmp, tmp / "m.safetensors", write_nifti(tmp / "scan.nii.gz", phantom()))


@scenario("weights_int8", "weights stored as int8 with a matching sha256", "error")
def _(tmp, ckpt):
    import torch
    from safetensors.torch import save_file

    def int8(state, path):
        save_file({k: v.to(torch.int8) for k, v in state.items()}, str(path))

    return _tampered(tmp, ckpt, int8)


@scenario("weights_pickle", "a .safetensors that is a torch pickle, sha256 matching", "error")
def _(tmp, ckpt):
    import torch

    return _tampered(tmp, ckpt, lambda state, path: torch.save(state, str(path)))


@scenario("checkpoint_empty_arg", '--checkpoint ""', "error")
def _(tmp, ckpt):
    return segment_argv(tmp, "", write_nifti(tmp / "scan.nii.gz", phantom()))


@scenario("checkpoint_folder", "--checkpoint . (a folder)", "error")
def _(tmp, ckpt):
    return segment_argv(tmp, ".", write_nifti(tmp / "scan.nii.gz", phantom()))


@scenario("json_threshold_text", 'checkpoint JSON threshold "abc"', "error")
def _(tmp, ckpt):
    import shutil

    w = tmp / "m.safetensors"
    shutil.copy(ckpt, w)
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    meta["postprocessing"]["threshold"] = "abc"
    meta["weights"] = w.name
    w.with_suffix(".json").write_text(json.dumps(meta))
    return segment_argv(tmp, w, write_nifti(tmp / "scan.nii.gz", phantom()))
