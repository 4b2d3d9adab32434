"""Issue 40: learning curves of fast4 and fast4_wide on fold index 2 (the runs' log.csv).

Usage: .venv/bin/python experiments/capacity_curves.py OUT.png"""

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

runs = {
    "fast4 (1.78 M)": "runs/cv_e30/fold2_rep0",
    "fast4_wide (7.08 M)": "runs/cv_e30_fast4_wide/fold2_rep0",
}
fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
for name, run in runs.items():
    rows = list(csv.DictReader(Path(f"{run}/log.csv").read_text().splitlines()))
    ep = [int(r["epoch"]) for r in rows]
    ax[0].plot(ep, [float(r["loss"]) for r in rows], label=name)
    ax[1].plot(ep, [float(r["val_dice"]) for r in rows], label=name)
ax[0].set(xlabel="epoch", ylabel="training loss", title="loss")
ax[1].set(xlabel="epoch", ylabel="validation Dice (per slice)", title="validation (fold index 2)")
ax[1].legend()
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=90)
