"""Configuration as data: frozen dataclasses with a JSON round trip.

A checkpoint carries its :class:`ModelConfig`, so inference rebuilds the network from the file
alone (the nanoGPT habit).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = [
    "BACKENDS",
    "INTENSITY_RULES",
    "PRESETS",
    "ROBUSTNESS_VARIANTS",
    "ModelConfig",
    "PostProcessing",
    "Preprocessing",
    "TrainConfig",
    "from_dict",
    "to_dict",
]

T = TypeVar("T")

#: The intensity rules of :func:`covseg.data.preprocess.normalize_intensity`: Hounsfield units;
#: 8-bit pictures or windowed volumes; floats already scaled to ``[0, 1]``; DICOM stored values
#: without the rescale intercept (``HU + 1024``).
INTENSITY_RULES = ("hu", "uint8", "unit", "hu1024")

#: How a :class:`~covseg.inference.predict.Predictor` runs the network (``--backend``):
#: PyTorch fp32, PyTorch with bf16 autocast, or ONNX Runtime (CPU).
BACKENDS = ("torch", "torch-bf16", "onnxruntime")
#: How the network looks at a slice (:mod:`covseg.inference.framing`): the whole slice, or
#: cropped to the lungs that a cheap scout look at the whole slice found.
FRAMINGS = ("full", "lungs")
#: Where training and inference run (``--device``): ``auto`` picks CUDA when available.
DEVICES = ("auto", "cpu", "cuda")
#: The training augmentations (:data:`covseg.data.augment.PROFILES`, ``--augmentation``).
AUGMENTATIONS = ("basic", "robust", "robust_lungs", "robust_clahe_first")
#: The network's first step (``ModelConfig.input_norm``, ``--input-norm``): none, or a per-slice
#: histogram equalisation.
INPUT_NORMS = ("none", "equalize")

#: The variants of ``evaluate --robustness`` (:data:`covseg.evaluation.robustness.VARIANTS`), in
#: table order: as read; cropped to the lungs; zoomed out; another window; two display gammas;
#: adaptive histogram equalisation.
ROBUSTNESS_VARIANTS = (
    "plain",
    "crop_lungs",
    "zoom_out",
    "window",
    "gamma_0.7",
    "gamma_1.4",
    "clahe",
)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from :func:`to_dict` output; lists become tuples, unknown keys are an error.

    Raises:
        ValueError: a key that ``cls`` does not have (a config from a newer covseg, or a typo).
    """
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}")
    return cls(**{k: _tuplify(v) for k, v in data.items()})


def _tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the Bifurcated Autoencoder (or the single-task U-Net baseline).

    Widths run from the full-resolution level (index 0) to the bottleneck (index 4).

    Args:
        model: ``"bifurcated"`` (the paper) or ``"unet"`` (single-task infection U-Net baseline
            with the encoder and infection decoder of the same widths).
        in_channels: image channels (1 for CT).
        encoder_channels: widths of the 5 encoder levels (4 pooling steps).
        lung_decoder_channels: widths of the lung decoder at levels 0..4; level 4 is a conv block
            on the bottleneck before the first up-sampling.
        infection_decoder_channels: the same for the infection decoder.
        inception_kernels: kernel pairs of the three conv branches of an inception block. The paper
            says (3,3), (5,5), (9,9); the authors' code uses (3,3), (7,5), (9,7).
        encoder_inception_levels: how many encoder levels, from the front, use inception blocks
            (the paper: 1; deeper levels use double-conv blocks).
        encoder_d_rate: dilation of the encoder-front inception blocks (authors: 3).
        decoder_d_rate: dilation of the inception blocks at the decoder ends (authors: 1).
        fusion_d_rate: dilation of the fusion block's inception block (authors: 3).
        fusion_channels: widths of the fusion block: inception F, 1x1 conv, 3x3 conv
            (authors: 32, 32, 16), then a 1x1 conv to one logit map.
        fusion_inputs: ``"paper"`` fuses [image, infection probability]; ``"authors"`` also
            concatenates the infection decoder's last features and the first encoder level.
        lung_gate: ``"binary"`` multiplies by the thresholded lung mask (the paper) with a
            straight-through gradient; ``"soft"`` by the lung probability (the authors' code);
            ``"none"`` disables gating (ablation).
        use_inception: ``False`` replaces every inception block by a 3x3 double conv (ablation).
        factorize: compute inception kernels larger than 3 as ``k x 1`` then ``1 x k``
            (Inception-v3's factorisation; same receptive field, far fewer FLOPs; not the paper).
        dropout: dropout before the inception fusion convs (authors: 0.07).
        stem: what runs before the first encoder level. ``"none"`` (the paper): level 0 is at
            full resolution. ``"s2d"``: space-to-depth (each ``s x s`` pixel block becomes
            ``s**2`` channels, lossless; ``s = stem_factor``) and ``"conv"``: a stride-2 3x3
            conv-BN-ReLU to ``stem_channels`` (``s = 2``); with either, every level runs at
            ``1/s`` the resolution (level 0 at ``H/s``, the input is padded to multiples of
            ``16 s``), the fusion block's image input is the space-to-depth image, the lung and
            auxiliary logits are up-sampled bilinearly, and the fusion block is followed by a
            full-resolution refinement (see ``refine_channels``). Not the paper.
        stem_channels: output channels of the ``"conv"`` stem.
        stem_factor: the ``"s2d"`` stem's block size ``s``: 2 (levels from ``H/2``) or 4 (from
            ``H/4``, 16 channels in). The ``"conv"`` stem needs 2.
        separable: depthwise-separable convolutions (depthwise ``k x k``, then ``1 x 1``) in the
            inception blocks' branches and fusion convs. Not the paper.
        refine_channels: with a stem, the width of the full-resolution refinement: the
            fusion (or U-Net baseline decoder) features, up-sampled bilinearly to ``H``,
            concatenated with the (lung-gated) image, one 3x3 conv-BN-ReLU of this width and a
            1x1 conv to a residual added to the up-sampled logits.
        refine_levels: with a ``stem_factor`` 4 stem, ``2`` refines in two steps (``H/4 -> H/2
            -> H``): at ``H/2`` the up-sampled features meet a 3x3 conv-BN-ReLU over the
            space-to-depth (2x2) image, at ``H`` the full-resolution image, each step adding a
            residual to the logits up-sampled from the step before. ``1``: one step (above).
        refine_half_depth: with ``refine_levels=2``, how many 3x3 conv-BN-ReLU layers the
            ``H/2`` step has (``refine_channels`` wide): capacity at ``H/2`` costs a quarter of
            the same at ``H``.
        lung_refine_channels: with a stem, ``> 0`` refines the lung logits too, the same way as
            the fusion block's (from the lung decoder's features and the image, this wide), so
            that the lung mask and the fusion block's full-resolution gate are not bilinear
            up-samplings of ``H/s`` logits; ``0``: up-sampled only.
        input_norm: ``"equalize"`` maps every input slice through its own histogram
            (:class:`~covseg.models.blocks.HistogramEqualize`) before anything else, inside the
            network, so training, ``segment``, ``evaluate`` and the ONNX export all see the same
            canonical picture: a monotone change of intensity (window, gamma, min-max) leaves
            it unchanged, up to the 1024 bins and to the values a window clips. Measured worse
            than ``"none"`` on the cross-source CV (MODEL_CARD.md). ``"none"``: the ``[0, 1]``
            input as it comes (every preset).
    """

    model: Literal["bifurcated", "unet"] = "bifurcated"
    in_channels: int = 1
    encoder_channels: tuple[int, ...] = (50, 90, 180, 320, 600)
    lung_decoder_channels: tuple[int, ...] = (16, 32, 50, 64, 128)
    infection_decoder_channels: tuple[int, ...] = (50, 70, 128, 256, 512)
    inception_kernels: tuple[tuple[int, int], ...] = ((3, 3), (5, 5), (9, 9))
    encoder_inception_levels: int = 1
    encoder_d_rate: int = 3
    decoder_d_rate: int = 1
    fusion_d_rate: int = 3
    fusion_channels: tuple[int, int, int] = (32, 32, 16)
    fusion_inputs: Literal["paper", "authors"] = "authors"
    lung_gate: Literal["binary", "soft", "none"] = "binary"
    use_inception: bool = True
    factorize: bool = False
    dropout: float = 0.07
    stem: Literal["none", "s2d", "conv"] = "none"
    stem_channels: int = 16
    stem_factor: int = 2
    separable: bool = False
    refine_channels: int = 8
    refine_levels: int = 1
    refine_half_depth: int = 1
    lung_refine_channels: int = 0
    input_norm: Literal["none", "equalize"] = "none"

    def __post_init__(self) -> None:
        for name in ("encoder_channels", "lung_decoder_channels", "infection_decoder_channels"):
            if len(getattr(self, name)) != 5:
                raise ValueError(f"ModelConfig.{name} needs 5 widths, got {getattr(self, name)}")
        if len(self.inception_kernels) != 3:
            raise ValueError("ModelConfig.inception_kernels needs 3 kernel pairs")
        if self.model not in ("bifurcated", "unet"):
            raise ValueError(f"ModelConfig.model: unknown {self.model!r}")
        if self.lung_gate not in ("binary", "soft", "none"):
            raise ValueError(f"ModelConfig.lung_gate: unknown {self.lung_gate!r}")
        if self.stem not in ("none", "s2d", "conv"):
            raise ValueError(f"ModelConfig.stem: unknown {self.stem!r}")
        if self.stem_factor not in (2, 4) or (self.stem == "conv" and self.stem_factor != 2):
            raise ValueError(
                f"ModelConfig.stem_factor: 2 or 4 (2 for the conv stem), got {self.stem_factor}"
            )
        if self.refine_levels not in (1, 2) or (self.refine_levels == 2 and self.stem_factor != 4):
            raise ValueError(
                f"ModelConfig.refine_levels: 1, or 2 with stem_factor 4, got {self.refine_levels}"
            )
        for name in ("stem_channels", "refine_channels", "refine_half_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(
                f"ModelConfig.input_norm: one of {', '.join(INPUT_NORMS)}, got {self.input_norm!r}"
            )
        if self.lung_refine_channels < 0:
            raise ValueError(
                f"ModelConfig.lung_refine_channels must be >= 0, got {self.lung_refine_channels}"
            )

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied (the config is frozen)."""
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {}
PRESETS["paper"] = ModelConfig()
# `small`: the same topology, about 10x narrower, sized for a full training on 2 CPU cores.
# The dilated 9x9 / 5x5 branches at full resolution are the CPU hot spot: the small preset keeps
# their receptive fields but factorises them (k x 1 then 1 x k), ~1.3x faster training.
# It gates with the lung probability (the authors' code): the paper's binary gate with a
# straight-through gradient trained markedly worse here (phantoms, fold 0 at 64 px: validation
# Dice 0.89 vs 0.96, lung/aux/final losses 0.32/0.78/1.05 vs 0.05/0.15/0.27 after 26 epochs) --
# the fusion loss, passed through the step, disturbs the lung decoder and the shared encoder.
PRESETS["small"] = ModelConfig(
    encoder_channels=(16, 32, 64, 96, 160),
    lung_decoder_channels=(8, 16, 24, 32, 48),
    infection_decoder_channels=(16, 24, 48, 80, 128),
    fusion_channels=(16, 16, 8),
    factorize=True,
    lung_gate="soft",
)
# `fast`: the same network (shared encoder with the multi-scale dilated inception front, lung and
# deep-supervised infection decoders, lung-gated inception fusion block) behind a 4x4
# space-to-depth stem, so every level runs at H/4 (64x64 for 256x256); the widths at H/4 are
# about 2x small's, and a two-step refinement (H/4 -> H/2 with a conv over the 2x2 space-to-depth
# image -> H with the image, 24 wide) corrects the up-sampled final logits.
# benchmarks/fast_alternatives.py lists every alternative tried with its speed against MONAI
# BasicUNet (same process, alternated); BENCHMARKS.md has the figures of the whole-run benchmark.
# MedSeg 5-fold CV, the shipped recipe (48 epochs), per-fold test Dice of the best-on-validation
# checkpoints: one-step refinement (the first `fast`, 16 wide) 0.587 / 0.630 / 0.687 / 0.677 /
# 0.529, two steps 16 wide 0.614 / 0.647 / 0.692 / 0.674 / 0.524, two steps 24 wide (this)
# 0.640 / 0.656 / 0.693 / 0.686 / 0.546, 32 wide no better; small 0.665 / 0.588 / 0.717 / 0.701 /
# 0.583. Out-of-fold, last-epoch checkpoints: per-slice Dice 0.637 (small 0.661), pooled 0.707
# (small 0.708). Since then: a second 3x3 layer at H/2 (0.635) and refined lung logits (0.615),
# no better; both stay as options (`refine_half_depth`, `lung_refine_channels`). Over four
# training seeds it is 0.649 per slice, `small` 0.676 over three: outside the 0.01 guard.
# Since 2026-12-05 this is `fast4`, the architecture of the shipped model (its checkpoint carries
# this config); `fast` is the network below.
PRESETS["fast4"] = PRESETS["small"].replace(
    stem="s2d",
    stem_factor=4,
    encoder_channels=(32, 48, 64, 96, 160),
    lung_decoder_channels=(16, 16, 24, 32, 48),
    infection_decoder_channels=(32, 32, 48, 80, 128),
    fusion_channels=(24, 16, 16),
    refine_channels=24,
    refine_levels=2,
)
# `fast` (2026-12-05): `small`'s network at H/2 behind a learned stride-2 3x3 conv stem (16
# channels, the only layer at full resolution besides the refinement), the fusion block fed the
# paper's inputs only ([image, infection probability], gated; not the decoder and encoder
# features of the authors' code, which at H/2 cost more than they gave) and a 16-wide
# full-resolution refinement. MedSeg 5-fold CV with the guard's recipe, out-of-fold last-epoch
# per-slice / pooled Dice over five seeds 0.669 / 0.717 (`small` 0.676 / 0.719 over three:
# within the guard's 0.01; `fast4` 0.643 / 0.701). docs/fast_preset.md has every candidate;
# their configs are in benchmarks/fast_alternatives.py.
PRESETS["fast"] = PRESETS["small"].replace(stem="conv", fusion_inputs="paper", refine_channels=16)
# `fast4_wide` (2026-12-06, issue 40): `fast4` at twice the width everywhere (about 4x the
# parameters and FLOPs at the same H/4 resolution): the capacity test of the shipped recipe, the
# network the only change.
PRESETS["fast4_wide"] = PRESETS["fast4"].replace(
    encoder_channels=(64, 96, 128, 192, 320),
    lung_decoder_channels=(32, 32, 48, 64, 96),
    infection_decoder_channels=(64, 64, 96, 160, 256),
    fusion_channels=(48, 32, 32),
    stem_channels=32,
    refine_channels=48,
)


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (stored in every checkpoint next to its :class:`ModelConfig`).

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
            :attr:`Preprocessing.framing` (what ``segment`` then does): the validation Dice and
            the post-processing are chosen on the predictions ``segment`` will make.
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


@dataclass(frozen=True)
class Preprocessing:
    """How slices are turned into network input (stored in every checkpoint).

    Args:
        size: side ``S`` of the square network input; slices are resized to ``S x S``.
        intensity: ``"auto"`` (HU or 8-bit, told per scan), ``"hu"`` or ``"uint8"``
            (:func:`covseg.data.preprocess.normalize_intensity`).
        rotate: quarter turns (counter-clockwise) the training pictures were rotated by in
            ``covseg prepare`` (``--rotate``); ``evaluate`` applies it to the originals too.
        layout: the dataset layout the model was trained on (provenance only).
        params: the other parameters ``covseg prepare`` recorded (provenance only).
        framing: ``"full"`` (the network sees each whole slice) or ``"lungs"`` (it sees the
            crop to the lungs a scout look found; :mod:`covseg.inference.framing`).
    """

    size: int = 256
    intensity: Literal["auto", "hu", "uint8"] = "auto"
    rotate: int = 0
    layout: str | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    framing: Literal["full", "lungs"] = "full"

    def __post_init__(self) -> None:
        if self.framing not in FRAMINGS:
            raise ValueError(
                f"preprocessing.framing must be one of {', '.join(FRAMINGS)}, got {self.framing!r}"
            )
        if not _is_int(self.size) or not 16 <= self.size <= 4096:
            raise ValueError(
                f"preprocessing.size must be an integer in 16..4096, got {self.size!r}"
            )
        if self.intensity not in ("auto", *INTENSITY_RULES):
            raise ValueError(f"preprocessing.intensity: unknown {self.intensity!r}")
        if not _is_int(self.rotate):
            raise ValueError(f"preprocessing.rotate must be an integer, got {self.rotate!r}")
        if self.layout is not None and not isinstance(self.layout, str):
            raise ValueError(f"preprocessing.layout must be a string, got {self.layout!r}")

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Preprocessing:
        """From the flat record of a checkpoint or a prepared manifest's ``params``."""
        own = ("size", "intensity", "rotate", "layout", "framing")
        rotate = record.get("rotate", 0)
        return cls(
            size=record.get("size", 256),
            intensity=record.get("intensity", "auto"),
            rotate=rotate % 4 if _is_int(rotate) else rotate,
            layout=record.get("layout"),
            params={k: v for k, v in record.items() if k not in own},
            framing=record.get("framing", "full"),
        )

    def to_record(self) -> dict[str, Any]:
        """The flat JSON record (inverse of :meth:`from_record`)."""
        return {
            "layout": self.layout,
            **self.params,
            "size": self.size,
            "intensity": self.intensity,
            "rotate": self.rotate,
            "framing": self.framing,
        }


@dataclass(frozen=True)
class PostProcessing:
    """The one step from probabilities to masks (:mod:`covseg.inference.postprocess`), applied
    identically by ``segment``, ``evaluate``, ``cv``, training validation and the selection of
    these values on validation data.

    Sizes are in pixels at the network's input size ``S`` and scaled to each slice's own size
    (areas by ``H * W / S**2``, distances by ``max(H, W) / S``).

    Args:
        threshold: infection probability threshold (``0 < t < 1``).
        min_component: 8-connected infection components smaller than this are removed, slice by
            slice (0 or 1 keeps everything).
        lung_threshold: lung probability threshold.
        lung_margin_px: infection is kept only within the predicted lungs dilated by this many
            pixels (dense consolidation at the pleura is often missed by the lung head);
            ``None`` keeps infection anywhere. Models without a lung head skip the restriction.
    """

    threshold: float = 0.5
    min_component: int = 0
    lung_threshold: float = 0.5
    lung_margin_px: int | None = 2

    def __post_init__(self) -> None:
        for name in ("threshold", "lung_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
                raise ValueError(f"postprocessing.{name} must be a number in (0, 1), got {v!r}")
        if not _is_int(self.min_component) or not 0 <= self.min_component <= 1_000_000:
            raise ValueError(
                f"postprocessing.min_component must be an integer >= 0, got {self.min_component!r}"
            )
        m = self.lung_margin_px
        if m is not None and (not _is_int(m) or not 0 <= m <= 1000):
            raise ValueError(
                f"postprocessing.lung_margin_px must be null or an integer >= 0, got {m!r}"
            )

    def replace(self, **changes: Any) -> PostProcessing:
        """A copy with ``changes`` applied (the config is frozen)."""
        return dataclasses.replace(self, **changes)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
