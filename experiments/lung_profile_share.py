"""The share of its peak that the lung pixels' column profile reaches at their mean column
(`covseg.inference.burden._one_lung_side`, cut-off `_ONE_LUNG_SHARE`), on expert lung masks:
per scan, and per slice with the slices' count of sizeable lungs (2-D components of at least
15 % of the largest).

Usage (after `make pretrained`'s prepare step, or `covseg prepare` of zenodo10-expert):
    .venv/bin/python experiments/lung_profile_share.py prepared/zenodo10
"""

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from covseg.inference.burden import _ONE_LUNG_SHARE


def share(column_mass: np.ndarray) -> float:
    """As `_one_lung_side` computes it."""
    w = len(column_mass)
    midline = float((column_mass * np.arange(w)).sum() / column_mass.sum())
    band = max(1, round(0.02 * w))
    smooth = np.convolve(column_mass, np.ones(2 * band + 1), mode="same")
    return float(smooth[min(w - 1, round(midline))] / smooth.max())


def main(root: Path) -> None:
    per_slice = []
    for path in sorted((root / "cases").glob("*.npz")):
        lungs = np.load(path)["lung"] > 0  # (slices, rows, columns), canonical
        print(f"{path.stem}: scan share {share(lungs.sum(axis=(0, 1)).astype(float)):.2f}")
        for s in lungs:
            if s.sum() < 50:
                continue
            labels, n = ndi.label(s)
            sizes = np.sort(np.bincount(labels.ravel())[1:])[::-1]
            two = n >= 2 and sizes[1] >= 0.15 * sizes[0]
            per_slice.append((share(s.sum(axis=0).astype(float)), two))
    a = np.array(per_slice)
    for two, name in ((1, "two sizeable lungs"), (0, "one lung component")):
        rows = a[a[:, 1] == two, 0]
        over = int((rows >= _ONE_LUNG_SHARE).sum())
        print(f"slices with {name}: {len(rows)}, share >= {_ONE_LUNG_SHARE}: {over}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
