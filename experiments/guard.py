"""The `fast` preset's accuracy guard (issue 11) from finished out-of-fold summaries.

Each group is ``NAME=RUN[,RUN...]``: the `covseg cv` folders of one network, one per training
seed, each with the ``oof.json`` that `experiments/oof_threshold.py RUN DATA --json RUN/oof.json`
writes. For every group this prints the mean ± SD over seeds of the out-of-fold per-slice and
pooled Dice of the last-epoch checkpoints (each run with its own validated post-processing), and
its difference from the reference group (the first one, or ``--reference``) against the guard's
margin::

    .venv/bin/python experiments/guard.py small=runs/small_seed1,runs/small_seed2 \\
        fast=runs/fast_now_seed0,runs/fast_now_seed1 --margin 0.01
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def read(run: Path, kind: str) -> tuple[float, float]:
    path = run / "oof.json"
    try:
        rec = json.loads(path.read_text())[kind]["own_postprocessing"]
    except (OSError, ValueError, KeyError) as e:
        print(f"{path}: cannot read the {kind!r} out-of-fold summary ({e})", file=sys.stderr)
        raise SystemExit(2) from None
    return rec["per_slice_mean"], rec["pooled"]


def _mean_sd(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else float("nan")
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("groups", nargs="+", help="NAME=RUN[,RUN...]")
    ap.add_argument("--reference", help="the group the others are compared with (default: first)")
    ap.add_argument("--margin", type=float, default=0.01)
    ap.add_argument("--kind", default="last", help="checkpoint kind in oof.json")
    args = ap.parse_args(argv)
    groups: dict[str, list[tuple[float, float]]] = {}
    for g in args.groups:
        name, _, runs = g.partition("=")
        if not runs:
            ap.error(f"{g!r}: expected NAME=RUN[,RUN...]")
        groups[name] = [read(Path(r), args.kind) for r in runs.split(",")]
    ref = args.reference or next(iter(groups))
    if ref not in groups:
        ap.error(f"--reference {ref!r} is not one of {sorted(groups)}")
    ref_ps = statistics.mean(x[0] for x in groups[ref])
    ref_po = statistics.mean(x[1] for x in groups[ref])
    print(
        f"| network | seeds | per-slice Dice | pooled Dice | per slice vs {ref} | pooled vs {ref} |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, xs in groups.items():
        ps, po = [x[0] for x in xs], [x[1] for x in xs]
        d_ps, d_po = statistics.mean(ps) - ref_ps, statistics.mean(po) - ref_po
        verdict = "" if name == ref else (" ok" if d_ps >= -args.margin else " FAIL")
        print(
            f"| {name} | {len(xs)} | {_mean_sd(ps)} | {_mean_sd(po)} | {d_ps:+.3f}{verdict} "
            f"| {d_po:+.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
