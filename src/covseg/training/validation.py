"""What a run does with the validation slices it held out: the Dice of each epoch and the
post-processing chosen at the end.

Both see the slices as ``segment`` does: the checkpoint's framing
(:func:`~covseg.inference.framing.framed_probabilities`) and the one logits-to-mask step
(:mod:`covseg.inference.postprocess`); the search itself is
:func:`~covseg.training.selection.select_postprocessing`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from covseg.checkpoint import load_checkpoint, read_meta, update_meta
from covseg.config import Preprocessing, TrainConfig
from covseg.data.dataset import PreparedDataset, open_prepared
from covseg.data.splits import split_validation
from covseg.errors import DataError
from covseg.evaluation.metrics import confusion, dice
from covseg.inference.framing import framed_probabilities
from covseg.inference.postprocess import masks_from_probabilities
from covseg.inference.predict import Probabilities, predict_probabilities, resolve_device
from covseg.meta import CheckpointMeta
from covseg.training.selection import Item, select_postprocessing

__all__ = [
    "choose_postprocessing",
    "chosen_postprocessing",
    "stack_slices",
    "validation_dice",
    "validation_slices",
    "write_postprocessing",
]

log = logging.getLogger(__name__)


def stack_slices(
    data: PreparedDataset, items: list[tuple[str, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """The prepared slices ``items`` stacked.

    Args:
        data: the prepared dataset.
        items: ``(case id, slice index)`` pairs.

    Returns:
        ``(images, truth)``: float32 ``(N, S, S)`` prepared slices and their boolean infection
        truth (``N = 0`` without items).
    """
    if not items:
        s = int(data.manifest.get("params", {}).get("size", 0))
        return np.zeros((0, s, s), np.float32), np.zeros((0, s, s), bool)
    images = np.stack([data.load(c)["image"][k] for c, k in items]).astype(np.float32)
    truth = np.stack([data.load(c)["infection"][k] for c, k in items]).astype(bool)
    return images, truth


def _probabilities(
    model: nn.Module, images: np.ndarray, pre: Preprocessing, batch: int, device: torch.device
) -> Probabilities:
    """Head probabilities of prepared slices with the checkpoint's framing (what ``segment``
    computes of them)."""

    def predict(x: np.ndarray) -> Probabilities:
        return predict_probabilities(model, x, batch_size=batch, device=device)

    return framed_probabilities(predict, images, pre.size, pre.framing)


def validation_dice(
    model: nn.Module,
    images: np.ndarray,
    truth: np.ndarray,
    meta: CheckpointMeta,
    batch: int,
    device: torch.device,
) -> float:
    """Per-slice-mean Dice of the masks the run's default post-processing makes of the
    validation slices.

    Args:
        model: the network.
        images: ``(N, S, S)`` prepared validation slices.
        truth: ``(N, S, S)`` boolean infection truth.
        meta: the run's metadata (framing and post-processing).
        batch: slices per forward pass.
        device: where to run the network.

    Returns:
        The Dice, NaN without validation slices.
    """
    if len(images) == 0:
        return math.nan
    probs = _probabilities(model, images, meta.preprocessing, batch, device)
    masks = masks_from_probabilities(*probs, meta.postprocessing, meta.preprocessing.size)
    return float(np.mean(dice(*confusion(masks.infection, truth, axes=(1, 2)))))


def choose_postprocessing(
    checkpoint: str | Path,
    data_root: str | Path | Sequence[str | Path],
    *,
    framing: str | None = None,
    device: str | torch.device = "cpu",
) -> CheckpointMeta:
    """Choose a trained checkpoint's post-processing again on its own validation slices, e.g.
    after changing how ``segment`` frames them: the search that ends :func:`train`, on the
    predictions ``segment`` makes with ``framing``.

    The validation slices are those the run held out: the same split of the recorded training
    cases with the recorded seed and fraction. The weights (and their hash) are untouched; the
    checkpoint's JSON gets the framing, the post-processing and ``val_dice_postprocessed``.

    Args:
        checkpoint: a run's ``best``/``last`` checkpoint (``.safetensors`` or ``.json``).
        data_root: the prepared dataset(s) it was trained on, in the same order.
        framing: one of :data:`~covseg.config.FRAMINGS`; ``None``: the checkpoint's.
        device: where to run the network.

    Returns:
        The updated metadata.

    Raises:
        DataError: a checkpoint without recorded training cases, or data without them.
    """
    meta = read_meta(checkpoint)
    images, truth = validation_slices(meta, data_root, str(checkpoint))
    assert meta.train_config is not None
    return write_postprocessing(
        Path(checkpoint), images, truth, meta.train_config, resolve_device(device), framing=framing
    )


def validation_slices(
    meta: CheckpointMeta, data_root: str | Path | Sequence[str | Path], where: str
) -> tuple[np.ndarray, np.ndarray]:
    """The validation slices a run held out (images, truth): the same split of its recorded
    training cases with its recorded seed and fraction.

    Raises:
        DataError: a checkpoint without recorded training cases, data without them, or a run
            that held out no validation slices (``where`` names the checkpoint).
    """
    cfg, cases = meta.train_config, list(meta.data.train_cases)
    if cfg is None or not cases:
        raise DataError(f"{where}: no recorded training run to take validation slices from")
    data = open_prepared(data_root)
    missing = sorted(set(cases) - set(data.case_ids))
    if missing:
        raise DataError(f"{where}: training case {missing[0]!r} is not in the data")
    _, val_items = split_validation(
        data, cases, fraction=cfg.val_fraction, by=cfg.val_by, seed=cfg.seed
    )
    if not val_items:
        raise DataError(f"{where}: its run held out no validation slices")
    return stack_slices(data, val_items)


def chosen_postprocessing(
    model: nn.Module,
    meta: CheckpointMeta,
    images: np.ndarray,
    truth: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    framing: str | None = None,
) -> CheckpointMeta:
    """``meta`` with the post-processing :func:`select_postprocessing` picks for ``model`` on
    the validation slices (seen with ``framing``, or ``meta``'s), that framing, and
    ``val_dice_postprocessed``; nothing is written."""
    pre = meta.preprocessing
    if framing is not None:
        pre = dataclasses.replace(pre, framing=framing)
    lung, inf = _probabilities(model, images, pre, cfg.batch_size, device)
    sel = select_postprocessing(
        [Item(lung, inf, truth)],
        pre.size,
        min_components=cfg.min_component_candidates,
        lung_margins=cfg.lung_margin_candidates,
    )
    return meta.replace(
        preprocessing=pre,
        postprocessing=sel.postprocessing,
        metrics={**meta.metrics, "val_dice_postprocessed": sel.dice},
        postprocessing_source=f"chosen on {sel.n_slices} validation slices",
    )


def write_postprocessing(
    side: Path,
    images: np.ndarray,
    truth: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    framing: str | None = None,
) -> CheckpointMeta:
    """Select the checkpoint's post-processing on the validation slices (with ``framing``, or
    the checkpoint's); record both in one write."""
    model, meta = load_checkpoint(side, device=device)
    new = chosen_postprocessing(model, meta, images, truth, cfg, device, framing=framing)
    updated = update_meta(
        side,
        preprocessing=new.preprocessing,
        postprocessing=new.postprocessing,
        metrics=new.metrics,
        postprocessing_source=new.postprocessing_source,
    )
    log.info(
        "%s: post-processing %s (val Dice %.4f)",
        side,
        updated.postprocessing,
        updated.metrics["val_dice_postprocessed"],
    )
    return updated
