#!/usr/bin/env bash
# Train the model shipped in src/covseg/pretrained/ and its 5-fold cross-validation, from the
# real slices in ../shared/data (MedSeg, 50 slices with expert infection masks; lung masks are
# derived by `covseg prepare`). `make pretrained` runs this. 2 CPU cores: about 75 minutes for both.
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs}
cs=".venv/bin/covseg"
RECIPE="--preset small --epochs 30 --batch-size 4 --lr 1e-3 --dice-loss 1 --device auto"

$cs prepare --layout slices "$DATA/medseg100-train" prepared/medseg100
# 5-fold cross-validation of the recipe (the model card's figures) ...
$cs cv --data prepared/medseg100 --out "$OUT/cv_medseg" --folds 5 --repeats 1 $RECIPE
$cs report "$OUT/cv_medseg"
# ... and the shipped model: the same recipe on all 50 slices (12 % held out for the threshold).
$cs train --data prepared/medseg100 --out "$OUT/pretrained" $RECIPE
.venv/bin/python - "$OUT/pretrained/best.safetensors" <<'PY'
import sys
from pathlib import Path

import covseg
from covseg.checkpoint import load_checkpoint, save_checkpoint

model, meta = load_checkpoint(sys.argv[1])
meta.pop("sha256", None)
meta["data"] = {"train": "medseg100-train (50 slices)", "cases": meta.get("data", {}).get("train_cases")}
dest = Path(covseg.__file__).parent / "pretrained" / "model.safetensors"
print(save_checkpoint(dest, model, meta))
PY
