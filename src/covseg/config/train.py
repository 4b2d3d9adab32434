"""How a model is trained: :class:`TrainConfig` (stored in every checkpoint)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from covseg.config.choices import AUGMENTATIONS, DEVICES, FRAMINGS

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (stored in every checkpoint next to its
    :class:`~covseg.config.model.ModelConfig`).

    Where the paper is silent the defaults follow the authors' code (Adam, lr 4e-4, batch 8).

    Args:
        epochs: maximum number of epochs.
        batch_size: slices per optimisation step (per process under DDP).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        schedule: ``"cosine"`` (to 1 % of ``lr`` at ``epochs``), ``"plateau"`` (halve the rate
            after ``plateau_patience`` epochs without a better validation Dice) or ``"none"``.
        plateau_patience: epochs without improvement before ``"plateau"`` lowers the rate.
        patience: early stopping after this many epochs without a better validation Dice
            (0 = never stop early).
        grad_clip: maximum gradient norm (0 = no clipping).
        w_lung: loss weight of the lung head (paper 0.5).
        w_aux: loss weight of the deep-supervision head (paper 1; 0 = no deep supervision).
        w_final: loss weight of the final infection head (paper 2).
        dice: weight of an extra soft-Dice term on the infection heads (0 = the paper's BCE only).
        dice_mode: ``"batch"`` (one soft Dice over all pixels of a batch, the surrogate of the
            pooled Dice) or ``"slice"`` (the mean of each slice's soft-Dice term, the surrogate
            of the per-slice mean Dice that Table 2 reports).
        volume: weight of a per-slice relative infected-area error term on the final head
            (:func:`covseg.training.losses.volume_loss`; 0 = off).
        augment: random flips, rotations, zooms and intensity changes of training slices.
        augmentation: which augmentation (:data:`covseg.data.augment.PROFILES`): ``"basic"``
            (left-right flips, small rotations and zooms, contrast) or ``"robust"`` (also
            up-down flips, zoom 0.5-2x with aspect jitter, crops to the lungs, re-windowing,
            gamma, CLAHE, noise, blur: for a model that must not care about framing and window)
            or ``"robust_lungs"`` (``"robust"`` with most slices cropped to the lungs, the
            framing of ``--framing lungs``) or ``"robust_clahe_first"`` (``"robust"`` with
            its CLAHE on the whole picture, before the framing).
        sampling: how an epoch draws its slices from several datasets (``--data A B``):
            ``"slices"``: every training slice once; ``"sources"``: as many slices as there are,
            drawn with replacement so that each dataset gives an equal share (a small dataset is
            not drowned out by a large one). One dataset: the same as ``"slices"``.
        derived_lung_weight: loss weight of the lung head on slices whose lung mask was
            derived by ``covseg prepare`` rather than drawn by an expert (0 = ignore it).
        val_fraction: share of the training fold held out for validation (paper 12 %).
        val_by: ``"slices"`` (the paper) or ``"patients"``.
        pseudo_weight: loss weight of slices from ``--extra-data`` (noisy pseudo labels).
        extra_per_epoch: slices drawn (seeded, without replacement) from ``--extra-data`` for
            each epoch; 0 = all of them. Keeps the expert slices from being drowned out and the
            epoch length (validation, checkpoints) independent of the extra set's size.
        threshold_search: choose the probability threshold and the minimum component size on the
            validation slices after training (else 0.5 and 0).
        framing: how validation looks at slices, recorded as the checkpoint's
            :attr:`~covseg.config.processing.Preprocessing.framing` (what ``segment`` then
            does): the validation Dice and the post-processing are chosen on the predictions
            ``segment`` will make.
        min_component_candidates: component sizes (pixels at the model's input size) tried by the
            post-processing search; 0 = keep everything.
        lung_margin_candidates: lung margins (pixels at the model's input size; ``None`` = no
            restriction to the lungs) tried by the search; the first is the one validation
            scores with during training.
        fold: test fold index ``0..folds-1``; ``None`` trains on all cases.
        folds: number of cross-validation folds.
        repeat: repeat index (recorded; the caller sets ``seed`` to base + repeat).
        split_seed: seed of the patient folds (the same for every repeat).
        seed: seed of initialisation, validation split, shuffling, augmentation and dropout.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        amp: mixed precision on CUDA (bf16 where supported, else fp16); ignored on CPU.
        workers: DataLoader worker processes; ``-1`` sizes them to the machine (0 on CPU, where
            slices are already in memory and workers only add start-up time).
        threads: torch CPU threads; 0 = all cores (divided among the processes of a torchrun
            job). Lower it when several trainings share one machine.
        keep_epochs: also keep the weights of the last ``keep_epochs`` epochs as
            ``epochNNN.safetensors`` (0 = none): the snapshots that weight averaging (SWA,
            :func:`covseg.training.swa.average_snapshots`) is built from.
    """

    epochs: int = 100
    batch_size: int = 8
    lr: float = 4e-4
    weight_decay: float = 0.0
    schedule: Literal["cosine", "plateau", "none"] = "cosine"
    plateau_patience: int = 5
    patience: int = 20
    grad_clip: float = 5.0
    w_lung: float = 0.5
    w_aux: float = 1.0
    w_final: float = 2.0
    dice: float = 0.0
    dice_mode: Literal["batch", "slice"] = "batch"
    volume: float = 0.0
    augment: bool = True
    augmentation: Literal["basic", "robust", "robust_lungs", "robust_clahe_first"] = "basic"
    sampling: Literal["slices", "sources"] = "slices"
    derived_lung_weight: float = 1.0
    val_fraction: float = 0.12
    val_by: Literal["slices", "patients"] = "slices"
    pseudo_weight: float = 0.5
    extra_per_epoch: int = 0
    threshold_search: bool = True
    framing: Literal["full", "lungs"] = "full"
    min_component_candidates: tuple[int, ...] = (0, 10, 20, 40)
    lung_margin_candidates: tuple[int | None, ...] = (2,)
    fold: int | None = None
    folds: int = 5
    repeat: int = 0
    split_seed: int = 0
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    workers: int = -1
    threads: int = 0
    keep_epochs: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("TrainConfig: epochs, batch_size and lr must be positive")
        if self.schedule not in ("cosine", "plateau", "none"):
            raise ValueError(f"TrainConfig.schedule: unknown {self.schedule!r}")
        if self.device not in DEVICES:
            raise ValueError(f"TrainConfig.device: unknown {self.device!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"TrainConfig.augmentation: unknown {self.augmentation!r}")
        if not self.volume >= 0:
            raise ValueError(f"TrainConfig.volume: must be >= 0, got {self.volume!r}")
        if self.dice_mode not in ("batch", "slice"):
            raise ValueError(f"TrainConfig.dice_mode: unknown {self.dice_mode!r}")
        if self.sampling not in ("slices", "sources"):
            raise ValueError(f"TrainConfig.sampling: unknown {self.sampling!r}")
        if self.framing not in FRAMINGS:
            raise ValueError(f"TrainConfig.framing: unknown {self.framing!r}")
        if not self.lung_margin_candidates or not self.min_component_candidates:
            raise ValueError("TrainConfig: empty post-processing candidate lists")
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise ValueError(f"TrainConfig.fold {self.fold} outside 0..{self.folds - 1}")
        at_least = {
            "weight_decay": 0,
            "plateau_patience": 1,
            "patience": 0,
            "grad_clip": 0,
            "w_lung": 0,
            "w_aux": 0,
            "w_final": 0,
            "dice": 0,
            "pseudo_weight": 0,
            "derived_lung_weight": 0,
            "extra_per_epoch": 0,
            "folds": 1,
            "repeat": 0,
            "workers": -1,
            "threads": 0,
            "keep_epochs": 0,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= low:
                raise ValueError(f"TrainConfig.{name} must be a number >= {low}, got {value!r}")
        if self.dice_mode == "slice" and self.dice == 0:
            raise ValueError("TrainConfig.dice_mode 'slice' needs a soft-Dice term (dice > 0)")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"TrainConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.w_lung + self.w_aux + self.w_final <= 0:
            raise ValueError("TrainConfig: the loss weights w_lung, w_aux, w_final are all 0")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (the config is frozen)."""
        return dataclasses.replace(self, **changes)
