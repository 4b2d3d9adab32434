"""Networks: :class:`BifurcatedNet` (the paper) and :class:`UNetBaseline`, built from a config."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from covseg.config import PRESETS, ModelConfig
from covseg.models.baselines import UNetBaseline
from covseg.models.bifurcated import BifurcatedNet, SegOutput
from covseg.models.blocks import InceptionBlock

__all__ = [
    "BifurcatedNet",
    "InceptionBlock",
    "SegOutput",
    "UNetBaseline",
    "build_model",
    "count_parameters",
    "model_info",
]


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network described by ``cfg`` (``cfg.model`` picks bifurcated or the U-Net baseline).

    Weights are in channels-last memory format and the models convert their input to it: with
    the few channels at full resolution, oneDNN's channels-last kernels train ~1.6x faster on the
    CPU (benchmarks/), and CUDA's tensor-core paths prefer it too.
    """
    net: nn.Module = UNetBaseline(cfg) if cfg.model == "unet" else BifurcatedNet(cfg)
    return net.to(memory_format=torch.channels_last)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_info(preset: str, model: str = "bifurcated", size: int = 256) -> dict[str, Any]:
    """Build a preset, run one forward pass on ``(1, 1, size, size)``; parameters and shapes.

    Returns:
        ``{"preset", "params", "outputs": {"lung", "infection_aux", "infection"}}`` with each
        output's shape as a list (``None`` for a head the model does not have).
    """
    cfg = PRESETS[preset].replace(model=model)
    net = build_model(cfg).eval()
    with torch.inference_mode():
        out = net(torch.zeros(1, cfg.in_channels, size, size))
    return {
        "preset": preset,
        "params": count_parameters(net),
        "outputs": {
            k: (list(v.shape) if v is not None else None) for k, v in out._asdict().items()
        },
    }
