"""The one-lung rule of the left/right split (`covseg.inference.burden._one_lung_side`) on
expert lung masks: per scan, the share of its peak that the lung pixels' column profile reaches
at their mean column and that column's offset from the image centre (share of the width); per
slice, how often the rule calls one lung, by the slice's count of sizeable lungs (2-D components
of at least 15 % of the largest).

Usage (after `make pretrained`'s prepare step, or `covseg prepare` of zenodo10-expert):
    .venv/bin/python experiments/lung_profile_share.py prepared/zenodo10
"""

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from covseg.inference.burden import _one_lung_side


def midline(column_mass: np.ndarray) -> float:
    return float((column_mass * np.arange(len(column_mass))).sum() / column_mass.sum())


def share_and_offset(column_mass: np.ndarray) -> tuple[float, float]:
    """The two figures `_one_lung_side` compares with its cut-offs."""
    w, mid = len(column_mass), midline(column_mass)
    band = max(1, round(0.02 * w))
    smooth = np.convolve(column_mass, np.ones(2 * band + 1), mode="same")
    return float(smooth[min(w - 1, round(mid))] / smooth.max()), abs(mid - (w - 1) / 2) / w


def main(root: Path) -> None:
    per_slice = []
    for path in sorted((root / "cases").glob("*.npz")):
        lungs = np.load(path)["lung"] > 0  # (slices, rows, columns), canonical
        cm = lungs.sum(axis=(0, 1)).astype(float)
        sh, off = share_and_offset(cm)
        print(
            f"{path.stem}: share {sh:.2f}, offset {off:.3f}, rule: {_one_lung_side(cm, midline(cm))}"
        )
        for s in lungs:
            if s.sum() < 50:
                continue
            labels, n = ndi.label(s)
            sizes = np.sort(np.bincount(labels.ravel())[1:])[::-1]
            two = n >= 2 and sizes[1] >= 0.15 * sizes[0]
            cm = s.sum(axis=0).astype(float)
            per_slice.append((_one_lung_side(cm, midline(cm)) is not None, two))
    a = np.array(per_slice)
    for two, name in ((1, "two sizeable lungs"), (0, "one lung component")):
        rows = a[a[:, 1] == two, 0]
        print(f"slices with {name}: {len(rows)}, called one lung: {int(rows.sum())}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
