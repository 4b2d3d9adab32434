#!/usr/bin/env bash
# NOT YET RUN: the session that wrote it lost its device time before the call; treat as a sketch.
# The medseg100 cross-validation (5 folds x 3 repeats, two recipes) and the shipped model's
# training, fanned out as parallel `covseg cv --fold K --repeat R` / `covseg train` processes on
# one GPU. Each process is exactly the command a CPU user runs (see MODEL_CARD.md); the GPU only
# runs many of them at once. Usage (device machine, repo root):
#   bash experiments/medseg_gpu.sh DATA_DIR OUT_DIR DEADLINE_SECONDS
set -u
DATA=$1; OUT=$2; BUDGET=${3:-420}
T0=$(date +%s)
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
cs="python3 -m covseg"
P=/tmp/prep; R=/tmp/runs; mkdir -p $P $R $OUT
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

COMMON="--preset small --device cuda --threads 1 --workers 1 --batch-size 8"
A="$COMMON --epochs 120 --patience 40"
B="$COMMON --epochs 50 --patience 20 --extra-data $P/pseudo --extra-per-epoch 132 --pseudo-weight 0.5"

$cs prepare --layout slices $DATA/medseg100-train $P/medseg100 2>&1 | tail -1
nvidia-smi --query-gpu=name --format=csv,noheader
$cs prepare --masks-dir pseudo_masks --pseudo --rotate 1 --group '^Data-1_(.+)_\d+$' \
    $DATA/zenodo20-pseudo $P/pseudo > $R/prep_pseudo.log 2>&1 &
PREP=$!
# Wave 1 (repeat 0 of both recipes, and the two candidate final models) has priority; each
# recipe's repeats 1-2 start when its wave-1 runs end, as far as the budget allows.
run_cv() {  # recipe flags, name, fold, repeat
  timeout $(( $(left) - 25 )) $cs cv --data $P/medseg100 --out $R/cv$2 $1 --folds 5 --repeats 3 \
      --fold $3 --repeat $4 > $R/$2_f$3_r$4.log 2>&1
}
(
  for k in 0 1 2 3 4; do run_cv "$A" A $k 0 & done; wait
  for r in 1 2; do for k in 0 1 2 3 4; do run_cv "$A" A $k $r & done; done; wait
) &
timeout $(( $(left) - 25 )) $cs train --data $P/medseg100 --out $R/finalA $A > $R/finalA.log 2>&1 &
wait $PREP; tail -1 $R/prep_pseudo.log
(
  for k in 0 1 2 3 4; do run_cv "$B" B $k 0 & done; wait
  for r in 1 2; do for k in 0 1 2 3 4; do run_cv "$B" B $k $r & done; done; wait
) &
timeout $(( $(left) - 25 )) $cs train --data $P/medseg100 --out $R/finalB $B > $R/finalB.log 2>&1 &
sleep 30; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv; uptime
wait
echo "elapsed $(( $(date +%s) - T0 )) s"
for d in cvA cvB; do $cs report $R/$d > $R/$d/report_stdout.md 2>&1; head -12 $R/$d/report_stdout.md; done
grep -h "test Dice" $R/*.log | sort | head -40
cd $R && tar czf $OUT/runs.tar.gz --exclude='*.safetensors' --exclude='*state*' --exclude='panels.npz' . 
tar cf $OUT/final_models.tar finalA/best.safetensors finalA/best.json finalB/best.safetensors finalB/best.json 2>/dev/null
ls -la $OUT
