#!/usr/bin/env bash
# usage (device machine, repo root):  bash experiments/pretrained_gpu.sh SHARED_DATA OUT BUDGET_S
# Issue 12 on one GPU: the shipped model's recipe (experiments/train_pretrained.sh) with a larger
# preset and more epochs than the CPU affords, its five cross-validation folds and the final
# all-data run side by side. Every job is exactly `STEPS=cv FOLD=k` or `STEPS=final` of
# train_pretrained.sh, so a CPU user runs the same commands (one after the other). Runs cut by
# the budget keep their last_state: the same command later resumes them.
# Environment: PRESET (small), EPOCHS (40), PAR (6 jobs at once), DEVICE (cuda), PY (python3).
# Brings back OUT/runs.tar.gz (run folders: metrics, robustness, logs, checkpoint JSONs; no
# weights but the final run's last.safetensors, the candidate to ship) and OUT/reports/ (Table 2
# of the CV, whole-slice and lung framing, when all five folds finished).
# Tested on the CPU (2026-12-05: 5 min on the 2-core machine beside two training jobs; every job
# exited 0, the reports and a 16 MB runs.tar.gz came back) with a SHARED_DATA of 10 MedSeg slices
# and 4 slices of each Zenodo series (images/, masks/, lungs/ as in ../shared/data):
#   DEVICE=cpu PRESET=fast4 EPOCHS=1 PAR=2 PY=.venv/bin/python \
#   bash experiments/pretrained_gpu.sh /tmp/mini_shared /tmp/pg 900
# Not yet run on a GPU: its speed there, and so how many epochs of which preset fit a budget, is
# unmeasured. Run it with a small EPOCHS first if the budget allows one more call.
set -u
SRC=$1; OUT=$2; BUDGET=$3
export PRESET=${PRESET:-small} EPOCHS=${EPOCHS:-40} DEVICE=${DEVICE:-cuda} PY=${PY:-python3}
PAR=${PAR:-6}
T0=$(date +%s); left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export DATA=$SRC PREP=${PREP:-/tmp/prep12} OUT_RUNS=${RUNS:-/tmp/runs12} THREADS=2
mkdir -p "$OUT/reports" "$OUT_RUNS"
tp() { env OUT="$OUT_RUNS" "$@" bash experiments/train_pretrained.sh; }
tp STEPS=none > "$OUT_RUNS/prepare.log" 2>&1 || { tail -3 "$OUT_RUNS/prepare.log"; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
run_one() {  # final | fold index
  local t vars=(STEPS=final) log=final; t=$(( $(left) - 60 )); [ "$t" -gt 30 ] || return 0
  [ "$1" = final ] || { vars=(STEPS=cv FOLD="$1"); log=fold$1; }
  timeout "$t" env OUT="$OUT_RUNS" PREPARE=0 "${vars[@]}" bash experiments/train_pretrained.sh \
      > "$OUT_RUNS/$log.log" 2>&1
  echo "$1: exit $? at $(( $(date +%s) - T0 )) s"
}
for job in final 0 1 2 3 4; do
  while [ "$(jobs -rp | wc -l)" -ge "$PAR" ]; do sleep 2; done
  run_one "$job" &
  sleep 5  # the first fold writes splits.json before the others read it
done
sleep 60; command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
wait
echo "elapsed $(( $(date +%s) - T0 )) s"
tp STEPS=report PREPARE=0 > "$OUT/reports/report.md" 2>&1 || echo "report: not all folds finished"
grep -h "test Dice\|per-slice Dice" "$OUT_RUNS"/*.log
tar czf "$OUT/runs.tar.gz" -C "$OUT_RUNS" --exclude='*state*' --exclude='panels.npz' \
    --exclude='fold*/*.safetensors' --exclude='final*/best.safetensors' .
ls -la "$OUT" "$OUT/reports"
