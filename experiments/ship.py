"""Copy a trained checkpoint into the package as the shipped model, with the post-processing it
chose on its own validation slices and a description of its training data.

(`experiments/oof_threshold.py --ship` does the same with a post-processing chosen on the
out-of-fold predictions of a finished cross-validation instead.)

`--framing lungs` records that `segment` shows the model the crop to the lungs a scout look
found (`covseg.inference.framing`); its post-processing stays the one chosen on validation
(`experiments/rechoose_postprocessing.py` chooses it again with another framing).

Usage: .venv/bin/python experiments/ship.py RUN/last.safetensors \
           src/covseg/pretrained/model.safetensors --dataset "..." [--framing lungs]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from covseg.checkpoint import load_checkpoint, save_checkpoint
from covseg.config import FRAMINGS
from covseg.meta import DataRecord


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--dataset", required=True, help="training-data description")
    ap.add_argument("--framing", choices=FRAMINGS, help="default: the checkpoint's")
    args = ap.parse_args()
    model, meta = load_checkpoint(args.checkpoint)
    if args.framing is not None:
        pre = dataclasses.replace(meta.preprocessing, framing=args.framing)
        meta = meta.replace(preprocessing=pre)
    data = DataRecord(dataset=args.dataset, train_cases=meta.data.train_cases)
    print(save_checkpoint(args.dest, model, meta.replace(data=data)))


if __name__ == "__main__":
    main()
