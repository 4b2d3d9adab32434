#!/usr/bin/env bash
# usage: experiments/zenodo_rows.sh DATA RUNS EPOCHS THREADS ROW...
# Issue 13's rows: `covseg cv` on the prepared zenodo10-expert slices (5 patient folds; repeat 0
# of 3, so a later run can add repeats 1-2 into the same folders), one recipe for every row, the
# rows in turn. On the 2-core CPU two such lanes run side by side with THREADS=1; on a GPU,
# experiments/zenodo_gpu.sh fans the same commands out. DATA: `covseg prepare --layout slices
# --group '^(coronacases_\d+|radiopaedia_\d+)_' ../shared/data/zenodo10-expert DATA`.
set -euo pipefail
data=$1; runs=$2; epochs=$3; threads=$4; shift 4
recipe="--folds 5 --repeats 3 --epochs $epochs --patience 0 --batch-size 4 --lr 2e-3 --dice-loss 1"
row_flags() {
  case $1 in
    fast)           echo "--preset fast4 --lung-gate soft" ;;
    fast_binary)    echo "--preset fast4 --lung-gate binary" ;;
    fast_noinc)     echo "--preset fast4 --lung-gate soft --no-inception" ;;
    fast_nogate)    echo "--preset fast4 --no-lung-gate" ;;
    fast_noaux)     echo "--preset fast4 --lung-gate soft --no-deep-supervision" ;;
    unet_fast)      echo "--preset fast4 --model unet" ;;
    small)          echo "--preset small --lung-gate soft" ;;
    unet_small)     echo "--preset small --model unet" ;;
    paper_binary)   echo "--preset paper --lung-gate binary" ;;
    paper_soft)     echo "--preset paper --lung-gate soft" ;;
    paper_noinc)    echo "--preset paper --lung-gate binary --no-inception" ;;
    paper_nogate)   echo "--preset paper --no-lung-gate" ;;
    paper_noaux)    echo "--preset paper --lung-gate binary --no-deep-supervision" ;;
    unet_paper)     echo "--preset paper --model unet" ;;
    *) echo "unknown row $1" >&2; exit 2 ;;
  esac
}
for row in "$@"; do
  flags=$(row_flags "$row")
  for k in ${FOLDS:-0 1 2 3 4}; do
    for r in ${REPEATS:-0}; do
      .venv/bin/python -m covseg cv --data "$data" --out "$runs/$row" $flags $recipe \
        --fold "$k" --repeat "$r" --device "${DEVICE:-cpu}" --threads "$threads"
    done
  done
done
