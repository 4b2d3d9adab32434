"""Inference backends of `covseg segment`: agreement with fp32 PyTorch and speed, per checkpoint.

For each checkpoint, every backend of :data:`covseg.config.BACKENDS` segments the same real slice
set through :class:`covseg.inference.segmenter.Segmenter` (the `segment` path: original
resolution, post-processing included); the infection and lung masks are compared voxel-wise
with fp32 PyTorch's (Dice over all slices together), and the network time per slice is the
median of interleaved repetitions (backends alternate within each repetition, so a busy machine
slows all of them alike).

    .venv/bin/python benchmarks/backends.py --data ../shared/data/medseg100-train/images \
        --checkpoint pretrained --checkpoint runs/cv_fast48/fold0_rep0/last.safetensors \
        --threads 2 --json benchmarks/results_backends.json

The rule (issue 11): a backend may be the default only where both masks agree with fp32 at
Dice >= 0.999 and it is faster.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from covseg.config import BACKENDS
from covseg.data.geometry import canonical_view
from covseg.data.io import find_inputs, read_image
from covseg.inference.segmenter import Segmenter


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def run(checkpoint: str, data: Path, reps: int, batch: int) -> dict:
    images = [read_image(p) for p in find_inputs(data)]
    slices = [canonical_view(im.array, im) for im in images]
    segs = {
        b: Segmenter.from_checkpoint(checkpoint, device="cpu", batch_size=batch, backend=b)
        for b in BACKENDS
    }
    masks: dict[str, list] = {}
    times: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for r in range(reps + 1):
        for b, seg in segs.items():
            t0 = time.perf_counter()
            out = []
            for s in slices:
                rule = seg.intensity_rule(s, "x")
                lung = np.zeros(s.shape, np.uint8)
                inf = np.zeros(s.shape, np.uint8)
                seg.segment_slices(s, lung, inf, rule=rule)
                out.append((lung.astype(bool), inf.astype(bool)))
            if r > 0:  # the first round warms up (ONNX Runtime, oneDNN kernels)
                times[b].append((time.perf_counter() - t0) / len(slices))
            masks[b] = out
    ref = masks["torch"]
    res = {}
    for b in BACKENDS:
        lung = _dice(
            np.concatenate([m[0].ravel() for m in masks[b]]),
            np.concatenate([m[0].ravel() for m in ref]),
        )
        inf = _dice(
            np.concatenate([m[1].ravel() for m in masks[b]]),
            np.concatenate([m[1].ravel() for m in ref]),
        )
        res[b] = {
            "s_per_slice": float(np.median(times[b])),
            "speed_vs_fp32": float(np.median(times["torch"]) / np.median(times[b])),
            "lung_dice_vs_fp32": lung,
            "infection_dice_vs_fp32": inf,
            "agrees": min(lung, inf) >= 0.999,
        }
    return {"checkpoint": checkpoint, "n_slices": len(slices), "backends": res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="images (any covseg segment input)")
    ap.add_argument("--checkpoint", action="append", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = [run(c, args.data, args.reps, args.batch_size) for c in args.checkpoint]
    print(
        "| checkpoint | backend | s/slice | speed vs fp32 | lung Dice vs fp32 | infection Dice vs fp32 |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for r in out:
        for b, v in r["backends"].items():
            print(
                f"| {r['checkpoint']} | {b} | {v['s_per_slice']:.4f} | {v['speed_vs_fp32']:.2f} | "
                f"{v['lung_dice_vs_fp32']:.5f} | {v['infection_dice_vs_fp32']:.5f} |"
            )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
