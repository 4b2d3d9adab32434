"""Configuration as data: frozen dataclasses with a JSON round trip.

A checkpoint carries its :class:`ModelConfig`, so inference rebuilds the network from the file
alone (the nanoGPT habit).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = ["PRESETS", "ModelConfig", "from_dict", "to_dict"]

T = TypeVar("T")


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

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied (the config is frozen)."""
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {}
PRESETS["paper"] = ModelConfig()
# `small`: the same topology, about 10x narrower, sized for a full training on 2 CPU cores.
# The 9x9 branch at full resolution is the CPU hot spot; the small preset keeps the paper's
# kernel sizes but with far fewer channels.
PRESETS["small"] = ModelConfig(
    encoder_channels=(16, 32, 64, 96, 160),
    lung_decoder_channels=(8, 16, 24, 32, 48),
    infection_decoder_channels=(16, 24, 48, 80, 128),
    fusion_channels=(16, 16, 8),
)
