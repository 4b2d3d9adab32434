"""The network's architecture: :class:`ModelConfig` and the named :data:`PRESETS`.

A checkpoint carries its :class:`ModelConfig`, so inference rebuilds the network from the file
alone (the nanoGPT habit).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from covseg.config.choices import INPUT_NORMS

__all__ = ["PRESETS", "ModelConfig"]


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
