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
from covseg.data.augment import PROFILES, make_augment
from covseg.data.dataset import CombinedDataset, PreparedDataset, SliceDataset
from covseg.models import SegOutput
from covseg.training.distributed import ProcessGroup
from covseg.training.losses import BifurcatedLoss

__all__ = ["draw_items", "head_weights", "make_loader", "train_epoch"]


def head_weights(
    data: PreparedDataset | CombinedDataset, case_id: str, cfg: TrainConfig, weight: float = 1.0
) -> tuple[float, float]:
    """``(infection weight, lung weight)`` of the slices of ``case_id``.

    The infection heads count with ``weight`` (1 for expert masks, ``cfg.pseudo_weight`` for the
    pseudo-labelled ``--extra-data``); the lung head with ``weight`` times
    ``cfg.derived_lung_weight`` where ``covseg prepare`` derived the lung mask
    (``"lung_mask": "derived"`` in the manifest) instead of reading an expert one.
    """
    derived = data.case(case_id).get("lung_mask") == "derived"
    return weight, weight * (cfg.derived_lung_weight if derived else 1.0)


class _Weighted(Dataset):
    """Adds the loss weights ``"weight"`` (infection) and ``"lung_weight"`` to every sample."""

    def __init__(
        self,
        ds: SliceDataset,
        cfg: TrainConfig,
        weight: float,
    ) -> None:
        self.ds = ds
        self.weights = {
            c: head_weights(ds.data, c, cfg, weight) for c in {case for case, _ in ds.items}
        }

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        sample = self.ds[i]
        w, w_lung = self.weights[sample["case"]]
        return {**sample, "weight": w, "lung_weight": w_lung}


def draw_items(
    data: PreparedDataset | CombinedDataset,
    items: list[tuple[str, int]],
    sampling: str,
    seed: int,
) -> list[tuple[str, int]]:
    """The training slices of one epoch.

    ``"slices"``: ``items`` as given. ``"sources"``: ``len(items)`` slices drawn with replacement
    (seeded) so that each source of a :class:`CombinedDataset` gives an equal share.
    """
    sources = data.sources()
    names = sorted({sources[c] for c, _ in items})
    if sampling != "sources" or len(names) < 2:
        return list(items)
    by_source = {n: [it for it in items if sources[it[0]] == n] for n in names}
    rng = np.random.default_rng(seed)
    share = rng.multinomial(len(items), [1 / len(names)] * len(names))
    drawn: list[tuple[str, int]] = []
    for n, k in zip(names, share, strict=True):
        pool = by_source[n]
        drawn += [pool[i] for i in rng.integers(0, len(pool), int(k))]
    return drawn


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
    aug = make_augment(PROFILES[cfg.augmentation] if cfg.augment else None, seed=seed)
    drawn = draw_items(data, items, cfg.sampling, seed)
    parts: list[Dataset] = [_Weighted(SliceDataset(data, drawn, aug), cfg, 1.0)]
    if extra is not None:
        ex_items = extra.items(extra.case_ids)
        if 0 < cfg.extra_per_epoch < len(ex_items):
            pick = np.random.default_rng(seed).choice(len(ex_items), cfg.extra_per_epoch, False)
            ex_items = [ex_items[i] for i in sorted(pick)]
        ex = SliceDataset(extra, ex_items, aug)
        parts.append(_Weighted(ex, cfg, cfg.pseudo_weight))
    ds: Dataset = ConcatDataset(parts)
    if group.on:
        sampler = DistributedSampler(ds, group.world, group.rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
        kw: dict[str, Any] = {"sampler": sampler}
    else:
        kw = {"shuffle": True, "generator": torch.Generator().manual_seed(seed)}
    # A last batch of one slice is dropped: batch norm cannot train on one value per channel
    # (a small input whose bottleneck is 1x1 would stop the run with a ValueError).
    per_process = len(kw["sampler"]) if "sampler" in kw else len(ds)
    workers = _workers(cfg, device)
    if workers > 0 and cfg.augment:
        kw["worker_init_fn"] = _WorkerAugment(cfg.augmentation, seed, group.rank)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=per_process > 1 and per_process % cfg.batch_size == 1,
        **kw,
    )


class _WorkerAugment:
    """``worker_init_fn``: each DataLoader worker (and each DDP rank) gets its own augmentation
    seed; otherwise every worker would copy one random state and repeat the same draws."""

    def __init__(self, profile: str, seed: int, rank: int) -> None:
        self.profile, self.seed, self.rank = profile, seed, rank

    def __call__(self, worker_id: int) -> None:
        info = torch.utils.data.get_worker_info()
        seed = (self.seed + 7919 * (1 + worker_id) + 104729 * self.rank) % (2**31)
        aug = make_augment(PROFILES[self.profile], seed=seed)
        for part in info.dataset.datasets if info is not None else ():  # ConcatDataset
            part.ds.transform = aug  # _Weighted(SliceDataset)


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
        w = batch["weight"].to(device, torch.float32)
        w_lung = batch["lung_weight"].to(device, torch.float32)
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            out = net(x)
        out = SegOutput(*[t.float() if t is not None else None for t in out])
        all_one = bool((w == 1).all()) and bool((w_lung == 1).all())
        terms = loss_fn(out, lung, inf, None if all_one else w, None if all_one else w_lung)
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
