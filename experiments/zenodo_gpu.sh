#!/usr/bin/env bash
# usage (device machine, repo root):  bash experiments/zenodo_gpu.sh SHARED_DATA OUT BUDGET_S EPOCHS [ROW...]
# Issue 13's rows that this CPU cannot train (the `paper` preset is 0.07x BasicUNet's training
# speed here), on one GPU: every (row, fold, repeat) run is exactly the command a CPU user runs,
# `experiments/zenodo_rows.sh` with FOLDS/REPEATS set, PAR of them at once on the one GPU. Runs
# cut by the budget keep their last_state and resume when the same command is run again. Brings
# back OUT/runs.tar.gz (the run folders without weights or optimiser state: test_metrics.json,
# checkpoint JSONs, histories) and OUT/reports/ (`covseg report` of each row and the comparison).
# Default rows: the paper preset with the paper's binary gate and with the soft gate, then its
# ablations, `small`, and the U-Net baseline of the paper's width; repeat 0 of every row first.
# Tested on the CPU with:  DEVICE=cpu PAR=2 bash experiments/zenodo_gpu.sh ../shared/data /tmp/zg 600 1 fast
set -u
SRC=$1; OUT=$2; BUDGET=$3; EPOCHS=$4; shift 4
ROWS=${*:-paper_binary paper_soft paper_noinc paper_nogate paper_noaux small unet_paper}
PAR=${PAR:-8}; DEVICE=${DEVICE:-cuda}
T0=$(date +%s); left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
P=${PREP:-/tmp/zenodo10}; R=${RUNS:-/tmp/zruns}; mkdir -p "$OUT/reports" "$R"
[ -d "$P" ] || python3 -m covseg prepare --layout slices \
    --group '^(coronacases_\d+|radiopaedia_\d+)_' "$SRC/zenodo10-expert" "$P" | tail -1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
jobs_list=()
for r in 0 1 2; do for row in $ROWS; do for k in 0 1 2 3 4; do jobs_list+=("$row $k $r"); done; done; done
run_one() {  # row fold repeat
  local t; t=$(( $(left) - 40 )); [ "$t" -gt 30 ] || return 0
  FOLDS=$2 REPEATS=$3 DEVICE=$DEVICE timeout "$t" bash experiments/zenodo_rows.sh "$P" "$R" \
      "$EPOCHS" 1 "$1" > "$R/$1_f$2_r$3.log" 2>&1
  echo "$1 fold $2 repeat $3: exit $? at $(( $(date +%s) - T0 )) s"
}
for job in "${jobs_list[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$PAR" ]; do sleep 2; done
  [ "$(left)" -gt 70 ] || break
  run_one $job &
done
wait
echo "elapsed $(( $(date +%s) - T0 )) s"
done_rows=()
for row in $ROWS; do
  if python3 -m covseg report --no-panels "$R/$row" > "$OUT/reports/$row.md" 2>&1; then
    done_rows+=("$R/$row")
  fi
done
[ "${#done_rows[@]}" -ge 2 ] && python3 -m covseg report "${done_rows[@]}" --no-panels \
    --out "$OUT/reports" > "$OUT/reports/comparison_stdout.md" 2>&1
tar czf "$OUT/runs.tar.gz" -C "$R" --exclude='*.safetensors' --exclude='*state*' \
    --exclude='panels.npz' .
ls -la "$OUT" "$OUT/reports"
