#!/usr/bin/env bash
# Before/after figures of the `covseg segment` speed work (BENCHMARKS.md, "Segment speed, step
# by step"): the same scan and checkpoint through the code before the work (BEFORE, a commit) and
# the current tree, with transparent huge pages off and on. Each configuration runs RUNS times in
# a fresh process; prints wall / user / sys seconds and peak RSS of each run.
#
#   bash benchmarks/segment_ablation.sh [BEFORE=b66ea18] [RUNS=3]
#
# Needs the scan written by `benchmarks/run.py` (or any .nii.gz in $SCAN) and a quiet machine.
set -euo pipefail
BEFORE=${1:-b66ea18}
RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$ROOT/.venv/bin/python"
WORK=$(mktemp -d /tmp/covseg-ablation.XXXXXX)
trap 'git -C "$ROOT" worktree remove --force "$WORK/before" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
SCAN=${SCAN:-$WORK/scan.nii.gz}
CKPT=${CKPT:-$ROOT/src/covseg/pretrained/model.safetensors}
if [ ! -f "$SCAN" ]; then
  "$PY" -c "import sys; sys.path.insert(0, '$ROOT/benchmarks'); import bench_segment; from pathlib import Path; bench_segment.write_volume((512, 512, 300), Path('$SCAN'))"
fi
git -C "$ROOT" worktree add --detach "$WORK/before" "$BEFORE" >/dev/null 2>&1
# a copy, names kept (the JSON records its weights file name)
mkdir "$WORK/ckpt" && cp "$CKPT" "${CKPT%.safetensors}.json" "$WORK/ckpt/"
CKPT="$WORK/ckpt/$(basename "$CKPT")"

run() {  # label, source dir, THP value
  for i in $(seq "$RUNS"); do
    rm -rf "$WORK/out"
    THP_MEM_ALLOC_ENABLE=$3 PYTHONPATH="$2" /usr/bin/time -o "$WORK/time" \
      -f "$1 run $i: %e s wall, %U s user, %S s sys, %M KB peak RSS" \
      "$PY" -m covseg segment "$SCAN" --out "$WORK/out" --checkpoint "$CKPT" --device cpu >/dev/null 2>"$WORK/err" \
      || { cat "$WORK/err"; exit 1; }
    cat "$WORK/time"
  done
  rm -rf "$WORK/out_$4" && mv "$WORK/out" "$WORK/out_$4"
}
run "before ($BEFORE), 4 KiB pages" "$WORK/before/src" 0 before
run "before ($BEFORE), huge pages " "$WORK/before/src" 1 before_thp
run "now, 4 KiB pages            " "$ROOT/src" 0 now
run "now, huge pages (default)   " "$ROOT/src" 1 now_thp
# the speed work must not change the result: masks of the first and last configuration
"$PY" - "$WORK/out_before" "$WORK/out_now_thp" <<'PY'
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

for a in sorted(Path(sys.argv[1]).glob("*.nii.gz")):
    x = np.asarray(nib.load(a).dataobj)
    y = np.asarray(nib.load(Path(sys.argv[2]) / a.name).dataobj)
    print(f"{a.name}: {int((x != y).sum())} of {x.size} voxels differ before/now")
PY
