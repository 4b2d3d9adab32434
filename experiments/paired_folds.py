"""Score some folds of a candidate cross-validation against the same folds of the shipped recipe's
five-fold study, per source, with each run's own rule (the `own` rows of `covseg calibrate`: last
checkpoint, lung framing, masks through the `segment` path). Issue 35's interim look at the
volume loss (its rule is in docs/experiments/2026-12-06-burden-oof.md, "Not done").

Usage (after the study `covseg calibrate runs/cv_e30 ... --out runs/study5_last --rule-from
pretrained --framing lungs`, from the repository root):
    .venv/bin/python experiments/paired_folds.py runs/cv_e30_vol1 0 3
        # writes runs/paired_cv_e30_vol1_f03/ (the study) and runs/paired_cv_e30_vol1_f03.json

Only the candidate's finished runs of the named folds are scored; where fewer than two are named,
one reference run is added as a filler (the study needs two runs) and left out of the figures.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from covseg.studies.calibrate import run_study

DATA = ["prepared/medseg100", "prepared/zenodo10"]


def summarise(record: dict, runs: list[str]) -> dict:
    """Per source, over the cases of ``runs`` in a study record's `own` rows: per-slice Dice
    (slice-weighted), per-patient pooled Dice, median |relative volume error| and the bias of
    "% of lung infected" (mean predicted − true, percentage points)."""
    cases = [c for c in record["own"]["cases"] if c["run"] in runs]
    out = {}
    for src in sorted({c["mask"]["source"] for c in cases}):
        cs = [c for c in cases if c["mask"]["source"] == src]
        n = sum(c["n_slices"] for c in cs)
        out[src] = {
            "n_cases": len(cs),
            "n_slices": n,
            "per_slice_dice": sum(c["slice_dice_mean"] * c["n_slices"] for c in cs) / n,
            "per_patient_dice": float(np.mean([c["mask"]["pooled_dice"] for c in cs])),
            "median_abs_rel_vol_err": float(
                np.median([abs(c["mask"]["relative_error"]) for c in cs])
            ),
            "bias_percent_points": float(np.mean([c["mask"]["percent_error"] for c in cs])),
            "cases": {
                f"{c['run']}/{c['mask']['case']}": {
                    "dice": round(c["mask"]["pooled_dice"], 4),
                    "rel_vol_err": round(c["mask"]["relative_error"], 4),
                }
                for c in cs
            },
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("candidate", type=Path, help="the candidate's cross-validation folder")
    ap.add_argument("folds", type=int, nargs="+")
    ap.add_argument("--ref", type=Path, default=Path("runs/study5_last"))
    args = ap.parse_args()

    ref = json.loads((args.ref / "burden_oof.json").read_text())
    ref_cv = Path(ref["cv_dir"])
    runs = [f"fold{k}_rep0" for k in args.folds]
    missing = [r for r in runs if not (args.candidate / r / "last.safetensors").exists()]
    if missing:
        raise SystemExit(f"{args.candidate}: no finished run {', '.join(missing)}")
    tag = f"{args.candidate.name}_f{''.join(map(str, args.folds))}"
    pair = Path("runs") / f"paired_{tag}"
    pair.mkdir(parents=True, exist_ok=True)
    links = {r: args.candidate / r for r in runs}
    if len(runs) < 2:
        filler = next(f"fold{k}_rep0" for k in range(5) if f"fold{k}_rep0" not in runs)
        links[filler] = ref_cv / filler
    links["splits.json"] = args.candidate / "splits.json"
    for name, target in links.items():
        if not (pair / name).exists():
            os.symlink(os.path.relpath(target.resolve(), pair.resolve()), pair / name)

    t = time.time()
    cand = run_study(pair, DATA, pair / "study", which="last", framing="lungs")
    result = {
        "candidate": str(args.candidate),
        "folds": args.folds,
        "reference": str(args.ref),
        "candidate_rows": summarise(cand, runs),
        "reference_rows": summarise(ref, runs),
        "seconds": round(time.time() - t),
    }
    print(json.dumps({k: v for k, v in result.items()}, indent=1))
    Path(f"runs/paired_{tag}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
