"""Single-task U-Net baseline of matched width (the paper's claim needs a fair comparison)."""

from __future__ import annotations

import torch
from torch import nn

from covseg.config import ModelConfig
from covseg.models.bifurcated import (
    Encoder,
    FullResRefine,
    SegOutput,
    UNetDecoder,
    _pad_to,
    divisor,
    input_norm,
)

__all__ = ["UNetBaseline"]


class UNetBaseline(nn.Module):
    """The bifurcated network's encoder and infection decoder alone: no lung decoder, no fusion,
    no deep supervision. Blocks follow ``cfg`` (inception or not), so widths and receptive
    fields match the bifurcated model of the same preset. With a stem (``cfg.stem``) the decoder
    ends at reduced resolution and a :class:`FullResRefine` (features up-sampled, concatenated
    with the image, 3x3 conv, 1x1 conv) corrects the up-sampled logits, as in the bifurcated
    model's fusion block.

    Shape:
        ``(B, 1, H, W) -> SegOutput(lung=None, infection_aux=None, infection=(B, 1, H, W))``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = UNetDecoder(self.encoder.out_channels, cfg.infection_decoder_channels, cfg)
        self.head = nn.Conv2d(self.decoder.out_channels, 1, kernel_size=1)
        self.divisor = divisor(cfg)
        self.refine = FullResRefine(self.decoder.out_channels, cfg) if cfg.stem != "none" else None
        self.input_norm = input_norm(cfg)

    def forward(self, x: torch.Tensor) -> SegOutput:
        h, w = x.shape[-2:]
        x = self.input_norm(x).contiguous(memory_format=torch.channels_last)
        x = _pad_to(x, self.divisor)
        feat = self.decoder(self.encoder(x))
        logits = self.head(feat)
        if self.refine is not None:
            logits = self.refine(logits, feat, x)
        return SegOutput(None, None, logits[..., :h, :w])
