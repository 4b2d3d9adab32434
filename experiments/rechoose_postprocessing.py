"""Choose a trained checkpoint's post-processing again on its own validation slices, with another
framing (`covseg.training.validation.choose_postprocessing`): what `covseg train --framing F`
would have chosen at the end of the same run. The weights are untouched; the checkpoint's JSON
gets the framing, the post-processing and `val_dice_postprocessed`.

Usage: .venv/bin/python experiments/rechoose_postprocessing.py RUN/last.safetensors \
           --data prepared/medseg100 prepared/zenodo10 --framing lungs [--threads 1]
"""

from __future__ import annotations

import argparse

import torch

from covseg.config import FRAMINGS
from covseg.training.validation import choose_postprocessing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a run's best/last .safetensors (changed in place)")
    ap.add_argument("--data", nargs="+", required=True, help="its prepared dataset(s), in order")
    ap.add_argument("--framing", choices=FRAMINGS, help="default: the checkpoint's")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = choose_postprocessing(args.checkpoint, args.data, framing=args.framing)
    print(
        f"{args.checkpoint}: framing {meta.preprocessing.framing}, {meta.postprocessing}, "
        f"val Dice {meta.metrics.get('val_dice_postprocessed', float('nan')):.4f}"
    )


if __name__ == "__main__":
    main()
