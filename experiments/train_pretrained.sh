#!/usr/bin/env bash
# Train the model shipped in src/covseg/pretrained/ and the 5-fold cross-validation that estimates
# it, from the real slices in ../shared/data (MedSeg, 50 slices with expert infection masks; lung
# masks are derived by `covseg prepare`). `make pretrained` runs this: about 70 minutes on 2 CPU
# cores (5 CV runs of 12 min, then the final run on all slices, 14 min).
#
# 1. `covseg cv` of the recipe: the cross-validated figures of the model card (each run scored on
#    its own test fold with the threshold chosen on its own validation slices).
# 2. The final model: the same recipe on all 50 slices (validation slices held out inside).
# 3. `experiments/oof_threshold.py` (library: covseg.evaluation.oof): the 5 runs' last-epoch
#    out-of-fold predictions (all 50 slices, each predicted by the run that never saw it, at
#    the original 512 px, through the same Segmenter as `covseg segment`) select the shipped
#    post-processing (threshold, small-component filter, lung margin) -- 50 slices instead of a
#    run's 5 validation slices -- written into a copy of the final run's last checkpoint in the
#    package.
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs}
EPOCHS=${EPOCHS:-48}
cs=".venv/bin/covseg"
py=".venv/bin/python"
RECIPE="--preset small --lung-gate soft --epochs $EPOCHS --batch-size 4 --lr 2e-3 --dice-loss 1 --device auto --threads 0"
CV="$OUT/cv_medseg$EPOCHS"

$cs prepare --layout slices "$DATA/medseg100-train" prepared/medseg100
$cs cv --data prepared/medseg100 --out "$CV" --folds 5 --repeats 1 $RECIPE
$cs report "$CV"
$cs train --data prepared/medseg100 --out "$OUT/final_medseg$EPOCHS" $RECIPE
$py experiments/oof_threshold.py "$CV" prepared/medseg100 --json "$CV/oof.json" \
    --ship "$OUT/final_medseg$EPOCHS/last.safetensors" --kind last \
    --dest src/covseg/pretrained/model.safetensors \
    --dataset "medseg100-train (MedSeg, expert infection masks, derived lung masks)"
