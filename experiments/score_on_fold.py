"""Score any checkpoint on one test fold of a finished `covseg cv` folder, through the same path as
the cross-validation's own runs (`covseg.studies.crossval.evaluate_test_fold`: the masks
`segment` writes, the robustness variants with --robustness), so that an outside model (e.g. a
previously shipped one) gets figures paired with the fold's runs.

The checkpoint is copied into OUT/fold{K}_rep0/best.* with that fold's test cases recorded; its
weights and post-processing are unchanged. Beware of models that were trained on some of the
fold's test cases: their figures are then not out-of-fold.

Usage: .venv/bin/python experiments/score_on_fold.py pretrained runs/cv_all20 2 runs/old_on_cv_all20 \
           --data prepared/medseg100 prepared/zenodo10 [--robustness] [--framing lungs] [--device auto]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from covseg.checkpoint import load_checkpoint, save_checkpoint
from covseg.config import DEVICES, FRAMINGS
from covseg.data.dataset import open_prepared
from covseg.meta import DataRecord
from covseg.studies.crossval import evaluate_test_fold, run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="'pretrained' or RUN/last.safetensors")
    ap.add_argument("cv", type=Path, help="the cv folder whose splits.json gives the fold")
    ap.add_argument("fold", type=int)
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", nargs="+", required=True, help="the cv's prepared dataset(s)")
    ap.add_argument("--robustness", action="store_true")
    ap.add_argument(
        "--framing", choices=FRAMINGS, help="score with this framing (default: the checkpoint's)"
    )
    ap.add_argument("--device", choices=DEVICES, default="cpu")
    args = ap.parse_args()
    folds = json.loads((args.cv / "splits.json").read_text())["folds"]
    test = tuple(folds[args.fold]["test"])
    model, meta = load_checkpoint(args.checkpoint)
    rd = run_dir(args.out, args.fold, 0)
    data = DataRecord(dataset=meta.data.dataset, train_cases=meta.data.train_cases, test_cases=test)
    if args.framing is not None:
        pre = dataclasses.replace(meta.preprocessing, framing=args.framing)
        meta = meta.replace(preprocessing=pre)
    save_checkpoint(rd / "best.safetensors", model, meta.replace(data=data))
    result = evaluate_test_fold(
        rd, open_prepared(args.data), device=args.device, robustness=args.robustness
    )
    print(f"{rd}: per-slice Dice {result['per_slice_mean']['dice']:.4f}")


if __name__ == "__main__":
    main()
