"""Training augmentation from MONAI dictionary transforms (same geometry for image and masks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["PROFILES", "AugmentConfig", "make_augment"]

_KEYS = ("image", "lung", "infection")
_MASKS = ("lung", "infection")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings.

    Args:
        flip: random left-right flip.
        rotate_deg: maximum in-plane rotation (degrees).
        scale: maximum relative zoom (0.1 = 0.9..1.1).
        intensity: maximum relative contrast/brightness change.
        prob: probability of each transform.
    """

    flip: bool = True
    rotate_deg: float = 10
    scale: float = 0.1
    intensity: float = 0.1
    prob: float = 0.5


PROFILES: dict[str, AugmentConfig] = {"basic": AugmentConfig()}


def make_augment(cfg: AugmentConfig | None, seed: int = 0) -> Callable[[dict], dict] | None:
    """Build the augmentation of SliceDataset samples (``(1, S, S)`` float tensors).

    Geometry (flip, rotation, zoom) is applied to image and masks alike, masks by nearest
    neighbour, so they stay ``{0, 1}``; intensity changes touch the image only, which stays in
    ``[0, 1]``.

    Args:
        cfg: settings; ``None`` or ``prob == 0`` gives ``None`` (no augmentation, e.g. evaluation).
        seed: seed of the transforms' random state.

    Returns:
        A callable on a sample dict, or ``None``.
    """
    if cfg is None or cfg.prob <= 0:
        return None
    from monai.transforms import (
        Compose,
        Lambdad,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandScaleIntensityd,
    )

    keys = list(_KEYS)
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    ts: list = []
    if cfg.flip:
        ts.append(RandFlipd(keys=keys, prob=cfg.prob, spatial_axis=1))
    if cfg.rotate_deg > 0 or cfg.scale > 0:
        rad = float(cfg.rotate_deg) * 3.141592653589793 / 180
        ts.append(
            RandAffined(
                keys=keys,
                prob=cfg.prob,
                rotate_range=(rad,),
                scale_range=(cfg.scale, cfg.scale),
                mode=modes,
                padding_mode="zeros",
            )
        )
    if cfg.intensity > 0:
        ts.append(RandScaleIntensityd(keys="image", factors=cfg.intensity, prob=cfg.prob))
        g = (max(0.1, 1 - cfg.intensity), 1 + cfg.intensity)
        ts.append(RandAdjustContrastd(keys="image", gamma=g, prob=cfg.prob))
    ts.append(Lambdad(keys="image", func=lambda t: torch.clamp(torch.as_tensor(t), 0.0, 1.0)))
    compose = Compose(ts)
    compose.set_random_state(seed=seed)

    def augment(sample: dict) -> dict:
        out = compose({k: sample[k] for k in keys})
        result = dict(sample)
        for k in keys:
            t = torch.as_tensor(out[k]).float()
            result[k] = (t > 0.5).float() if k in _MASKS else t
            if hasattr(result[k], "as_tensor"):
                result[k] = result[k].as_tensor()
        return result

    return augment
