#!/usr/bin/env bash
# usage: experiments/screen_fast.sh OUT CANDIDATE FOLD...
# A candidate of benchmarks/fast_alternatives.py through `covseg cv` on the MedSeg folds with the
# shipped recipe, one thread, the folds in turn (two such lanes in parallel on the 2-core machine).
out=$1; cand=$2; shift 2
for k in "$@"; do
  .venv/bin/python benchmarks/fast_alternatives.py screen "$cand" -- cv --data prepared/medseg100 \
    --out "$out" --folds 5 --repeats 1 --fold "$k" --repeat 0 --lung-gate soft --epochs 48 \
    --batch-size 4 --lr 2e-3 --dice-loss 1 --device cpu --threads 1
done
