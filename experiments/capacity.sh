#!/usr/bin/env bash
# Issue 40: is the accuracy plateau capacity or data? The shipped recipe with a larger network
# on the two folds of runs/cv_e30 where the shipped recipe scores lowest (fold index 2) and
# highest (fold index 1) on Zenodo, beside fast4's own runs of those folds (same splits: the
# splits.json of CV). Resumable: rerun the same command after an interruption.
# Rule (written before any result, docs/experiments/2026-12-06-capacity-test-plan.md).
#   CV=runs/cv_e30 PRESET=fast4_wide bash experiments/capacity.sh        # both folds, in turn
# Settings: CV (the fast4 cross-validation whose splits are reused), PRESET, FOLDS, THREADS, PY.
set -euo pipefail
CV=${CV:-runs/cv_e30}
PRESET=${PRESET:-fast4_wide}
FOLDS=${FOLDS:-"2 1"}
THREADS=${THREADS:-1}
py=${PY:-.venv/bin/python}
OUT=${CV}_$PRESET
mkdir -p "$OUT"
cp "$CV/splits.json" "$OUT/splits.json"
for k in $FOLDS; do
    $py -m covseg cv --data prepared/medseg100 prepared/zenodo10 --out "$OUT" --folds 5 \
        --repeats 1 --fold "$k" --preset "$PRESET" --augmentation robust --sampling sources \
        --derived-lung-weight 0.5 --epochs 30 --batch-size 4 --lr 2e-3 --dice-loss 1 \
        --dice-mode slice --patience 0 --device cpu --threads "$THREADS" --keep-epochs 5
done
# Scored per run and source against fast4's same fold (each run's own rule, last checkpoint, lung
# framing; needs the five-fold study runs/study5_last of the shipped recipe, see the record):
$py experiments/capacity_score.py $FOLDS
