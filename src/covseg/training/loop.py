"""Training: a plain PyTorch loop (no framework), single process or DDP under ``torchrun``.

Reproducibility: every random draw of an epoch (shuffling, augmentation, dropout) is seeded from
``(seed, epoch)`` at the start of that epoch, so a run resumed from ``RUN/last`` repeats exactly
what an uninterrupted run would have done; the RNG states are saved and restored as well.

Validation and the choice of the post-processing go through the same step as ``segment``
(:mod:`covseg.inference.postprocess`; :mod:`covseg.training.validation`).

Outputs in ``RUN/``: ``last.*`` (every epoch) and ``best.*`` (best validation Dice) checkpoints,
each with the post-processing chosen on the validation slices, ``last_state.*`` (optimizer,
scheduler, counters, RNG; :mod:`covseg.training.state`), ``log.csv`` and ``curves.png``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from covseg.checkpoint import save_checkpoint
from covseg.config import ModelConfig, PostProcessing, Preprocessing, TrainConfig
from covseg.data.dataset import CombinedDataset, PreparedDataset, data_key, open_prepared
from covseg.data.splits import load_or_make_folds, split_validation
from covseg.errors import DataError
from covseg.inference.predict import resolve_device
from covseg.meta import CheckpointMeta, DataRecord
from covseg.models import build_model, count_parameters
from covseg.training.distributed import ProcessGroup, cpu_threads, torch_threads
from covseg.training.epoch import make_loader, train_epoch
from covseg.training.losses import BifurcatedLoss
from covseg.training.state import restore, save_last, write_log
from covseg.training.validation import stack_slices, validation_dice, write_postprocessing

__all__ = ["fold_cases", "train"]

log = logging.getLogger(__name__)


def fold_cases(
    data: PreparedDataset | CombinedDataset, cfg: TrainConfig, splits_path: Path
) -> tuple[list[str], list[str]]:
    """``(train cases, test cases)`` of ``cfg.fold`` (all cases and none without a fold); the
    folds of several datasets are stratified by dataset."""
    if cfg.fold is None or cfg.folds < 2:
        return list(data.case_ids), []
    folds = load_or_make_folds(
        splits_path, data.case_ids, cfg.folds, cfg.split_seed, data.sources()
    )
    f = folds[cfg.fold]
    return list(f["train"]), list(f["test"])


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**31)


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data_root: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    extra_data: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
) -> Path:
    """Train one model (one fold of one repeat, or on all cases) and write its run folder.

    The fold's cases come from ``OUT/../splits.json`` when it exists (a cross-validation
    folder), else ``OUT/splits.json`` (made on first use). Validation holds out
    ``train_cfg.val_fraction`` of the fold's training slices (never its test cases). After
    training, the best and the last weights each choose their post-processing (threshold,
    minimum component, lung margin) on the validation slices.

    Under ``torchrun`` (``WORLD_SIZE > 1``) each process trains on its share of every epoch
    (DistributedSampler); only rank 0 writes.

    Args:
        model_cfg: the network.
        train_cfg: optimisation, data split and device settings.
        data_root: a prepared dataset (``covseg prepare``), or several: trained on together as
            one :class:`~covseg.data.dataset.CombinedDataset` (case ids ``NAME/ID``, folds
            stratified by dataset, ``train_cfg.sampling`` balancing them).
        out: the run folder (created).
        extra_data: another prepared dataset (e.g. pseudo-labelled slices) whose slices are
            added to training only, with loss weight ``train_cfg.pseudo_weight``.
        resume: continue from ``OUT/last_state.*`` (an error if absent, or if the settings
            differ from the run's, see :func:`~covseg.training.state.settings_changes`).
        force: with ``resume``, continue although settings differ (not the model).

    Returns:
        ``out``; the models are ``out / "best.safetensors"`` and ``out / "last.safetensors"``.

    Raises:
        DataError: unusable data or split files; ``resume`` without a previous run.
        CheckpointError: a damaged ``last_state`` when resuming.
    """
    out = Path(out)
    device = resolve_device(train_cfg.device)
    group = ProcessGroup(device)
    if group.on and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", group.rank)))
        torch.cuda.set_device(device)
    try:
        with torch_threads(cpu_threads(train_cfg.threads)):
            return _train(
                model_cfg, train_cfg, data_root, out, extra_data, resume, force, device, group
            )
    finally:
        group.close()


def _train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    data_root: str | Path | Sequence[str | Path],
    out: Path,
    extra_data: str | Path | None,
    resume: bool,
    force: bool,
    device: torch.device,
    group: ProcessGroup,
) -> Path:
    data = open_prepared(data_root)
    if resume and not (out / "last_state.json").exists():
        raise DataError(f"{out}: --resume but no last_state.json from an earlier run")
    if group.main:
        out.mkdir(parents=True, exist_ok=True)
    group.barrier()
    splits = out.parent / "splits.json"
    if not splits.exists():
        splits = out / "splits.json"
    folded = cfg.fold is not None and cfg.folds >= 2
    if folded and not group.main:
        group.barrier()  # rank 0 writes splits.json first
    train_cases, test_cases = fold_cases(data, cfg, splits)
    if folded and group.main:
        group.barrier()
    train_items, val_items = split_validation(
        data, train_cases, fraction=cfg.val_fraction, by=cfg.val_by, seed=cfg.seed
    )
    extra = PreparedDataset(extra_data) if extra_data else None
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg).to(device)
    log.debug("model: %s parameters", f"{count_parameters(model):,}")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _scheduler(opt, cfg)
    params = dict(data.manifest.get("params", {}))
    meta = CheckpointMeta(
        model_config=model_cfg,
        preprocessing=Preprocessing.from_record(
            {"layout": data.manifest.get("layout"), **params, "framing": cfg.framing}
        ),
        postprocessing=PostProcessing(lung_margin_px=cfg.lung_margin_candidates[0]),
        train_config=cfg,
        data=DataRecord(
            root=str(data.root) if isinstance(data, PreparedDataset) else data_key(data.roots),
            train_cases=tuple(train_cases),
            test_cases=tuple(test_cases),
        ),
    )
    counters: dict[str, Any] = {"epoch": 0, "best_dice": -math.inf, "bad_epochs": 0}
    rows: list[dict[str, Any]] = []
    if resume:
        counters, rows = restore(out, model, opt, sched, meta, force)
        log.info("%s: resuming after epoch %d", out, counters["epoch"])
    log.info(
        "%s: %d training slices%s, %d validation slices, %d test cases held out; device %s x%d",
        out,
        len(train_items),
        f" + {sum(c['n_slices'] for c in extra.cases)} extra" if extra else "",
        len(val_items),
        len(test_cases),
        device,
        group.world,
    )
    net: nn.Module = model
    if group.on:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn = BifurcatedLoss(
        cfg.w_lung, cfg.w_aux, cfg.w_final, cfg.dice, cfg.dice_mode, volume=cfg.volume
    )
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    val_images, val_truth = stack_slices(data, val_items)
    start = int(counters["epoch"])
    bar = _progress(range(start, cfg.epochs), start, cfg.epochs, disable=not group.main)
    for epoch in bar:
        t0 = time.perf_counter()
        seed = _epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed)
        loader = make_loader(data, train_items, extra, cfg, seed, epoch, group, device)
        losses = train_epoch(net, loader, loss_fn, opt, scaler, amp_dtype, cfg, device)
        val_dice = validation_dice(model, val_images, val_truth, meta, cfg.batch_size, device)
        lr = opt.param_groups[0]["lr"]
        _step_scheduler(sched, val_dice)
        row = {"epoch": epoch + 1, "lr": lr, **losses, "val_dice": val_dice}
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
        score = val_dice if not math.isnan(val_dice) else -losses["loss"]
        improved = score > counters["best_dice"]
        if improved:
            counters["best_dice"], counters["bad_epochs"] = score, 0
        else:
            counters["bad_epochs"] += 1
        counters["epoch"] = epoch + 1
        if group.main:
            epoch_meta = meta.replace(
                metrics={"val_dice": val_dice, "epoch": epoch + 1, "loss": losses["loss"]},
                epoch=epoch + 1,
            )
            if improved:
                save_checkpoint(out / "best.safetensors", model, epoch_meta)
            save_last(out, model, opt, sched, counters, epoch_meta)
            if epoch + 1 > cfg.epochs - cfg.keep_epochs:
                save_checkpoint(out / f"epoch{epoch + 1:03d}.safetensors", model, epoch_meta)
            write_log(out / "log.csv", rows)
        bar.set_postfix(loss=f"{losses['loss']:.4f}", val_dice=f"{val_dice:.4f}")
        if cfg.patience and counters["bad_epochs"] >= cfg.patience:
            log.info(
                "early stop at epoch %d: no better validation Dice in %d epochs",
                epoch + 1,
                cfg.patience,
            )
            break
    bar.close()
    group.barrier()
    if group.main:
        from covseg.figures.curves import plot_curves

        plot_curves(rows, out / "curves.png")
        if cfg.threshold_search and len(val_images):
            for name in ("best", "last"):
                write_postprocessing(out / f"{name}.json", val_images, val_truth, cfg, device)
    group.barrier()
    return out


def _progress(it: range, start: int, total: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(
        it, initial=start, total=total, desc="epochs", unit="ep", file=sys.stderr, disable=disable
    )


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=cfg.epochs, eta_min=cfg.lr * 0.01
        )
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=0.5, patience=cfg.plateau_patience
        )
    return None


def _step_scheduler(sched: Any, val_dice: float) -> None:
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        sched.step(0.0 if math.isnan(val_dice) else val_dice)
    elif sched is not None:
        sched.step()


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or not cfg.amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
