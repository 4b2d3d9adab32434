"""The Bifurcated Autoencoder: one shared encoder, two U-Net decoders, an FCN fusion block.

Paper: Yazdekhasty, Zindari et al., "Bifurcated Autoencoder for Segmentation of COVID-19 Infected
Regions in CT Images". What the paper states is followed; where it is silent, the authors'
public code is (noted in each docstring).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from covseg.config import ModelConfig
from covseg.models.blocks import (
    ConvBNReLU,
    DoubleConv,
    HistogramEqualize,
    InceptionBlock,
    channels_last,
)

__all__ = [
    "BifurcatedNet",
    "Encoder",
    "FullResRefine",
    "FusionHead",
    "SegOutput",
    "UNetDecoder",
    "input_norm",
]

#: Input sides are padded to a multiple of this (4 pooling steps), outputs cropped back.
DIVISOR = 16


def stem_stride(cfg: ModelConfig) -> int:
    """How much the stem reduces the resolution: 1 (no stem), 2 or 4."""
    return 1 if cfg.stem == "none" else cfg.stem_factor


def divisor(cfg: ModelConfig) -> int:
    """The multiple the input sides are padded to: 16 times the stem's stride."""
    return DIVISOR * stem_stride(cfg)


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear up-sampling by ``factor`` (a reduced-resolution map back to the input grid)."""
    return F.interpolate(x, scale_factor=float(factor), mode="bilinear", align_corners=False)


class SegOutput(NamedTuple):
    """Logits, each ``(B, 1, H, W)``; no sigmoid is applied inside the models.

    A model that does not predict a head (the single-task U-Net baseline has no lung head and no
    auxiliary head) sets it to ``None``.
    """

    lung: torch.Tensor | None
    infection_aux: torch.Tensor | None
    infection: torch.Tensor


def _block(cfg: ModelConfig, in_ch: int, out_ch: int, d_rate: int) -> nn.Module:
    if cfg.use_inception:
        return InceptionBlock(
            in_ch, out_ch, d_rate, cfg.inception_kernels, cfg.dropout, cfg.factorize, cfg.separable
        )
    return DoubleConv(in_ch, out_ch)


class Encoder(nn.Module):
    """Shared encoder: inception blocks at the high-resolution front, double convs deeper,
    2x2 max-pool between the 5 levels.

    With ``cfg.stem`` (``"s2d"`` or ``"conv"``) a stride-2 stem runs first and every level is at
    half the resolution.

    Args:
        cfg: ``encoder_channels`` (5 widths), ``encoder_inception_levels`` (paper: 1),
            ``encoder_d_rate`` (authors: 3), ``stem``.

    Shape:
        ``(B, C_in, H, W) -> [ (B, c_i, H / (s * 2**i), W / (s * 2**i)) for i in 0..4 ]`` with
        ``s`` 1 (no stem) or 2; ``H, W`` must be multiples of ``16 * s``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ch = cfg.encoder_channels
        first_in = cfg.in_channels
        if cfg.stem == "s2d":
            self.stem: nn.Module | None = nn.PixelUnshuffle(cfg.stem_factor)
            first_in = cfg.stem_factor**2 * cfg.in_channels
        elif cfg.stem == "conv":
            self.stem = ConvBNReLU(cfg.in_channels, cfg.stem_channels, 3, stride=2)
            first_in = cfg.stem_channels
        else:
            self.stem = None
        blocks = []
        for i, out_ch in enumerate(ch):
            in_ch = first_in if i == 0 else ch[i - 1]
            if i < cfg.encoder_inception_levels:
                blocks.append(_block(cfg, in_ch, out_ch, cfg.encoder_d_rate))
            else:
                blocks.append(DoubleConv(in_ch, out_ch))
        self.blocks = nn.ModuleList(blocks)
        self.out_channels: tuple[int, ...] = tuple(ch)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.stem is not None:
            x = channels_last(self.stem(x))
        feats = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            feats.append(x)
        return feats


class UNetDecoder(nn.Module):
    """A U-Net decoder over the shared encoder's features, ending in an inception block.

    Level 4 is a double conv on the bottleneck; each higher level up-samples (2x2 transposed
    conv), concatenates the encoder skip and applies a double conv; level 0 uses an inception
    block with ``decoder_d_rate`` instead (the paper: one inception block at each decoder's end).

    Args:
        encoder_channels: the encoder's ``out_channels``.
        channels: the decoder's 5 widths, level 0 (full resolution) first.
        cfg: block settings (inception kernels, dilation, ablation switches).

    Shape:
        features as returned by :class:`Encoder` -> ``(B, channels[0], H, W)``.
    """

    def __init__(
        self, encoder_channels: tuple[int, ...], channels: tuple[int, ...], cfg: ModelConfig
    ) -> None:
        super().__init__()
        self.center = DoubleConv(encoder_channels[-1], channels[-1])
        ups, blocks = [], []
        for level in range(len(channels) - 2, -1, -1):
            ups.append(nn.ConvTranspose2d(channels[level + 1], channels[level], 2, stride=2))
            in_ch = channels[level] + encoder_channels[level]
            if level == 0:
                blocks.append(_block(cfg, in_ch, channels[0], cfg.decoder_d_rate))
            else:
                blocks.append(DoubleConv(in_ch, channels[level]))
        self.ups = nn.ModuleList(ups)
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = channels[0]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.center(feats[-1])
        for up, block, skip in zip(self.ups, self.blocks, reversed(feats[:-1]), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return x


class FullResRefine(nn.Module):
    """A full-resolution correction of reduced-resolution logits (after a stride-2/4 stem).

    ``logits + head(conv([up(feat), image]))``: the logits and features are up-sampled
    bilinearly, the features concatenated with the full-resolution image, then one 3x3
    conv-BN-ReLU (``cfg.refine_channels``) and a 1x1 conv give a residual added to the
    up-sampled logits. The 1x1 convs start at zero, so training starts from the up-sampled
    prediction and learns the full-resolution detail on top of it.

    With ``cfg.refine_levels == 2`` (a 4x4 stem) the same happens in two 2x steps: at ``H/2``
    the features meet a 3x3 conv-BN-ReLU over the 2x2 space-to-depth image, at ``H`` the image
    itself, the second step starting from the first step's features and logits
    (``cfg.refine_half_depth`` 3x3 layers at ``H/2``).

    Args:
        feat_ch: channels of the reduced-resolution features.
        cfg: the architecture.
        width: the refinement's channels (default ``cfg.refine_channels``; the lung logits'
            refinement passes ``cfg.lung_refine_channels``).

    Shape:
        ``(B, 1, h, w), (B, feat_ch, h, w), (B, C_in, H, W) -> (B, 1, H, W)`` with
        ``H, W = s * h, s * w`` (``s`` the stem's stride).
    """

    def __init__(self, feat_ch: int, cfg: ModelConfig, width: int | None = None) -> None:
        super().__init__()
        r = cfg.refine_channels if width is None else width
        self.factor = stem_stride(cfg)
        self.two_step = cfg.refine_levels == 2
        if self.two_step:
            self.factor = 2
            self.half_image = ConvBNReLU(4 * cfg.in_channels, r, 3)
            layers = [ConvBNReLU(feat_ch + r, r, 3)]
            layers += [ConvBNReLU(r, r, 3) for _ in range(cfg.refine_half_depth - 1)]
            # one layer stays a bare module: the parameter names of existing checkpoints
            self.half_conv = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
            self.half_head = _zero_head(r)
            feat_ch = r
        self.conv = ConvBNReLU(feat_ch + cfg.in_channels, r, 3)
        self.head = _zero_head(r)

    def forward(
        self, logits: torch.Tensor, feat: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        if self.two_step:
            half = self.half_image(channels_last(F.pixel_unshuffle(image, 2)))
            feat = self.half_conv(torch.cat([upsample(feat, 2), half], dim=1))
            logits = upsample(logits, 2) + self.half_head(feat)
        x = torch.cat([upsample(feat, self.factor), channels_last(image)], dim=1)
        return upsample(logits, self.factor) + self.head(self.conv(x))


def _zero_head(ch: int) -> nn.Conv2d:
    """A 1x1 conv to one residual logit map that starts at zero."""
    head = nn.Conv2d(ch, 1, kernel_size=1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class FusionHead(nn.Module):
    """The FCN fusion block: gated [image, infection probability, ...] -> final infection logits.

    Layers as in the authors' code: inception block (F=32, d_rate 3) -> 1x1 conv 32 -> 3x3 conv
    16 -> 1x1 conv to one logit map (widths from ``cfg.fusion_channels``).

    With a stem (``cfg.stem``) these layers run at reduced resolution and a
    :class:`FullResRefine` over the 3x3 conv's features and the gated full-resolution image
    brings the logits to full resolution.

    Shape:
        ``(B, in_ch, H, W) -> (B, 1, H, W)``; with a stem ``(B, in_ch, H/s, W/s)`` and the gated
        image ``(B, C_in, H, W)`` -> ``(B, 1, H, W)``.
    """

    def __init__(self, in_ch: int, cfg: ModelConfig) -> None:
        super().__init__()
        f, c1, c2 = cfg.fusion_channels
        self.layers = nn.Sequential(
            _block(cfg, in_ch, f, cfg.fusion_d_rate),
            ConvBNReLU(f, c1, kernel=1),
            ConvBNReLU(c1, c2, kernel=3),
            nn.Conv2d(c2, 1, kernel_size=1),
        )
        self.refine = FullResRefine(c2, cfg) if cfg.stem != "none" else None

    def forward(self, x: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        if self.refine is None:
            return self.layers(x)
        if image is None:
            raise ValueError("a fusion head after a stem needs the full-resolution image")
        feat = self.layers[:-1](x)
        return self.refine(self.layers[-1](feat), feat, image)


def lung_gate(lung_logits: torch.Tensor, mode: str) -> torch.Tensor:
    """The gate that multiplies the fusion input, ``(B, 1, H, W)``.

    ``"soft"`` is the lung probability (authors' code). ``"binary"`` is the thresholded mask
    (the paper) with a straight-through gradient: the forward value is ``p > 0.5``, the backward
    pass uses the gradient of ``p``, so the fusion loss still reaches the lung decoder instead of
    being cut by a step function.
    """
    p = torch.sigmoid(lung_logits)
    if mode == "soft":
        return p
    hard = (p > 0.5).to(p.dtype)
    return hard + p - p.detach()


class BifurcatedNet(nn.Module):
    """Shared encoder, lung decoder, deep-supervised infection decoder, fusion block.

    Args:
        cfg: the architecture (see :class:`~covseg.config.ModelConfig`).

    With a stem (``cfg.stem``) the decoders and the fusion block run at half resolution: the
    fusion input's image part is the space-to-depth image (4 channels, lossless), it is gated by
    the half-resolution lung probability, and the full-resolution refinement sees the image
    gated by the up-sampled lung probability.

    Shape:
        ``(B, 1, H, W)`` with any ``H, W`` (padded to multiples of 16, or 32 with a stem,
        internally, cropped back) -> :class:`SegOutput` of three ``(B, 1, H, W)`` logit maps.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        enc = self.encoder.out_channels
        self.lung_decoder = UNetDecoder(enc, cfg.lung_decoder_channels, cfg)
        self.infection_decoder = UNetDecoder(enc, cfg.infection_decoder_channels, cfg)
        self.lung_head = nn.Conv2d(self.lung_decoder.out_channels, 1, kernel_size=1)
        self.lung_refine = (
            FullResRefine(self.lung_decoder.out_channels, cfg, cfg.lung_refine_channels)
            if cfg.stem != "none" and cfg.lung_refine_channels > 0
            else None
        )
        self.infection_head = nn.Conv2d(self.infection_decoder.out_channels, 1, kernel_size=1)
        self.divisor = divisor(cfg)
        self.stride = stem_stride(cfg)
        fusion_in = cfg.in_channels * self.stride**2 + 1
        if cfg.fusion_inputs == "authors":
            fusion_in += self.infection_decoder.out_channels + enc[0]
        self.fusion = FusionHead(fusion_in, cfg)
        self.input_norm = input_norm(cfg)

    def forward(self, x: torch.Tensor) -> SegOutput:
        h, w = x.shape[-2:]
        x = channels_last(_pad_to(self.input_norm(x), self.divisor))
        feats = self.encoder(x)
        lung_feat = self.lung_decoder(feats)
        lung = self.lung_head(lung_feat)
        inf_feat = self.infection_decoder(feats)
        aux = self.infection_head(inf_feat)
        stem = self.cfg.stem != "none"
        image = channels_last(F.pixel_unshuffle(x, self.stride)) if stem else x
        parts = [image, channels_last(torch.sigmoid(aux))]
        if self.cfg.fusion_inputs == "authors":
            parts += [inf_feat, feats[0]]
        fused = torch.cat(parts, dim=1)
        gate = self.cfg.lung_gate
        if gate != "none":
            fused = fused * lung_gate(lung, gate)
        if stem:
            if self.lung_refine is not None:
                lung = self.lung_refine(lung, lung_feat, x)
            else:
                lung = upsample(lung, self.stride)
            aux = upsample(aux, self.stride)
            infection = self.fusion(fused, x * lung_gate(lung, gate) if gate != "none" else x)
        else:
            infection = self.fusion(fused)
        return SegOutput(lung[..., :h, :w], aux[..., :h, :w], infection[..., :h, :w])


def input_norm(cfg: ModelConfig) -> nn.Module:
    """The network's first step, by ``cfg.input_norm``: histogram equalisation or nothing."""
    return HistogramEqualize() if cfg.input_norm == "equalize" else nn.Identity()


def _pad_to(x: torch.Tensor, divisor: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph))
