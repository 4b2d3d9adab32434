"""Repeated k-fold cross-validation (the paper's protocol: 5 folds x 3 repeats).

``DIR/splits.json`` holds the patient folds (the same for every repeat); ``DIR/fold{k}_rep{r}/``
is one run: training (seed ``base + r``), then its test fold scored by
:func:`~covseg.evaluation.evaluate.score_cases` — the masks ``segment`` would write, at the
original resolution where the source files exist — with the run's own validated post-processing,
into ``test_metrics.json``. A run with a ``test_metrics.json`` is skipped, one with a
``last_state.json`` is resumed, so ``covseg cv`` can be rerun after a crash.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covseg.checkpoint import load_checkpoint
from covseg.config import ROBUSTNESS_VARIANTS, ModelConfig, TrainConfig
from covseg.data.dataset import CombinedDataset, PreparedDataset, open_prepared
from covseg.data.preprocess import normalize_intensity, resize_slices
from covseg.data.splits import load_or_make_folds
from covseg.errors import DataError
from covseg.evaluation.cases import LabelledCase, original_cases
from covseg.evaluation.evaluate import score_cases, score_variants
from covseg.evaluation.scores import Scores
from covseg.files import write_json
from covseg.inference.segmenter import Segmenter
from covseg.training.loop import train
from covseg.training.state import describe_changes, settings_changes

__all__ = ["evaluate_test_fold", "evaluate_test_robustness", "run_cv", "run_dir"]

log = logging.getLogger(__name__)

PANEL_SLICES = 2
#: Side of the panel images kept per run (``panels.npz``), whatever the original resolution.
PANEL_SIZE = 256


def run_dir(root: str | Path, fold: int, repeat: int) -> Path:
    """``root/fold{fold}_rep{repeat}``."""
    return Path(root) / f"fold{fold}_rep{repeat}"


def run_cv(
    data_root: str | Path | Sequence[str | Path],
    out: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    folds: int = 5,
    repeats: int = 3,
    fold: int | None = None,
    repeat: int | None = None,
    extra_data: str | Path | None = None,
    force: bool = False,
    robustness: bool = False,
) -> list[Path]:
    """Train and test every (fold, repeat) run that is not finished yet.

    A run folder left by an earlier call (finished, or interrupted and then resumed) must have
    been made with the same model, training settings (but those in
    :data:`~covseg.training.state.RESUMABLE`) and data; otherwise this is an error, or with
    ``force`` the run starts over.

    Args:
        data_root: a prepared dataset, or several (one
            :class:`~covseg.data.dataset.CombinedDataset`: case ids ``NAME/ID``, every fold
            holding about ``1/folds`` of each dataset's patients; ``report`` then gives Table 2
            per dataset as well).
        out: the cross-validation folder.
        model_cfg: the network.
        train_cfg: training settings; its ``seed`` is the base seed (repeat ``r`` uses
            ``seed + r``), its ``split_seed`` makes the folds.
        folds: number of patient folds.
        repeats: number of repeats.
        fold: run only this fold (with ``repeat``: only that run).
        repeat: run only this repeat.
        extra_data: pseudo-labelled prepared dataset added to every run's training.
        force: start over the runs whose recorded settings differ.
        robustness: also score every run's test fold re-framed and re-windowed
            (:func:`evaluate_test_robustness`), finished runs included (no retraining).

    Returns:
        The run folders of the runs requested (finished ones included).
    """
    out = Path(out)
    if repeats < 1 or (fold is not None and not 0 <= fold < folds):
        raise DataError(f"{out}: --fold must be in 0..{folds - 1} and --repeats >= 1")
    if repeat is not None and not 0 <= repeat < repeats:
        raise DataError(f"{out}: --repeat must be in 0..{repeats - 1}")
    data = open_prepared(data_root)
    plan = [
        (
            run_dir(out, k, r),
            train_cfg.replace(fold=k, folds=folds, repeat=r, seed=train_cfg.seed + r),
        )
        for r in (range(repeats) if repeat is None else [repeat])
        for k in (range(folds) if fold is None else [fold])
    ]
    for rd, cfg in plan:  # before any work: runs left by a call with other settings
        changes = settings_changes(rd, model_cfg, cfg, data_root)
        if changes and not force:
            raise DataError(
                f"{rd}: made with other settings: {describe_changes(changes)} (use another "
                "--out, or pass --force to start these runs over)"
            )
        if changes:
            log.info("%s: other settings, starting over (--force)", rd)
            shutil.rmtree(rd)
    load_or_make_folds(
        out / "splits.json", data.case_ids, folds, train_cfg.split_seed, data.sources()
    )
    for rd, cfg in plan:
        if (rd / "test_metrics.json").exists():
            log.info("%s: finished, skipping", rd)
            if robustness and not (rd / "test_robustness.json").exists():
                evaluate_test_robustness(rd, data, device=cfg.device)
            continue
        log.info(
            "cross-validation run fold %d/%d, repeat %d/%d",
            cfg.fold + 1,
            folds,
            cfg.repeat + 1,
            repeats,
        )
        resume = (rd / "last_state.json").exists()
        train(model_cfg, cfg, data_root, rd, extra_data=extra_data, resume=resume)
        evaluate_test_fold(rd, data, device=cfg.device, robustness=robustness)
    runs = [rd for rd, _ in plan]
    return runs


def _open_run(
    run: Path, data: PreparedDataset | CombinedDataset, device: str, which: str
) -> tuple[Segmenter, Any, dict]:
    """The run's ``which`` checkpoint as a :class:`Segmenter`, its metadata, and the original
    cases of ``data`` (:func:`~covseg.evaluation.cases.original_cases`)."""
    model, meta = load_checkpoint(run / f"{which}.safetensors")
    seg = Segmenter(model, meta, device=device, batch_size=16)
    with tempfile.TemporaryDirectory(prefix="covseg-cv-") as tmp:
        originals = original_cases(data, meta.preprocessing, Path(tmp))
    return seg, meta, originals


def _write_robustness(run: Path, which: str, scores: dict[str, Scores]) -> dict[str, Any]:
    result = {"checkpoint": which, "variants": {k: v.to_record() for k, v in scores.items()}}
    write_json(run / "test_robustness.json", result)
    log.info(
        "%s: test Dice per variant %s",
        run,
        ", ".join(f"{k} {v.aggregate('per_slice_mean')['dice']:.4f}" for k, v in scores.items()),
    )
    return result


def evaluate_test_fold(
    run: str | Path,
    data: PreparedDataset | CombinedDataset,
    device: str = "auto",
    which: str = "best",
    robustness: bool = False,
) -> dict[str, Any]:
    """Score a run's ``which`` checkpoint on its test cases, as ``segment`` would segment them.

    Writes ``run/test_metrics.json`` (:meth:`~covseg.evaluation.scores.Scores.to_record` plus
    ``fold``, ``repeat`` and ``checkpoint``) and ``run/panels.npz`` (the test slices with the
    most infection, for the report's figure); with ``robustness`` also
    ``run/test_robustness.json`` (:func:`evaluate_test_robustness`), from the same pass: the
    ``plain`` variant is the test fold's scores.

    Returns:
        The dict written to ``test_metrics.json``.
    """
    run = Path(run)
    seg, meta, originals = _open_run(run, data, device, which)
    panel: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, str]] = []

    def keep_panels(case: LabelledCase, rule: str | None, pred: np.ndarray) -> None:
        areas = case.truth.sum(axis=(1, 2))
        for k in np.argsort(-areas)[:PANEL_SLICES]:
            if case.raw is not None and rule is not None:
                img = normalize_intensity(case.raw[k], rule)
            else:
                img = case.images01[k]  # type: ignore[index]
            small = [
                resize_slices(a[None], PANEL_SIZE, mask=m)[0]
                for a, m in (
                    (img, False),
                    (pred[k].astype(np.uint8), True),
                    (case.truth[k].astype(np.uint8), True),
                )
            ]
            panel.append((int(areas[k]), *small, f"{case.id} #{k}"))

    cases = list(meta.data.test_cases)
    if robustness:
        variants = score_variants(
            seg,
            data,
            cases,
            originals,
            on_case=lambda name, case, rule, pred: (
                keep_panels(case, rule, pred) if name == "plain" else None
            ),
        )
        _write_robustness(run, which, variants)
        scores = variants["plain"]
    else:
        scores = score_cases(seg, data, cases, originals, on_case=keep_panels)
    tc = meta.train_config
    result = {
        "fold": None if tc is None else tc.fold,
        "repeat": None if tc is None else tc.repeat,
        "checkpoint": which,
        **scores.to_record(),
    }
    write_json(run / "test_metrics.json", result)
    panel.sort(key=lambda p: -p[0])
    if panel:
        top = panel[:PANEL_SLICES]
        np.savez_compressed(
            run / "panels.npz",
            image=np.stack([p[1] for p in top]).astype(np.float32),
            pred=np.stack([p[2] for p in top]).astype(bool),
            truth=np.stack([p[3] for p in top]).astype(bool),
            title=np.array([p[4] for p in top]),
        )
    log.info(
        "%s: test Dice %.4f (per-slice mean) on %d slices",
        run,
        result["per_slice_mean"].get("dice", float("nan")),
        scores.n_items,
    )
    return result


def evaluate_test_robustness(
    run: str | Path,
    data: PreparedDataset | CombinedDataset,
    device: str = "auto",
    which: str = "best",
    variants: tuple[str, ...] = ROBUSTNESS_VARIANTS,
) -> dict[str, Any]:
    """Score a run's ``which`` checkpoint on its test cases re-framed and re-windowed
    (:func:`~covseg.evaluation.evaluate.score_variants`: the ``segment`` path on each
    variant; ``plain`` equals :func:`evaluate_test_fold`'s scores).

    Writes ``run/test_robustness.json``: ``{"checkpoint", "variants": {name: Scores record}}``.

    Returns:
        The dict written.
    """
    run = Path(run)
    seg, meta, originals = _open_run(run, data, device, which)
    scores = score_variants(seg, data, list(meta.data.test_cases), originals, variants)
    return _write_robustness(run, which, scores)
