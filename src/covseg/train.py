"""Training: a plain PyTorch loop (no framework), single process or DDP under ``torchrun``.

Reproducibility: every random draw of an epoch (shuffling, augmentation, dropout) is seeded from
``(seed, epoch)`` at the start of that epoch, so a run resumed from ``RUN/last`` repeats exactly
what an uninterrupted run would have done; the RNG states are saved as well, for completeness.

Outputs in ``RUN/``: ``last.*`` (every epoch) and ``best.*`` (best validation Dice) checkpoints,
``last_state.*`` (optimizer, scheduler, counters), ``log.csv`` and ``curves.png``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from covseg.checkpoint import (
    load_checkpoint,
    load_train_state,
    read_meta,
    save_checkpoint,
    save_train_state,
    update_meta,
)
from covseg.config import ModelConfig, TrainConfig, to_dict
from covseg.data.augment import AugmentConfig, make_augment
from covseg.data.dataset import PreparedDataset, SliceDataset
from covseg.data.splits import load_or_make_folds, split_validation
from covseg.errors import DataError
from covseg.inference import predict_slices, resolve_device
from covseg.losses import BifurcatedLoss, LossTerms
from covseg.metrics import ConfusionAccumulator
from covseg.models import SegOutput, build_model, count_parameters
from covseg.threshold import choose_min_component, choose_threshold

__all__ = ["LOG_COLUMNS", "fold_cases", "train"]

log = logging.getLogger(__name__)

LOG_COLUMNS = (
    "epoch",
    "lr",
    "loss",
    "loss_lung",
    "loss_aux",
    "loss_final",
    "val_dice",
    "seconds",
)


def fold_cases(
    data: PreparedDataset, cfg: TrainConfig, splits_path: Path
) -> tuple[list[str], list[str]]:
    """``(train cases, test cases)`` of ``cfg.fold`` (all cases and none without a fold)."""
    if cfg.fold is None or cfg.folds < 2:
        return list(data.case_ids), []
    folds = load_or_make_folds(splits_path, data.case_ids, cfg.folds, cfg.split_seed)
    f = folds[cfg.fold]
    return list(f["train"]), list(f["test"])


class _Weighted(Dataset):
    """Adds a loss ``"weight"`` to every sample of ``ds`` (pseudo-labelled data < 1)."""

    def __init__(self, ds: Dataset, weight: float) -> None:
        self.ds, self.weight = ds, float(weight)

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict:
        return {**self.ds[i], "weight": self.weight}


class _Dist:
    """The process group: rank, world size, whether this process writes files."""

    def __init__(self, device: torch.device) -> None:
        self.owned = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owned = True
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.main = self.rank == 0

    def barrier(self) -> None:
        if self.on:
            dist.barrier()

    def close(self) -> None:
        if self.owned:
            dist.destroy_process_group()


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**31)


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data_root: str | Path,
    out: str | Path,
    *,
    extra_data: str | Path | None = None,
    resume: bool = False,
) -> Path:
    """Train one model (one fold of one repeat, or on all cases) and write its run folder.

    The fold's cases come from ``OUT/../splits.json`` when it exists (a cross-validation
    folder), else ``OUT/splits.json`` (made on first use). Validation holds out
    ``train_cfg.val_fraction`` of the fold's training slices (never its test cases). After
    training, the best weights choose the probability threshold and the minimum component size
    on the validation slices; both are stored in ``best.json``.

    Under ``torchrun`` (``WORLD_SIZE > 1``) each process trains on its share of every epoch
    (DistributedSampler); only rank 0 writes.

    Args:
        model_cfg: the network.
        train_cfg: optimisation, data split and device settings.
        data_root: a prepared dataset (``covseg prepare``).
        out: the run folder (created).
        extra_data: another prepared dataset (e.g. pseudo-labelled slices) whose slices are
            added to training only, with loss weight ``train_cfg.pseudo_weight``.
        resume: continue from ``OUT/last.*`` (an error if absent).

    Returns:
        ``out``; the model is ``out / "best.safetensors"``.

    Raises:
        DataError: unusable data or split files; ``resume`` without a previous run.
        CheckpointError: a damaged ``last`` checkpoint when resuming.
    """
    out = Path(out)
    device = resolve_device(train_cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"{out}: --device cuda but no CUDA device is available")
    group = _Dist(device)
    if group.on and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", group.rank)))
        torch.cuda.set_device(device)
    n_threads = train_cfg.threads or max(
        1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    )
    try:
        with _threads(n_threads):
            return _train(
                model_cfg, train_cfg, Path(data_root), out, extra_data, resume, device, group
            )
    finally:
        group.close()


def _train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    data_root: Path,
    out: Path,
    extra_data: str | Path | None,
    resume: bool,
    device: torch.device,
    group: _Dist,
) -> Path:
    data = PreparedDataset(data_root)
    if group.main:
        out.mkdir(parents=True, exist_ok=True)
    group.barrier()
    splits = out.parent / "splits.json"
    if not splits.exists():
        splits = out / "splits.json"
    if cfg.fold is not None and cfg.folds >= 2 and not group.main:
        group.barrier()  # rank 0 writes splits.json first
    train_cases, test_cases = fold_cases(data, cfg, splits)
    if cfg.fold is not None and cfg.folds >= 2 and group.main:
        group.barrier()
    train_items, val_items = split_validation(
        data, train_cases, fraction=cfg.val_fraction, by=cfg.val_by, seed=cfg.seed
    )
    extra = PreparedDataset(extra_data) if extra_data else None
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
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg).to(device)
    log.debug("model: %s parameters", f"{count_parameters(model):,}")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _scheduler(opt, cfg)
    meta = {
        "model_config": to_dict(model_cfg),
        "train_config": to_dict(cfg),
        "preprocessing": {"layout": data.manifest.get("layout"), **data.manifest.get("params", {})},
        "data": {"root": str(data_root), "train_cases": train_cases, "test_cases": test_cases},
    }
    state = {"epoch": 0, "best_dice": -math.inf, "bad_epochs": 0}
    rows: list[dict[str, Any]] = []
    if resume:
        state, rows = _restore(out, model, opt, sched)
    net: nn.Module = model
    if group.on:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn = BifurcatedLoss(cfg.w_lung, cfg.w_aux, cfg.w_final, cfg.dice)
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    val_images, val_truth = _stack(data, val_items)
    start = int(state["epoch"])
    bar = _progress(range(start, cfg.epochs), start, cfg.epochs, disable=not group.main)
    for epoch in bar:
        t0 = time.perf_counter()
        seed = _epoch_seed(cfg.seed, epoch)
        torch.manual_seed(seed)
        loader = _loader(data, train_items, extra, cfg, seed, epoch, group, device)
        losses = _train_epoch(net, loader, loss_fn, opt, scaler, amp_dtype, cfg, device)
        val_dice = _val_dice(model, val_images, val_truth, cfg.batch_size, device)
        lr = opt.param_groups[0]["lr"]
        _step_scheduler(sched, val_dice)
        row = {"epoch": epoch + 1, "lr": lr, **losses, "val_dice": val_dice}
        row["seconds"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
        improved = (val_dice if not math.isnan(val_dice) else -losses["loss"]) > state["best_dice"]
        if improved:
            state["best_dice"] = val_dice if not math.isnan(val_dice) else -losses["loss"]
            state["bad_epochs"] = 0
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        if group.main:
            metrics = {"val_dice": val_dice, "epoch": epoch + 1, "loss": losses["loss"]}
            if improved:
                save_checkpoint(out / "best.safetensors", model, {**meta, "metrics": metrics})
            _save_last(out, model, opt, sched, state, {**meta, "metrics": metrics})
            _write_log(out / "log.csv", rows)
        bar.set_postfix(loss=f"{losses['loss']:.4f}", val_dice=f"{val_dice:.4f}")
        if cfg.patience and state["bad_epochs"] >= cfg.patience:
            log.info(
                "early stop at epoch %d: no better validation Dice in %d epochs",
                epoch + 1,
                cfg.patience,
            )
            break
    bar.close()
    group.barrier()
    if group.main:
        from covseg.plots import plot_curves

        plot_curves(rows, out / "curves.png")
        if cfg.threshold_search and len(val_images):
            _choose_postprocessing(out, val_images, val_truth, cfg, device)
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


def _workers(cfg: TrainConfig, device: torch.device) -> int:
    if cfg.workers >= 0:
        return cfg.workers
    # Slices are in memory; on CPU the cores are better spent on the model itself.
    return min(4, (os.cpu_count() or 1) // 2) if device.type == "cuda" else 0


def _loader(
    data: PreparedDataset,
    items: list[tuple[str, int]],
    extra: PreparedDataset | None,
    cfg: TrainConfig,
    seed: int,
    epoch: int,
    group: _Dist,
    device: torch.device,
) -> DataLoader:
    # The augmentation is rebuilt every epoch from the epoch's seed: resuming repeats it exactly.
    aug = make_augment(AugmentConfig() if cfg.augment else None, seed=seed)
    parts: list[Dataset] = [_Weighted(SliceDataset(data, items, aug), 1.0)]
    if extra is not None:
        ex_items = extra.items(extra.case_ids)
        if 0 < cfg.extra_per_epoch < len(ex_items):
            pick = np.random.default_rng(seed).choice(len(ex_items), cfg.extra_per_epoch, False)
            ex_items = [ex_items[i] for i in sorted(pick)]
        ex = SliceDataset(extra, ex_items, aug)
        parts.append(_Weighted(ex, cfg.pseudo_weight))
    ds = ConcatDataset(parts)
    if group.on:
        sampler = DistributedSampler(ds, group.world, group.rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
        kw: dict[str, Any] = {"sampler": sampler}
    else:
        kw = {"shuffle": True, "generator": torch.Generator().manual_seed(seed)}
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        num_workers=_workers(cfg, device),
        pin_memory=device.type == "cuda",
        **kw,
    )


def _subset(out: SegOutput, idx: torch.Tensor) -> SegOutput:
    return SegOutput(*[t[idx] if t is not None else None for t in out])


def _weighted_loss(
    loss_fn: BifurcatedLoss, out: SegOutput, lung: torch.Tensor, inf: torch.Tensor, w: torch.Tensor
) -> LossTerms:
    """Batch loss where each sample counts with its weight (expert 1, pseudo-labelled less)."""
    if bool((w == 1).all()):
        return loss_fn(out, lung, inf)
    total = 0.0
    parts: dict[str, float] = {}
    terms: list[LossTerms] = []
    for value in torch.unique(w):
        idx = (w == value).nonzero(as_tuple=True)[0]
        t = loss_fn(_subset(out, idx), lung[idx], inf[idx])
        share = len(idx) / len(w)
        total = total + float(value) * share * t.total
        terms.append(t)
        for k in ("lung", "infection_aux", "infection"):
            v = getattr(t, k)
            if v is not None:
                parts[k] = parts.get(k, 0.0) + share * v
    return LossTerms(total, parts.get("lung"), parts.get("infection_aux"), parts["infection"])  # type: ignore[arg-type]


def _train_epoch(
    net: nn.Module,
    loader: DataLoader,
    loss_fn: BifurcatedLoss,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None,
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    net.train()
    sums = dict.fromkeys(("loss", "loss_lung", "loss_aux", "loss_final"), 0.0)
    n = 0
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        lung = batch["lung"].to(device, non_blocking=True)
        inf = batch["infection"].to(device, non_blocking=True)
        w = batch["weight"].to(device)
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            out = net(x)
        out = SegOutput(*[t.float() if t is not None else None for t in out])
        terms = _weighted_loss(loss_fn, out, lung, inf, w)
        opt.zero_grad(set_to_none=True)
        scaler.scale(terms.total).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        b = len(x)
        n += b
        sums["loss"] += float(terms.total.detach()) * b
        for key, v in (
            ("loss_lung", terms.lung),
            ("loss_aux", terms.infection_aux),
            ("loss_final", terms.infection),
        ):
            sums[key] += float(v.detach()) * b if v is not None else math.nan
    return {k: v / max(n, 1) for k, v in sums.items()}


def _stack(data: PreparedDataset, items: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    if not items:
        s = int(data.manifest.get("params", {}).get("size", 0))
        return np.zeros((0, s, s), np.float32), np.zeros((0, s, s), bool)
    images = np.stack([data.load(c)["image"][k] for c, k in items]).astype(np.float32)
    truth = np.stack([data.load(c)["infection"][k] for c, k in items]).astype(bool)
    return images, truth


def _val_dice(
    model: nn.Module, images: np.ndarray, truth: np.ndarray, batch: int, device: torch.device
) -> float:
    """Per-slice-mean Dice of the final head at threshold 0.5 (NaN without validation slices)."""
    if len(images) == 0:
        return math.nan
    probs = predict_slices(model, images, batch_size=batch, device=device)
    acc = ConfusionAccumulator()
    acc.add(probs >= 0.5, truth, case="val")
    return acc.aggregate("per_slice_mean")["dice"]


def _choose_postprocessing(
    out: Path, images: np.ndarray, truth: np.ndarray, cfg: TrainConfig, device: torch.device
) -> None:
    model, _ = load_checkpoint(out / "best.safetensors", device=device)
    probs = predict_slices(model, images, batch_size=cfg.batch_size, device=device)
    thr, dice_thr = choose_threshold(probs, truth)
    min_size, dice_pp = choose_min_component(probs, truth, thr, cfg.min_component_candidates)
    metrics = {
        **read_meta(out / "best.json").get("metrics", {}),
        "val_dice_at_threshold": dice_thr,
        "val_dice_postprocessed": dice_pp,
    }
    update_meta(out / "best.json", threshold=thr, min_component=min_size, metrics=metrics)
    log.info(
        "%s: threshold %.2f (val Dice %.4f), min component %d px (val Dice %.4f)",
        out / "best.json",
        thr,
        dice_thr,
        min_size,
        dice_pp,
    )


# ------------------------------------------------------------------------- resume / logs
def _rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    state["numpy_keys"] = torch.from_numpy(np_state[1].astype(np.uint32).view(np.uint8).copy())
    return state


def _save_last(
    out: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, state: dict, meta: dict
) -> None:
    """``last_state.*`` (model, optimizer, scheduler, counters, RNG) then ``last.*``.

    Resuming reads ``last_state`` alone, which is self-consistent (one atomic commit), so a kill
    between the two saves loses nothing; ``last.*`` is the inference checkpoint of the epoch.
    """
    save_train_state(
        out / "last_state",
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else {},
            "counters": dict(state),
            "rng": _rng_state(),
        },
    )
    save_checkpoint(out / "last.safetensors", model, {**meta, "epoch": state["epoch"]})


def _restore(
    out: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any
) -> tuple[dict, list[dict]]:
    if not (out / "last_state.json").exists():
        raise DataError(f"{out}: --resume but no last_state.json from an earlier run")
    s = load_train_state(out / "last_state")
    model.load_state_dict(s["model"])
    opt_state = s["optimizer"]
    opt_state["state"] = {int(k): v for k, v in opt_state["state"].items()}
    opt.load_state_dict(opt_state)
    if sched is not None and s["scheduler"]:
        sched.load_state_dict(s["scheduler"])
    torch.set_rng_state(s["rng"]["torch"])
    epoch = int(s["counters"]["epoch"])
    rows = [r for r in _read_log(out / "log.csv") if r["epoch"] <= epoch]
    log.info("%s: resuming after epoch %d", out, epoch)
    return dict(s["counters"]), rows


def _write_log(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items()} for r in rows]
