"""A model's lung masks on ../shared/data/zenodo-lung5 (expert lung masks), through the NIfTI
path of `covseg segment`: each slice is written as a one-slice NIfTI with its orientation, segmented
by `covseg.inference.outputs.segment_file` and the written `<case>_lungs.nii.gz` is scored against
the expert mask.

The .npy slices are nibabel voxel arrays (rows = voxel i, columns = voxel j). Their expert labels
(1 = left lung, 2 = right lung) sit at large i for the left lung and the spine at small j, so voxel
i runs towards the patient's left and j towards anterior: affine diag(-dx, +dy, dz) in RAS.

Usage: .venv/bin/python experiments/lung5_check.py [--checkpoint pretrained|RUN/last.safetensors]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from covseg import Segmenter
from covseg.evaluation.metrics import confusion, dice
from covseg.inference.outputs import segment_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="pretrained")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/zenodo-lung5"))
    ap.add_argument("--json", type=Path, help="write the scores here")
    ap.add_argument("--framing", choices=("full", "lungs"), help="default: the checkpoint's")
    args = ap.parse_args()
    seg = Segmenter.from_checkpoint(args.checkpoint, device="cpu", framing=args.framing)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="covseg-lung5-") as tmp:
        for image_file in sorted(args.data.glob("*_image_slice_*.npy")):
            image = np.load(image_file)
            truth = np.load(str(image_file).replace("_image_", "_masks_")) > 0
            nii = Path(tmp) / f"{image_file.stem}.nii.gz"
            affine = np.diag([-0.7, 0.7, 1.0, 1.0])
            nib.save(nib.Nifti1Image(image[:, :, None].astype(image.dtype), affine), nii)
            result = segment_file(seg, nii, Path(tmp) / "out")
            lungs = np.asarray(nib.load(result.paths["lungs"]).dataobj)[:, :, 0] > 0
            score = float(dice(*confusion(lungs, truth)))
            rows[image_file.stem] = score
            print(f"{image_file.stem:<40} expert lung {truth.sum():>6} px  lung Dice {score:.3f}")
    if args.json:
        args.json.write_text(
            json.dumps({"checkpoint": args.checkpoint, "lung_dice": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
