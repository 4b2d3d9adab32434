"""Out-of-fold per-slice Dice of finished `covseg cv` runs, by the truth lesion's area.

Every run predicts its own test slices with its ``--kind`` checkpoint through the `segment` path
(:func:`covseg.studies.oof.collect_oof`) and its own validated post-processing; the slices are
then grouped by the truth lesion's pixel count at the original resolution. With ``--slices`` the
slices under the last bin edge are listed with each run's Dice and predicted area, to see which
slices a network loses and whether they are the same from seed to seed::

    .venv/bin/python experiments/oof_by_lesion_area.py prepared/medseg100 runs/small_seed1 \\
        runs/fast_now_seed1 runs/fast_now_seed0 --slices
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from covseg.data.dataset import PreparedDataset
from covseg.inference.postprocess import masks_from_probabilities
from covseg.studies.oof import collect_oof


def per_slice(cv_dir: Path, data: PreparedDataset, kind: str) -> dict[str, tuple[int, float, int]]:
    """``{case#k: (truth pixels, Dice, predicted pixels)}``; Dice 1 where both are empty."""
    oof = collect_oof(cv_dir, data, kind)
    rows = {}
    for it, post, cid in zip(oof.items, oof.own, oof.case_ids, strict=True):
        pred = masks_from_probabilities(it.lung, it.infection, post, oof.model_size).infection
        for k in range(len(it.truth)):
            t, p = it.truth[k] > 0, pred[k] > 0
            denom = int(t.sum() + p.sum())
            dice = 2.0 * int((t & p).sum()) / denom if denom else 1.0
            rows[f"{cid.split('/', 1)[1]}#{k}"] = (int(t.sum()), dice, int(p.sum()))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--kind", default="last")
    ap.add_argument("--edges", default="0,2000,8000", help="lesion-area bin edges (pixels)")
    ap.add_argument("--slices", action="store_true", help="list the slices under the last edge")
    args = ap.parse_args()
    data = PreparedDataset(args.data)
    res = {run: per_slice(run, data, args.kind) for run in args.runs}
    keys = sorted(res[args.runs[0]])
    if any(sorted(r) != keys for r in res.values()):
        print(
            f"{args.runs}: the runs did not test the same slices (other data or folds)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    area = np.array([res[args.runs[0]][k][0] for k in keys])
    edges = [float(e) for e in args.edges.split(",")] + [np.inf]
    head = " | ".join(
        f"{lo:.0f}–{hi:.0f} px (n={int(((area >= lo) & (area < hi)).sum())})"
        for lo, hi in itertools.pairwise(edges)
    )
    print(f"| run | all (n={len(keys)}) | {head} |")
    print("|---" * (len(edges) + 1) + "|")
    for run in args.runs:
        d = np.array([res[run][k][1] for k in keys])
        bins = " | ".join(
            f"{d[(area >= lo) & (area < hi)].mean():.3f}"
            if ((area >= lo) & (area < hi)).any()
            else "–"
            for lo, hi in itertools.pairwise(edges)
        )
        print(f"| {run} | {d.mean():.3f} | {bins} |")
    if args.slices:
        print("\nslice, truth px, then Dice / predicted px per run")
        for k, a in zip(keys, area, strict=True):
            if a < edges[-2]:
                print(k, a, "  ".join(f"{res[r][k][1]:.2f}/{res[r][k][2]}" for r in args.runs))


if __name__ == "__main__":
    main()
