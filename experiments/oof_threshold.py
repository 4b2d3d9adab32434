"""Out-of-fold look at a finished `covseg cv`: which checkpoint and which threshold to ship.

Every run of the cross-validation predicts its own test fold (data it never saw), so together the
runs give one out-of-fold prediction for every case. On those predictions this script prints the
per-slice-mean and pooled Dice of

- each run's ``best`` (chosen on its validation slices) and ``last`` checkpoint,
- at each run's own threshold (what `covseg report` scores) and at fixed thresholds 0.05 ... 0.95
  shared by all runs,
- with the small-component filter of each candidate size.

A threshold picked here is picked on the test folds: the figures at the chosen value are
optimistic and are *not* the cross-validated result (that is `covseg report`'s, with each run's
own validation threshold). It is how the shipped model's threshold is chosen: on 50 out-of-fold
slices rather than a run's 5 validation slices.

    .venv/bin/python experiments/oof_threshold.py runs/cv_medseg48 prepared/medseg100 --json oof.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from covseg.checkpoint import load_checkpoint
from covseg.data.dataset import PreparedDataset
from covseg.inference import predict_slices
from covseg.metrics import aggregate, confusion
from covseg.models.blocks import fold_batchnorm
from covseg.threshold import THRESHOLDS, remove_small_components

MIN_COMPONENTS = (0, 5, 10, 20, 40)


def oof_predictions(cv_dir: Path, data: PreparedDataset, which: str) -> dict[str, np.ndarray]:
    """Probabilities, truth, case ids and own thresholds of every run's test slices."""
    probs, truth, cases, own = [], [], [], []
    for run in sorted(p for p in cv_dir.iterdir() if (p / f"{which}.safetensors").exists()):
        model, meta = load_checkpoint(run / f"{which}.safetensors", device="cpu")
        best_meta = json.loads((run / "best.json").read_text())
        model = fold_batchnorm(model.eval())
        for cid in meta["data"]["test_cases"]:
            arrays = data.load(cid)
            p = predict_slices(model, arrays["image"], batch_size=8, device="cpu")
            probs.append(p)
            truth.append(arrays["infection"].astype(bool))
            cases += [f"{run.name}/{cid}"] * len(p)
            own += [(float(best_meta["threshold"]), int(best_meta["min_component"]))] * len(p)
    return {
        "probs": np.concatenate(probs),
        "truth": np.concatenate(truth),
        "cases": np.array(cases),
        "own": np.array(own, dtype=float),
    }


def scores(pred: np.ndarray, truth: np.ndarray, cases: np.ndarray) -> tuple[float, float]:
    tp, fp, fn, tn = confusion(pred, truth, axes=(1, 2))
    counts = np.stack([tp, fp, fn, tn], axis=1)
    return (
        aggregate(counts, cases, "per_slice_mean")["dice"],
        aggregate(counts, cases, "pooled")["dice"],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("cv_dir", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    data = PreparedDataset(args.data)
    out: dict[str, dict] = {}
    for which in ("best", "last"):
        oof = oof_predictions(args.cv_dir, data, which)
        probs, truth, cases = oof["probs"], oof["truth"], oof["cases"]
        own = np.stack(
            [
                remove_small_components(p >= t, int(m))
                for p, (t, m) in zip(probs, oof["own"], strict=True)
            ]
        )
        res = {"n_slices": len(probs), "own_threshold": scores(own, truth, cases), "grid": {}}
        for m in MIN_COMPONENTS:
            for t in THRESHOLDS:
                pred = remove_small_components(probs >= t, m)
                res["grid"][f"{t:.2f}/{m}"] = scores(pred, truth, cases)
        best_key = max(res["grid"], key=lambda k: res["grid"][k][0])
        res["best_shared"] = {"threshold/min_component": best_key, "dice": res["grid"][best_key]}
        out[which] = res
        print(
            f"{which}: {len(probs)} out-of-fold slices; each run's own threshold: per-slice "
            f"Dice {res['own_threshold'][0]:.4f}, pooled {res['own_threshold'][1]:.4f}"
        )
        print(
            "  shared threshold (min_component 0): "
            + ", ".join(f"{t:.2f}: {res['grid'][f'{t:.2f}/0'][0]:.3f}" for t in THRESHOLDS[3::2])
        )
        print(
            f"  best shared threshold/min_component {best_key}: per-slice Dice "
            f"{res['grid'][best_key][0]:.4f}, pooled {res['grid'][best_key][1]:.4f} "
            "(chosen on these slices: optimistic)"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
