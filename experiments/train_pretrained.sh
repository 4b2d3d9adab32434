#!/usr/bin/env bash
# Train the model shipped in src/covseg/pretrained/ and the cross-source cross-validation that
# estimates it, from the expert-labelled real slices in ../shared/data (`make pretrained` runs it):
#   medseg100-train  50 MedSeg slices, expert infection masks, lung masks derived by `prepare`
#   zenodo10-expert  819 slices of 9 patients of the paper's Zenodo set, expert lungs + infection
#
# One recipe for both steps: the `fast4` preset (named `fast` until 2026-12-05; the new `fast`
# scored lower on Zenodo with this recipe, MODEL_CARD.md), the robust augmentation (zoom 0.5-2x,
# crops to the lungs, up-down flips, window, gamma, CLAHE, noise, blur), an equal share of each
# dataset per epoch, derived lung masks at half weight, a per-slice soft Dice (--dice-mode
# slice), 30 epochs (20 until 2026-12-05; 30 gained +0.025 Zenodo Dice over five folds).
# The shipped model is applied with lung framing (a scout look finds the lungs, the look is at
# their crop; covseg.inference.framing), and the CV is scored both ways (folder cv_allN, whole slices;
# cv_allN_lungs, lung framing). On 2 CPU cores (one thread per job, two jobs side by side) a
# 30-epoch fold took 30-38 min and the final run 41 min (2026-12-05; 20 epochs took 2-2.5x as
# long on a slower machine of the same kind).
#
# 1. `covseg cv` over both datasets at once (folds by patient within each dataset; --robustness
#    scores every test fold re-framed and re-windowed); FOLD=k runs one fold only.
# 2. `covseg train` with the same recipe on all slices (validation slices held out inside, which
#    choose the post-processing); its last-epoch weights are shipped by experiments/ship.py.
#    Then `covseg calibrate` of the CV's last checkpoints (out of fold, lung framing) adds the
#    calibration and burden interval to the shipped model, its rule kept (the same masks).
# 3. experiments/lung5_check.py: the shipped model's lungs on ../shared/data/zenodo-lung5 through
#    the NIfTI path of `covseg segment`.
# Settings (environment): DATA, OUT, EPOCHS, THREADS, STEPS, FOLD (one fold only: no report;
# `STEPS=report` writes them once all folds are in), PRESET (default fast4), DEVICE (auto),
# PREP (where the prepared datasets go; prepared), PY (the Python with covseg; .venv/bin/python),
# PREPARE=0 (use the prepared datasets as they are: for runs started side by side).
# experiments/pretrained_gpu.sh fans the steps out on one GPU.
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs}
EPOCHS=${EPOCHS:-30}
THREADS=${THREADS:-0}
STEPS=${STEPS:-"cv report final ship"}
PRESET=${PRESET:-fast4}
DEVICE=${DEVICE:-auto}
PREP=${PREP:-prepared}
py=${PY:-.venv/bin/python}
cs="$py -m covseg"
RECIPE="--preset $PRESET --augmentation robust --sampling sources --derived-lung-weight 0.5
    --epochs $EPOCHS --batch-size 4 --lr 2e-3 --dice-loss 1 --dice-mode slice --patience 0
    --device $DEVICE --threads $THREADS"
SETS="$PREP/medseg100 $PREP/zenodo10"
TAG=$([[ $PRESET == fast4 ]] && echo "" || echo "_$PRESET")
CV="$OUT/cv_all$EPOCHS$TAG"
FINAL="$OUT/final_all$EPOCHS$TAG"

if [[ ${PREPARE:-1} != 0 ]]; then
    $cs prepare --layout slices "$DATA/medseg100-train" "$PREP/medseg100"
    $cs prepare --layout slices --group '^(coronacases_\d+|radiopaedia_\d+)_' \
        "$DATA/zenodo10-expert" "$PREP/zenodo10"
fi
if [[ " $STEPS " == *" cv "* ]]; then
    # shellcheck disable=SC2086
    $cs cv --data $SETS --out "$CV" --folds 5 --repeats 1 $RECIPE --robustness \
        ${FOLD:+--fold "$FOLD"}
    # The same test folds through lung framing (the checkpoints' own post-processing).
    for run in "$CV"/fold*_rep0; do
        [[ -f "$run/test_metrics.json" ]] || continue
        k=${run##*/fold}; k=${k%%_rep0}
        [[ -z ${FOLD:-} || $k == "$FOLD" ]] || continue
        # shellcheck disable=SC2086
        $py experiments/score_on_fold.py "$run/best.safetensors" "$CV" "$k" "${CV}_lungs" \
            --data $SETS --robustness --framing lungs --device "$DEVICE"
    done
    cp "$CV/splits.json" "${CV}_lungs/"
fi
if [[ " $STEPS " == *" report "* && -z ${FOLD:-} ]]; then
    $cs report "$CV"
    $cs report "${CV}_lungs"
fi
if [[ " $STEPS " == *" final "* ]]; then
    # shellcheck disable=SC2086
    $cs train --data $SETS --out "$FINAL" $RECIPE
fi
if [[ " $STEPS " == *" ship "* ]]; then
    $py experiments/ship.py "$FINAL/last.safetensors" src/covseg/pretrained/model.safetensors --framing lungs \
        --dataset "medseg100-train (MedSeg, 50 slices, expert infection, derived lungs) + zenodo10-expert (Zenodo COVID-19 CT, 819 slices of 9 patients, expert lungs and infection)"
    # shellcheck disable=SC2086
    $cs calibrate "$CV" --data $SETS --out "$CV/burden" --rule-from pretrained --framing lungs \
        --ship src/covseg/pretrained/model.safetensors --dest src/covseg/pretrained/model.safetensors
    $py experiments/lung5_check.py --json "$FINAL/lung5.json"
fi
