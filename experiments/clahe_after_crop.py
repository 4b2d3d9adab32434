"""Where the CLAHE variant's loss comes from: a finished cross-validation's runs on their test
slices of one dataset, plain, equalised whole (the robustness variant `clahe`), cropped to the
lungs (`crop_lungs`), and cropped then equalised (CLAHE at the scale of the look that lung
framing takes). Per-slice mean Dice of each, per fold, with each run's framing and
post-processing (`Segmenter.segment_prepared`: the prepared slices, which for the 256² Zenodo
pictures are the originals; the plain row reproduces the fold's test figure).

Usage: .venv/bin/python experiments/clahe_after_crop.py runs/cv_e30 0 1 2 3 4 \
           --data prepared/medseg100 prepared/zenodo10 --source zenodo10 --framing lungs
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from covseg.checkpoint import load_checkpoint
from covseg.config import FRAMINGS
from covseg.data.dataset import open_prepared
from covseg.evaluation import robustness as rob
from covseg.evaluation.metrics import confusion
from covseg.evaluation.metrics import dice as dice_of
from covseg.inference.segmenter import Segmenter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cv", type=Path, help="a finished `covseg cv` folder")
    ap.add_argument("folds", type=int, nargs="+", help="fold indices (0-based)")
    ap.add_argument("--data", nargs="+", required=True, help="the cv's prepared dataset(s)")
    ap.add_argument("--source", default="zenodo10", help="score this dataset's test slices")
    ap.add_argument("--framing", choices=FRAMINGS, help="default: each checkpoint's")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = open_prepared(args.data)
    for fold in args.folds:
        model, meta = load_checkpoint(args.cv / f"fold{fold}_rep0" / "best.safetensors")
        if args.framing is not None:
            pre = dataclasses.replace(meta.preprocessing, framing=args.framing)
            meta = meta.replace(preprocessing=pre)
        seg = Segmenter(model, meta, device="cpu", batch_size=16)
        dice: dict[str, list[float]] = {}
        for case in meta.data.test_cases:
            if not case.startswith(args.source + "/"):
                continue
            arrays = data.load(case)
            raw = arrays["image"].astype(np.float32)
            truth, lung = arrays["infection"] > 0, arrays["lung"] > 0
            cropped = rob.crop_lungs(raw, truth, lung, "unit")
            variants = {
                "plain": rob.plain(raw, truth, lung, "unit"),
                "clahe": rob.clahe(raw, truth, lung, "unit"),
                "crop_lungs": cropped,
                "crop_then_clahe": rob.clahe(cropped.raw, cropped.truth, cropped.lung, "unit"),
            }
            for name, v in variants.items():
                masks = seg.segment_prepared(np.clip(v.raw.astype(np.float32), 0, 1))
                per_slice = dice_of(*confusion(masks.infection, v.truth, axes=(1, 2)))
                dice.setdefault(name, []).extend(per_slice.tolist())
        row = ", ".join(f"{k} {np.mean(v):.4f}" for k, v in dice.items())
        print(f"fold {fold + 1} ({len(dice['plain'])} {args.source} slices): {row}", flush=True)


if __name__ == "__main__":
    main()
