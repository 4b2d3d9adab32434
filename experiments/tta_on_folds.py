"""Score a finished `covseg cv`'s test folds without and with flip TTA (`segment --tta`), paired.

Every run's ``best`` checkpoint segments its own test cases through the cross-validation's path
(`covseg.evaluation.evaluate.score_cases`: the masks `segment` writes, at the original
resolution, the checkpoint's framing and post-processing); the plain row reproduces the test
Dice of `covseg report`. Per-slice mean Dice per fold, overall and per dataset::

    .venv/bin/python experiments/tta_on_folds.py runs/cv_all20_slice_scout \\
        --data prepared/medseg100 prepared/zenodo10 --json runs/cv_all20_slice_scout/tta.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from covseg.checkpoint import load_checkpoint, read_meta
from covseg.data.dataset import open_prepared
from covseg.evaluation.cases import original_cases
from covseg.evaluation.evaluate import score_cases
from covseg.evaluation.report import load_runs
from covseg.inference.segmenter import Segmenter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("cv", type=Path, help="a finished `covseg cv` folder")
    ap.add_argument("--data", nargs="+", required=True, help="the cv's prepared dataset(s)")
    ap.add_argument("--json", type=Path, help="write the per-fold figures here")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = open_prepared(args.data)
    out: dict[str, dict[str, dict[str, float]]] = {"plain": {}, "tta": {}}
    folds = sorted(load_runs(args.cv))
    # the original cases are read once: every run of a cv has the same preprocessing
    pre = read_meta(args.cv / f"fold{folds[0]}_rep0" / "best.json").preprocessing
    with tempfile.TemporaryDirectory(prefix="covseg-tta-") as tmp:
        originals = original_cases(data, pre, Path(tmp))
    for fold in folds:
        model, meta = load_checkpoint(args.cv / f"fold{fold}_rep0" / "best.safetensors")
        for name, tta in (("plain", False), ("tta", True)):
            seg = Segmenter(model, meta, device="cpu", batch_size=16, tta=tta)
            scores = score_cases(seg, data, list(meta.data.test_cases), originals)
            row = {"all": scores.aggregate("per_slice_mean")["dice"]}
            for source in scores.sources():
                row[source] = scores.subset(source).aggregate("per_slice_mean")["dice"]
            out[name][str(fold + 1)] = row
            print(f"fold {fold + 1} {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
    names = list(out["plain"])
    for key in out["plain"][names[0]]:
        d = [out["tta"][f][key] - out["plain"][f][key] for f in names]
        print(
            f"{key}: plain {statistics.mean(out['plain'][f][key] for f in names):.4f}, "
            f"tta {statistics.mean(out['tta'][f][key] for f in names):.4f}, "
            f"difference {statistics.mean(d):+.4f} (folds won/lost {sum(x > 0 for x in d)}/"
            f"{sum(x < 0 for x in d)})"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
