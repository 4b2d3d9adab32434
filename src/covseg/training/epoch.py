"""One training epoch: the data loader (expert + weighted pseudo-labelled slices, seeded per
epoch) and the optimisation steps."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from covseg.config import TrainConfig
from covseg.data.augment import AugmentConfig, make_augment
from covseg.data.dataset import PreparedDataset, SliceDataset
from covseg.models import SegOutput
from covseg.training.distributed import ProcessGroup
from covseg.training.losses import BifurcatedLoss, LossTerms

__all__ = ["make_loader", "train_epoch"]


class _Weighted(Dataset):
    """Adds a loss ``"weight"`` to every sample of ``ds`` (pseudo-labelled data < 1)."""

    def __init__(self, ds: Dataset, weight: float) -> None:
        self.ds, self.weight = ds, float(weight)

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict:
        return {**self.ds[i], "weight": self.weight}


def _workers(cfg: TrainConfig, device: torch.device) -> int:
    if cfg.workers >= 0:
        return cfg.workers
    # Slices are in memory; on CPU the cores are better spent on the model itself.
    return min(4, (os.cpu_count() or 1) // 2) if device.type == "cuda" else 0


def make_loader(
    data: PreparedDataset,
    items: list[tuple[str, int]],
    extra: PreparedDataset | None,
    cfg: TrainConfig,
    seed: int,
    epoch: int,
    group: ProcessGroup,
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
    # A last batch of one slice is dropped: batch norm cannot train on one value per channel
    # (a small input whose bottleneck is 1x1 would stop the run with a ValueError).
    per_process = len(kw["sampler"]) if "sampler" in kw else len(ds)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        num_workers=_workers(cfg, device),
        pin_memory=device.type == "cuda",
        drop_last=per_process > 1 and per_process % cfg.batch_size == 1,
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
    for value in torch.unique(w):
        idx = (w == value).nonzero(as_tuple=True)[0]
        t = loss_fn(_subset(out, idx), lung[idx], inf[idx])
        share = len(idx) / len(w)
        total = total + float(value) * share * t.total
        for k in ("lung", "infection_aux", "infection"):
            v = getattr(t, k)
            if v is not None:
                parts[k] = parts.get(k, 0.0) + share * v
    return LossTerms(total, parts.get("lung"), parts.get("infection_aux"), parts["infection"])  # type: ignore[arg-type]


def train_epoch(
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
