"""Derived lung masks (covseg.data.lungmask) against the expert lung masks of
../shared/data/zenodo-lung5: one Dice per slice.  Usage: .venv/bin/python experiments/lungmask_eval.py"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from covseg.data.lungmask import derive_lung_mask
from covseg.data.preprocess import detect_intensity_rule, normalize_intensity
from covseg.evaluation.metrics import confusion, dice

root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/zenodo-lung5")
for image_file in sorted(root.glob("*_image_slice_*.npy")):
    image = np.load(image_file)
    truth = np.load(str(image_file).replace("_image_", "_masks_")) > 0
    rule = detect_intensity_rule(image)
    pred = derive_lung_mask(normalize_intensity(image, rule))
    score = float(dice(*confusion(pred, truth)))
    print(f"{image_file.stem:<40} {rule:<6} expert lung {truth.sum():>6} px  Dice {score:.3f}")
