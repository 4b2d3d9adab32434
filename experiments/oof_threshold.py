"""Out-of-fold look at a finished `covseg cv`, and the post-processing of the shipped model.

The library does the work (:mod:`covseg.studies.oof`): every run predicts its own test fold
through the same Segmenter as `covseg segment` (original resolution, lung restriction), and the
post-processing grid (threshold x minimum component x lung margin) is searched on those
out-of-fold predictions by the same selection that training runs on its validation slices.
This script prints, for the `best` and the `last` checkpoints, the out-of-fold Dice with each
run's own validated post-processing (what `covseg report` scores, pooled over all test folds)
and the selected shared post-processing (optimistic: chosen on these slices).

With `--other-folds`, each run's test cases are also scored with the post-processing selected
on the other runs' out-of-fold predictions: the honest estimate of choosing it that way, to set
against each run's own (chosen on its validation slices). A cross-validation over several
datasets takes them all (`DATA DATA ...`, as given to `covseg cv`) and gets per-dataset figures.

With `--ship CKPT --dest DEST`, the post-processing selected on the out-of-fold predictions of
the `--kind` checkpoints is written into a copy of CKPT at DEST (the shipped model:
`src/covseg/pretrained/model.safetensors`; CKPT and DEST may be the same file).

    .venv/bin/python experiments/oof_threshold.py runs/cv_medseg48 prepared/medseg100 \
        --json runs/cv_medseg48/oof.json [--other-folds] \
        [--ship runs/final_medseg48/last.safetensors --kind last --dest src/covseg/pretrained/model.safetensors]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from covseg.data.dataset import open_prepared
from covseg.studies.oof import collect_oof, select_on_oof, ship, summary


def _by_source(rec: dict) -> str:
    per = rec.get("by_source", {})
    return "".join(f"; {k} {v['per_slice_mean']:.4f}" for k, v in per.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("cv_dir", type=Path)
    ap.add_argument("data", type=Path, nargs="+", help="the cv's prepared dataset(s)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--kinds", default="best,last", help="checkpoint kinds to look at")
    ap.add_argument(
        "--other-folds", action="store_true", help="score each run with the others' selection"
    )
    ap.add_argument("--ship", type=Path, help="checkpoint to copy with the selection")
    ap.add_argument("--kind", default="last", help="whose selection --ship uses")
    ap.add_argument("--dest", type=Path, help="where --ship writes")
    ap.add_argument("--dataset", help="training-data description recorded by --ship")
    args = ap.parse_args()
    data = open_prepared(args.data)
    out, selections = {}, {}
    for which in args.kinds.split(","):
        oof = collect_oof(args.cv_dir, data, which)
        sel = select_on_oof(oof)
        selections[which] = sel
        out[which] = rec = summary(oof, sel, other_folds=args.other_folds)
        own, chosen = rec["own_postprocessing"], rec["selected"]
        print(
            f"{which}: {oof.n_slices} out-of-fold slices; each run's own post-processing: "
            f"per-slice Dice {own['per_slice_mean']:.4f}{_by_source(own)}, pooled {own['pooled']:.4f}"
        )
        if rec.get("other_folds_selection"):
            other = rec["other_folds_selection"]
            print(
                f"  selected on the other runs: per-slice Dice {other['per_slice_mean']:.4f}"
                f"{_by_source(other)}, pooled {other['pooled']:.4f}; thresholds "
                + ", ".join(f"{r} {p['threshold']}" for r, p in other["chosen"].items())
            )
        print(
            f"  selected {chosen['postprocessing']}: per-slice Dice {chosen['per_slice_mean']:.4f}"
            f"{_by_source(chosen)}, pooled {chosen['pooled']:.4f} (chosen on these slices: optimistic)"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if args.ship:
        sel = selections[args.kind]
        source = (
            f"post-processing selected on the out-of-fold predictions of {args.cv_dir} "
            f"({sel.n_slices} slices, '{args.kind}' checkpoints; experiments/oof_threshold.py); "
            f"weights: {args.ship}"
        )
        print(ship(args.ship, args.dest, sel, source=source, dataset=args.dataset))


if __name__ == "__main__":
    main()
