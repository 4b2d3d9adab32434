#!/usr/bin/env python
"""Peak memory of ``covseg segment`` on large but legal inputs (issue 39, item 2).

Each case is one ``covseg segment`` in a fresh subprocess; its peak RSS is the child's own
``ru_maxrss`` (``os.wait4``), its time the wall-clock seconds including Python and torch
start-up, also given as a ratio to the 512x512x60 baseline run in the same invocation (the
machine may be loaded: compare ratios, not seconds). The inputs are built by another subprocess:
a child inherits the peak RSS of the process that spawned it (Linux keeps ``ru_maxrss`` across
``exec``), so the measuring process stays small.

    .venv/bin/python benchmarks/memory.py                       # all cases, shipped model
    .venv/bin/python benchmarks/memory.py --only png_4096,baseline_60 --checkpoint CKPT

A checkpoint with a tiny network (``tests/segment_tiny.py``, ``--framing lungs``) measures the
data path alone in a fraction of the time; the shipped network adds its activations (a constant
per batch, the difference of the two on ``baseline_60``).

Cases:

- ``baseline_60``: a 512x512x60 int16 HU phantom (the reference);
- ``png_4096``: a 4096x4096 8-bit PNG (the largest side accepted);
- ``nifti_claim_1024``: a ~1 MB ``.nii.gz`` whose header honestly claims 1024x1024x512 int16
  (all zeros, so it compresses);
- ``ct_600``: a 512x512x600 int16 HU phantom (a long real scan's size).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = ("baseline_60", "png_4096", "nifti_claim_1024", "ct_600")


def _phantom_volume(slices: int) -> np.ndarray:
    """A 512x512xN int16 HU phantom: a 60-slice phantom tiled along z (air, body, lungs,
    lesions), built without a full-size float temporary."""
    from covseg.data.synthetic import make_phantom

    block = make_phantom(0, (512, 512, 60))[0].astype(np.int16)
    reps = -(-slices // 60)
    return np.concatenate([block] * reps, axis=2)[:, :, :slices]


def build(case: str, tmp: Path) -> Path:
    """The input file of ``case`` in ``tmp``."""
    import nibabel as nib

    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    path = tmp / f"{case}.nii.gz"
    if case == "baseline_60":
        nib.save(nib.Nifti1Image(_phantom_volume(60), affine), str(path))
    elif case == "ct_600":
        nib.save(nib.Nifti1Image(_phantom_volume(600), affine), str(path))
    elif case == "nifti_claim_1024":
        img = nib.Nifti1Image(np.zeros((1024, 1024, 512), np.int16), affine)
        nib.save(img, str(path))
    elif case == "png_4096":
        from PIL import Image

        from covseg.data.preprocess import normalize_intensity, resize_slices

        hu = _phantom_volume(60)[:, :, 30].T[None]  # (1, rows, cols)
        big = resize_slices(normalize_intensity(hu, "hu"), 4096, mask=False)[0]
        path = tmp / f"{case}.png"
        Image.fromarray((np.clip(big, 0, 1) * 255).astype(np.uint8), mode="L").save(path)
    else:
        raise ValueError(case)
    return path


def run(argv: list[str]) -> dict:
    """``python -m covseg ARGV``: exit code, wall seconds, peak RSS (MB), stderr's last line."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "covseg", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [ln for ln in err.splitlines() if ln.strip() and "slice/s" not in ln]
    return {
        "rc": proc.returncode,
        "wall_s": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "stderr": lines[-1] if lines else "",
        "stderr_lines": len(lines),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated cases (default: all)")
    ap.add_argument("--checkpoint", default="pretrained")
    ap.add_argument("--framing", help="passed to segment (default: the checkpoint's)")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--build", nargs=2, metavar=("CASE", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        print(build(args.build[0], Path(args.build[1])))
        return 0
    cases = args.only.split(",") if args.only else list(CASES)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="covseg-memory-") as d:
        tmp = Path(d)
        for case in cases:
            made = subprocess.run(
                [sys.executable, __file__, "--build", case, str(tmp)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            path = Path(made.stdout.strip())
            argv = ["segment", str(path), "--out", str(tmp / f"out_{case}"),
                    "--checkpoint", args.checkpoint, "--device", "cpu"]  # fmt: skip
            argv += ["--framing", args.framing] if args.framing else []
            r = run(argv)
            r["input_mb"] = round(path.stat().st_size / 2**20, 2)
            results[case] = r
            print(json.dumps({case: r}), flush=True)
    base = results.get("baseline_60", {}).get("wall_s")
    print("\n| case | input | exit | peak RSS MB | wall s | time / baseline |")
    print("|---|---:|---:|---:|---:|---:|")
    for case, r in results.items():
        ratio = f"{r['wall_s'] / base:.2f}" if base else "-"
        print(f"| `{case}` | {r['input_mb']} MB | {r['rc']} | {r['peak_rss_mb']} | "
              f"{r['wall_s']} | {ratio} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
