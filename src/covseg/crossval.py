"""Repeated k-fold cross-validation (the paper's protocol: 5 folds x 3 repeats).

``DIR/splits.json`` holds the patient folds (the same for every repeat); ``DIR/fold{k}_rep{r}/``
is one run: training (seed ``base + r``), then its test fold evaluated with the run's own
threshold into ``test_metrics.json``. A run with a ``test_metrics.json`` is skipped, one with a
``last_state.json`` is resumed, so ``covseg cv`` can be rerun after a crash.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from covseg.checkpoint import load_checkpoint
from covseg.config import ModelConfig, TrainConfig
from covseg.data.dataset import PreparedDataset
from covseg.data.splits import load_or_make_folds
from covseg.inference import predict_slices, resolve_device
from covseg.metrics import ConfusionAccumulator, surface_metrics
from covseg.threshold import remove_small_components
from covseg.train import train

__all__ = ["evaluate_test_fold", "run_cv", "run_dir"]

log = logging.getLogger(__name__)

PANEL_SLICES = 2


def run_dir(root: str | Path, fold: int, repeat: int) -> Path:
    """``root/fold{fold}_rep{repeat}``."""
    return Path(root) / f"fold{fold}_rep{repeat}"


def run_cv(
    data_root: str | Path,
    out: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    folds: int = 5,
    repeats: int = 3,
    fold: int | None = None,
    repeat: int | None = None,
    extra_data: str | Path | None = None,
) -> list[Path]:
    """Train and test every (fold, repeat) run that is not finished yet.

    Args:
        data_root: a prepared dataset.
        out: the cross-validation folder.
        model_cfg: the network.
        train_cfg: training settings; its ``seed`` is the base seed (repeat ``r`` uses
            ``seed + r``), its ``split_seed`` makes the folds.
        folds: number of patient folds.
        repeats: number of repeats.
        fold: run only this fold (with ``repeat``: only that run).
        repeat: run only this repeat.
        extra_data: pseudo-labelled prepared dataset added to every run's training.

    Returns:
        The run folders of the runs requested (finished ones included).
    """
    out = Path(out)
    data = PreparedDataset(data_root)
    load_or_make_folds(out / "splits.json", data.case_ids, folds, train_cfg.split_seed)
    runs = []
    for r in range(repeats) if repeat is None else [repeat]:
        for k in range(folds) if fold is None else [fold]:
            rd = run_dir(out, k, r)
            runs.append(rd)
            if (rd / "test_metrics.json").exists():
                log.info("%s: finished, skipping", rd)
                continue
            cfg = train_cfg.replace(fold=k, folds=folds, repeat=r, seed=train_cfg.seed + r)
            log.info("cross-validation run fold %d/%d, repeat %d/%d", k + 1, folds, r + 1, repeats)
            resume = (rd / "last_state.json").exists()
            train(model_cfg, cfg, data_root, rd, extra_data=extra_data, resume=resume)
            evaluate_test_fold(rd, data, device=cfg.device)
    return runs


def evaluate_test_fold(
    run: str | Path, data: PreparedDataset, device: str = "auto"
) -> dict[str, Any]:
    """Evaluate a run's best model on its test cases (at the prepared resolution).

    Writes ``run/test_metrics.json``: ``{"fold", "repeat", "threshold", "min_component",
    "cases" (per slice), "counts" (per slice tp, fp, fn, tn), "kinds" (per case), "surface"
    (per volume case: hd95_mm, nsd_3mm)}`` and ``run/panels.npz`` (a few test slices with the
    most infection, for the report's figure).

    Returns:
        The dict written.
    """
    run = Path(run)
    dev = resolve_device(device)
    model, meta = load_checkpoint(run / "best.safetensors", device=dev)
    thr, min_size = float(meta["threshold"]), int(meta["min_component"])
    cases = meta["data"]["test_cases"]
    acc = ConfusionAccumulator()
    surface: dict[str, dict[str, float]] = {}
    kinds: dict[str, str] = {}
    panel: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, str]] = []
    for cid in cases:
        arrays = data.load(cid)
        probs = predict_slices(model, arrays["image"], batch_size=16, device=dev)
        pred = remove_small_components(probs >= thr, min_size)
        truth = arrays["infection"].astype(bool)
        acc.add(pred, truth, case=cid)
        rec = data.case(cid)
        kinds[cid] = rec.get("kind", "slice")
        if kinds[cid] == "volume" and rec.get("spacing_mm") and rec.get("slice_thickness_mm"):
            spacing = (float(rec["slice_thickness_mm"]), *map(float, rec["spacing_mm"]))
            surface[cid] = surface_metrics(pred, truth, spacing)
        areas = truth.sum(axis=(1, 2))
        for k in np.argsort(-areas)[:PANEL_SLICES]:
            panel.append((int(areas[k]), arrays["image"][k], pred[k], truth[k], f"{cid} #{k}"))
    result = {
        "fold": meta["train_config"]["fold"],
        "repeat": meta["train_config"]["repeat"],
        "threshold": thr,
        "min_component": min_size,
        "cases": acc.cases,
        "counts": np.asarray(acc.counts).reshape(-1, 4).tolist(),
        "kinds": kinds,
        "surface": surface,
        "per_slice_mean": acc.aggregate("per_slice_mean") if acc.n_items else {},
    }
    _write_json(run / "test_metrics.json", result)
    panel.sort(key=lambda p: -p[0])
    if panel:
        top = panel[:PANEL_SLICES]
        np.savez_compressed(
            run / "panels.npz",
            image=np.stack([p[1] for p in top]).astype(np.float32),
            pred=np.stack([p[2] for p in top]),
            truth=np.stack([p[3] for p in top]),
            title=np.array([p[4] for p in top]),
        )
    log.info(
        "%s: test Dice %.4f (per-slice mean) on %d slices",
        run,
        result["per_slice_mean"].get("dice", float("nan")),
        acc.n_items,
    )
    return result


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
