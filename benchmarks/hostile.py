#!/usr/bin/env python
"""A hostile user's probe of the ``covseg`` CLI: odd, broken, huge and tricky inputs, each run
in a fresh subprocess, classified by what a user sees.

Every scenario builds its files in a temporary folder and runs one command (``covseg segment``
with a tiny random-init checkpoint unless it says otherwise), with a wall-clock limit and the
peak RSS of the child measured (``resource.getrusage(RUSAGE_CHILDREN)``). Outcomes:

- ``ok``: exit 0 and the scenario's check of the result passed (the right masks' shape, ...);
- ``error``: exit 2 with exactly one stderr line that names the file and the problem;
- ``BAD``: anything else: a traceback, another exit code, several lines, a hang (timeout), a
  wrong result, files left behind (``.partial`` / temporary folders), more than 1 GB.

    .venv/bin/python benchmarks/hostile.py            # the table; exit 1 if any BAD
    .venv/bin/python benchmarks/hostile.py --only fifo,nifti_4gib_claim

The scenarios are the classes of the reliability issue (round two): they are the examples, the
tests in ``tests/test_reliability_*.py`` cover the classes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

LIMIT_S = 60
LIMIT_RSS_MB = 1024


@dataclass
class Scenario:
    name: str
    what: str
    build: Callable[[Path, Path], list[str]]  # (tmp, checkpoint) -> argv after "covseg"
    expect: str  # "ok" or "error"
    check: Callable[[Path], bool] | None = None  # for "ok": the result is right


def _phantom(shape=(32, 32, 3)) -> np.ndarray:
    from covseg.data.synthetic import make_phantom

    return make_phantom(0, shape)[0].astype(np.int16)


def _nifti(path: Path, vol: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine),
             str(path))  # fmt: skip
    return path


def _seg(tmp: Path, ckpt: Path | str, *inputs: Path | str, out: Path | None = None) -> list[str]:
    return ["segment", *map(str, inputs), "--out", str(out or tmp / "out"),
            "--checkpoint", str(ckpt), "--device", "cpu"]  # fmt: skip


def _dicom(folder: Path, vol: np.ndarray, z0: float = 0.0, prefix: str = "") -> Path:
    from pydicom.uid import generate_uid

    from _dicom import hu_to_stored, write_dicom_series

    uid = generate_uid()  # one series: one SeriesInstanceUID, as scanners write them

    def tag(ds, k):
        ds.SeriesInstanceUID = uid

    z = [z0 + 2.5 * k for k in range(vol.shape[2])]
    return write_dicom_series(folder, hu_to_stored(vol), z, prefix=prefix, edit=tag)


SCENARIOS: list[Scenario] = []


def scenario(name: str, what: str, expect: str, check=None):
    def add(build):
        SCENARIOS.append(Scenario(name, what, build, expect, check))
        return build

    return add


# --------------------------------------------------------------------------- files and names
@scenario("fifo", "a FIFO given as the scan", "error")
def _(tmp, ckpt):
    fifo = tmp / "scan.nii.gz"
    os.mkfifo(fifo)
    return _seg(tmp, ckpt, fifo)


@scenario("dev_zero_link", "a .nii.gz symlink to /dev/zero", "error")
def _(tmp, ckpt):
    (tmp / "scan.nii.gz").symlink_to("/dev/zero")
    return _seg(tmp, ckpt, tmp / "scan.nii.gz")


@scenario("appledouble", "a folder with ._scan.nii.gz and .DS_Store beside a scan", "ok",
          lambda out: sorted(p.name for p in out.iterdir()) == [
              "scan_infection.nii.gz", "scan_lungs.nii.gz", "scan_overlay.png",
              "scan_report.json"])  # fmt: skip
def _(tmp, ckpt):
    src = tmp / "in"
    src.mkdir()
    _nifti(src / "scan.nii.gz", _phantom())
    (src / "._scan.nii.gz").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 200)
    (src / ".DS_Store").write_bytes(b"\x00" * 64)
    return _seg(tmp, ckpt, src)


@scenario("dotdot_name", "a scan named ..nii.gz", "ok",
          lambda out: not [p for p in out.iterdir() if p.name.startswith(".")])  # fmt: skip
def _(tmp, ckpt):
    return _seg(tmp, ckpt, _nifti(tmp / "..nii.gz", _phantom()))


@scenario("newline_name", "a scan name with a newline", "ok",
          lambda out: (out / "a_b_report.json").exists())  # fmt: skip
def _(tmp, ckpt):
    return _seg(tmp, ckpt, _nifti(tmp / "a\nb.nii.gz", _phantom()))


@scenario("long_name", "a 240-byte scan name", "error")
def _(tmp, ckpt):
    return _seg(tmp, ckpt, _nifti(tmp / ("x" * 240 + ".nii.gz"), _phantom()))


@scenario("out_is_file", "--out is an existing file", "error")
def _(tmp, ckpt):
    (tmp / "out").write_text("x")
    return _seg(tmp, ckpt, _nifti(tmp / "scan.nii.gz", _phantom()))


@scenario("out_is_input", "--out is the input folder", "error")
def _(tmp, ckpt):
    src = tmp / "in"
    src.mkdir()
    _nifti(src / "scan.nii.gz", _phantom())
    return _seg(tmp, ckpt, src, out=src)


@scenario("stale_partial", "--out holds a .partial folder of a killed run", "ok",
          lambda out: not [p for p in out.iterdir() if p.name.startswith(".")])  # fmt: skip
def _(tmp, ckpt):
    left = tmp / "out" / ".scan.k1ll3d.partial"
    left.mkdir(parents=True)
    (left / "scan_lungs.nii.gz").write_bytes(b"half")
    t = time.time() - 3600
    os.utime(left, (t, t))
    return _seg(tmp, ckpt, _nifti(tmp / "scan.nii.gz", _phantom()))


# ------------------------------------------------------------------------- sizes and budgets
@scenario("nifti_4gib_claim", "a 78-byte .nii.gz whose header claims 4 GiB", "error")
def _(tmp, ckpt):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2048, 2048, 512))
    hdr.set_data_dtype(np.float32)
    raw = hdr.binaryblock + b"\x00" * 4
    (tmp / "scan.nii.gz").write_bytes(gzip.compress(raw))
    return _seg(tmp, ckpt, tmp / "scan.nii.gz")


@scenario("png_9000", "an 84 KB 9000x9000 PNG", "error")
def _(tmp, ckpt):
    from PIL import Image

    Image.new("L", (9000, 9000)).save(tmp / "big.png", optimize=True)
    return _seg(tmp, ckpt, tmp / "big.png")


@scenario("nifti_16384_slice", "a 16384x16384x1 NIfTI", "error")
def _(tmp, ckpt):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((16384, 16384, 1))
    hdr.set_data_dtype(np.uint8)
    (tmp / "scan.nii").write_bytes(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 1024)
    return _seg(tmp, ckpt, tmp / "scan.nii")


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
    return _seg(tmp, w, _nifti(tmp / "scan.nii.gz", _phantom()))


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
    return _seg(tmp, tmp / "m.safetensors", _nifti(tmp / "scan.nii.gz", _phantom()))


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
    return _seg(tmp, "", _nifti(tmp / "scan.nii.gz", _phantom()))


@scenario("checkpoint_folder", "--checkpoint . (a folder)", "error")
def _(tmp, ckpt):
    return _seg(tmp, ".", _nifti(tmp / "scan.nii.gz", _phantom()))


@scenario("json_threshold_text", 'checkpoint JSON threshold "abc"', "error")
def _(tmp, ckpt):
    import shutil

    w = tmp / "m.safetensors"
    shutil.copy(ckpt, w)
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    meta["postprocessing"]["threshold"] = "abc"
    meta["weights"] = w.name
    w.with_suffix(".json").write_text(json.dumps(meta))
    return _seg(tmp, w, _nifti(tmp / "scan.nii.gz", _phantom()))


# ------------------------------------------------------------------------------ geometry
@scenario("dicom_two_series", "two DICOM series in one folder", "error")
def _(tmp, ckpt):
    s = _dicom(tmp / "series", _phantom((32, 32, 4)), prefix="a")
    _dicom(s, _phantom((32, 32, 3)), z0=1.25, prefix="b")
    return _seg(tmp, ckpt, s)


@scenario("dicom_missing_slice", "a DICOM series with one slice removed", "error")
def _(tmp, ckpt):
    s = _dicom(tmp / "series", _phantom((32, 32, 6)))
    sorted(s.iterdir())[2].unlink()
    return _seg(tmp, ckpt, s)


@scenario("nifti_10um", "a NIfTI with 10 µm voxels", "ok",
          lambda out: json.loads((out / "scan_report.json").read_text())["lung_volume_ml"]
          is not None)  # fmt: skip
def _(tmp, ckpt):
    return _seg(tmp, ckpt, _nifti(tmp / "scan.nii.gz", _phantom(), np.diag([0.01] * 3 + [1])))


@scenario("nifti_xyz1", "an (X, Y, Z, 1) NIfTI", "ok",
          lambda out: nib.load(str(out / "scan_lungs.nii.gz")).shape == (32, 32, 3, 1))  # fmt: skip
def _(tmp, ckpt):
    return _seg(tmp, ckpt, _nifti(tmp / "scan.nii.gz", _phantom()[..., None]))


@scenario("nifti_zero_pixdim", "a NIfTI without s/qform whose pixdim[2] is 0", "error")
def _(tmp, ckpt):
    img = nib.Nifti1Image(_phantom(), None)
    img.header.set_sform(None, code=0)
    img.header.set_qform(None, code=0)
    img.header["pixdim"][2] = 0.0
    nib.save(img, str(tmp / "scan.nii.gz"))
    return _seg(tmp, ckpt, tmp / "scan.nii.gz")


# ------------------------------------------------------------------------------ intensities
@scenario("hu_plus_1024", "stored values without the rescale intercept (HU + 1024)", "error")
def _(tmp, ckpt):
    return _seg(tmp, ckpt, _nifti(tmp / "scan.nii.gz", (_phantom() + 1024).astype(np.int16)))


@scenario("float_unit", "a float scan scaled to [0, 1]", "error")
def _(tmp, ckpt):
    v = ((_phantom().astype(np.float32) + 1250) / 1500).clip(0, 1)
    return _seg(tmp, ckpt, _nifti(tmp / "scan.nii.gz", v))


@scenario("palette_png", "a palette (P mode) PNG slice", "ok",
          lambda out: (out / "slice_lungs.png").exists())  # fmt: skip
def _(tmp, ckpt):
    from PIL import Image

    from covseg.data.preprocess import normalize_intensity

    g = (normalize_intensity(_phantom()[:, :, 1].T, "hu") * 255).astype(np.uint8)
    Image.fromarray(g).convert("P", palette=Image.ADAPTIVE, colors=64).save(tmp / "slice.png")
    return _seg(tmp, ckpt, tmp / "slice.png")


@scenario("nifti_huge_floats", "a float64 NIfTI with values of 1e300", "error")
def _(tmp, ckpt):
    v = _phantom().astype(np.float64)
    v[0, 0, 0] = 1e300
    return _seg(tmp, ckpt, _nifti(tmp / "scan.nii.gz", v))


# ------------------------------------------------------------------------- other commands
@scenario("report_damaged", "covseg report on a run with a damaged metrics file", "error")
def _(tmp, ckpt):
    run = tmp / "cv" / "fold0_rep0"
    run.mkdir(parents=True)
    (tmp / "cv" / "splits.json").write_text("{}")
    (run / "test_metrics.json").write_text('{"fold": 0, "per_slice_mean"')
    return ["report", str(tmp / "cv"), "--no-panels"]


@scenario("resume_missing", "covseg train --resume without a previous run", "error")
def _(tmp, ckpt):
    from _train_helpers import prepared_phantoms

    data = prepared_phantoms(tmp, cases=2, slices=2, size=32)
    return ["train", "--data", str(data), "--out", str(tmp / "run"), "--resume", "--epochs", "1",
            "--device", "cpu"]  # fmt: skip


def _trained(tmp: Path) -> list[str]:
    """A 1-epoch ``covseg train --preset fast`` run on phantoms (made here); its flags."""
    from _train_helpers import prepared_phantoms
    from covseg.cli import main

    data = prepared_phantoms(tmp, cases=2, slices=2, size=32)
    common = ["--data", str(data), "--out", str(tmp / "run"), "--device", "cpu",
              "--preset", "fast", "--batch-size", "2", "--threads", "1"]  # fmt: skip
    assert main(["train", *common, "--epochs", "1"]) == 0
    return common


@scenario("resume_other_lr", "covseg train --resume --lr X on a run made with another lr", "error")
def _(tmp, ckpt):
    return ["train", *_trained(tmp), "--resume", "--epochs", "2", "--lr", "1e-3"]


@scenario("resume_other_model", "covseg train --resume with another preset", "error")
def _(tmp, ckpt):
    return ["train", *_trained(tmp), "--resume", "--epochs", "2", "--preset", "small"]


@scenario("cv_rerun_other_lr", "covseg cv rerun into a folder made with another lr", "error")
def _(tmp, ckpt):
    from _train_helpers import prepared_phantoms
    from covseg.cli import main

    data = prepared_phantoms(tmp, cases=3, slices=2, size=32)
    common = ["cv", "--data", str(data), "--out", str(tmp / "cv"), "--folds", "3", "--repeats",
              "1", "--fold", "0", "--repeat", "0", "--preset", "fast", "--epochs", "1",
              "--batch-size", "2", "--device", "cpu", "--threads", "1"]  # fmt: skip
    assert main(common) == 0
    return [*common, "--lr", "1e-3"]


def run(sc: Scenario, ckpt: Path) -> tuple[str, str, float, float]:
    """``(outcome, detail, seconds, peak RSS MB)`` of one scenario."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        argv = sc.build(tmp, ckpt)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        code = (
            "import resource, subprocess, sys; "
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stdout.write(r.stderr); "
            "print('\\n@@', r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        t0 = time.perf_counter()
        try:
            p = subprocess.run(
                [sys.executable, "-c", code, sys.executable, "-m", "covseg", *argv],
                capture_output=True, text=True, timeout=LIMIT_S, env=env, cwd=tmp,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return "BAD", f"no answer within {LIMIT_S} s", LIMIT_S, float("nan")
        secs = time.perf_counter() - t0
        body, _, tail = p.stdout.rpartition("\n@@ ")
        rc, rss_kb = (int(v) for v in tail.split())
        rss = rss_kb / 1024
        lines = [ln.split("\r")[-1] for ln in body.split("\n")]
        lines = [ln for ln in lines if ln.strip()]
        out = tmp / "out"
        left = []
        for folder in (tmp, out) if out.is_dir() else (tmp,):
            left += [p.name for p in folder.iterdir() if p.name.endswith(".partial")]
        if rss > LIMIT_RSS_MB:
            return "BAD", f"peak RSS {rss:.0f} MB", secs, rss
        if left:
            return "BAD", f"left {left}", secs, rss
        if sc.expect == "ok":
            if rc != 0:
                return "BAD", f"exit {rc}: {lines[-1] if lines else ''}", secs, rss
            if sc.check is not None and not sc.check(out):
                return "BAD", "exit 0 but a wrong result", secs, rss
            return "ok", "", secs, rss
        if rc == 2 and len(lines) == 1 and "error:" in lines[0]:
            return "error", lines[0], secs, rss
        return "BAD", f"exit {rc}, {len(lines)} line(s): {' | '.join(lines)[-300:]}", secs, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    from segment_tiny import save_tiny_checkpoint

    chosen = SCENARIOS
    if args.only:
        names = set(args.only.split(","))
        chosen = [s for s in SCENARIOS if s.name in names]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        ckpt = save_tiny_checkpoint(Path(d) / "tiny.safetensors")
        for sc in chosen:
            outcome, detail, secs, rss = run(sc, ckpt)
            rows.append({"name": sc.name, "what": sc.what, "outcome": outcome, "detail": detail,
                         "seconds": round(secs, 2), "peak_rss_mb": round(rss, 1)})  # fmt: skip
            print(f"{outcome:5s} {sc.name:22s} {secs:5.1f} s {rss:6.0f} MB  {detail[:150]}",
                  flush=True)  # fmt: skip
    bad = sum(r["outcome"] == "BAD" for r in rows)
    print(f"\n{len(rows)} scenarios: {sum(r['outcome'] == 'ok' for r in rows)} ok, "
          f"{sum(r['outcome'] == 'error' for r in rows)} clean errors, {bad} BAD")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
