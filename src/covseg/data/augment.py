"""Training augmentation from MONAI dictionary transforms (same geometry for image and masks).

Two profiles (:data:`PROFILES`): ``"basic"`` (flip, small rotation and zoom, mild intensity) and
``"robust"``, which also re-frames slices (up-down flips, crops to the lungs, zooms out with air
padding and in on the lungs, anisotropic scaling) and re-windows them (another window, display
gamma, per-slice min-max and CLAHE, noise, blur), so that a model trained with it copes with the
framings and windows of :mod:`covseg.evaluation.robustness` and of the datasets trained on
(full-frame 8-bit lung-window pictures, min-max normalised + CLAHE'd slices, some upside down,
lung-cropped pictures, HU volumes in :data:`~covseg.data.preprocess.HU_WINDOW`).

MONAI transforms are used where they fit; the few it lacks (crop to the lungs, a lung-keeping
zoom padded with air, window, log-uniform gamma, min-max, CLAHE, JPEG) are small callables
(:mod:`covseg.data.augment_ops`) with their own ``numpy`` Generator seeded from the
augmentation's seed, so that one seed gives the same outputs (the training loop rebuilds the
augmentation every epoch from the epoch's seed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from covseg.data.augment_ops import KEYS, Clahe, CropLungs, Gamma, Jpeg, MinMax, Window, Zoom

__all__ = ["PROFILES", "AugmentConfig", "make_augment"]

_MASKS = ("lung", "infection")
#: Probability of the noise and of the blur (each), when on.
_NOISE_BLUR_PROB = 0.2


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings; the fields after ``prob`` are off by default (today's behaviour).

    Args:
        flip: random left-right flip.
        rotate_deg: maximum in-plane rotation (degrees).
        scale: maximum relative zoom (0.1 = 0.9..1.1); not used when ``zoom_range`` is set.
        intensity: maximum relative contrast/brightness change.
        prob: probability of each transform (flips, rotation, zoom, gamma, contrast and
            brightness); 0 turns the whole augmentation off.
        vflip: random up-down flip (slices stored upside down, spine at the top).
        zoom_range: ``(lo, hi)`` of a log-uniform zoom factor, e.g. ``(0.5, 2.0)``, replacing
            ``scale``; below 1 the slice shrinks into a frame padded with the image's minimum
            (air; masks with 0) at a random place, above 1 a random window is cropped that keeps
            as much of the lungs (and infection) as fits.
        aspect: anisotropic jitter of the zoom: the rows' factor over the columns' is drawn in
            ``1 ± aspect`` (0.15: up to ±15 %), the area kept; with ``zoom_range`` unset the
            mean zoom is 1 (and ``scale`` still applies).
        crop_lungs_prob: probability of a crop to the bounding box of lung ∪ infection plus a
            random margin of 2-15 % of the box's side on each border (at least a quarter of the
            slice's side), resized to the slice size (the aspect ratio may change, as in
            lung-cropped picture datasets); skipped when the lung mask is empty.
        window_prob: probability of a random window in ``[0, 1]`` space:
            ``x' = clip((x - lo) / (hi - lo), 0, 1)`` with ``lo ~ U(-0.1, 0.2)``,
            ``hi ~ U(0.75, 1.05)`` (``[0, 1]`` is -1250..250 HU; the lung window W1500/L-600 is
            ``lo ≈ -0.07``, ``hi ≈ 0.93``).
        gamma_range: ``(lo, hi)`` of a log-uniform display gamma ``x' = x ** gamma``, applied
            with probability ``prob``, e.g. ``(0.6, 1.7)``.
        clahe_prob: probability of a per-slice min-max followed by CLAHE
            (``skimage.exposure.equalize_adapthist``, ``clip_limit ~ U(0.01, 0.05)``).
        clahe_first: apply the CLAHE step to the whole picture before any framing (flips,
            rotation, crops, zoom), as a picture's producer equalised it before anyone framed
            it; ``False``: to the framed picture, after the window and gamma steps.
        minmax_prob: probability of a per-slice min-max alone (before the CLAHE step).
        noise_std: Gaussian noise of sigma ``~ U(0, noise_std)``, with probability 0.2.
        blur_sigma: Gaussian blur of sigma ``~ U(0.3, blur_sigma)`` per axis, with
            probability 0.2 (image only).
        jpeg_prob: probability of a JPEG round trip of the 8-bit picture (PIL, quality 30-90).

    Raises:
        ValueError: a range not of positive ``lo <= hi``, a probability outside ``[0, 1]``,
            ``aspect`` outside ``[0, 1)`` or a negative ``noise_std`` or ``blur_sigma``.
    """

    flip: bool = True
    rotate_deg: float = 10
    scale: float = 0.1
    intensity: float = 0.1
    prob: float = 0.5
    vflip: bool = False
    zoom_range: tuple[float, float] | None = None
    aspect: float = 0
    crop_lungs_prob: float = 0
    window_prob: float = 0
    gamma_range: tuple[float, float] | None = None
    clahe_prob: float = 0
    clahe_first: bool = False
    minmax_prob: float = 0
    noise_std: float = 0
    blur_sigma: float = 0
    jpeg_prob: float = 0

    def __post_init__(self) -> None:
        for name in ("zoom_range", "gamma_range"):
            r = getattr(self, name)
            if r is not None and not (len(r) == 2 and 0 < r[0] <= r[1]):
                raise ValueError(
                    f"AugmentConfig: {name} must be (lo, hi) with 0 < lo <= hi, got {r}"
                )
        for name in ("crop_lungs_prob", "window_prob", "clahe_prob", "minmax_prob", "jpeg_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(
                    f"AugmentConfig: {name} must be in [0, 1], got {getattr(self, name)}"
                )
        if not 0 <= self.aspect < 1:
            raise ValueError(f"AugmentConfig: aspect must be in [0, 1), got {self.aspect}")
        if self.noise_std < 0 or self.blur_sigma < 0:
            raise ValueError("AugmentConfig: noise_std and blur_sigma must be >= 0")


#: Named settings: ``"basic"`` is the default :class:`AugmentConfig`; ``"robust"`` adds
#: re-framing and re-windowing (see the module docstring); ``"robust_lungs"`` is ``"robust"``
#: with three crops to the lungs in four instead of one, so that most training slices are framed
#: as ``--framing lungs`` shows them to the network (the look at the lungs' box).
PROFILES: dict[str, AugmentConfig] = {
    "basic": AugmentConfig(),
    "robust": AugmentConfig(
        flip=True,
        vflip=True,
        rotate_deg=15,
        zoom_range=(0.5, 2.0),
        aspect=0.15,
        crop_lungs_prob=0.25,
        window_prob=0.3,
        gamma_range=(0.6, 1.7),
        clahe_prob=0.3,
        minmax_prob=0.1,
        noise_std=0.03,
        blur_sigma=1.0,
        intensity=0.1,
        prob=0.5,
    ),
}
PROFILES["robust_lungs"] = dataclasses.replace(PROFILES["robust"], crop_lungs_prob=0.75)
#: ``"robust"`` with its CLAHE step on the whole picture, before the framing (the scale at which
#: an equalised picture reaches ``segment``).
PROFILES["robust_clahe_first"] = dataclasses.replace(PROFILES["robust"], clahe_first=True)


# ----------------------------------------------------------------------------- the pipeline
def make_augment(cfg: AugmentConfig | None, seed: int = 0) -> Callable[[dict], dict] | None:
    """Build the augmentation of SliceDataset samples (``(1, S, S)`` float tensors).

    Geometry comes first and is applied to image and masks alike, masks by nearest neighbour,
    so they stay ``{0, 1}`` and aligned: left-right and up-down flips, rotation (and the
    ``scale`` zoom), crop to the lungs, zoom with anisotropic jitter (after the rotation, so
    that its empty corners are cropped away or become the padding value). Intensity changes
    then touch the image only: blur, noise, window, gamma, min-max, CLAHE, contrast and
    brightness, JPEG; the image is clamped to ``[0, 1]`` at the end. With the fields added for
    the robust profile at their defaults the transforms and outputs are those of the basic
    augmentation. Other keys of the sample are passed through.

    Args:
        cfg: settings (e.g. ``PROFILES["robust"]``); ``None`` or ``prob == 0`` gives ``None``
            (no augmentation, e.g. evaluation).
        seed: seed of the transforms' random state; the same seed gives the same outputs for
            the same sequence of samples.

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
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
    )

    keys = list(KEYS)
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    scale = 0 if cfg.zoom_range is not None else cfg.scale
    ts: list = []
    if cfg.clahe_prob > 0 and cfg.clahe_first:
        ts.append(Clahe(cfg.clahe_prob, seed))
    if cfg.flip:
        ts.append(RandFlipd(keys=keys, prob=cfg.prob, spatial_axis=1))
    if cfg.vflip:
        ts.append(RandFlipd(keys=keys, prob=cfg.prob, spatial_axis=0))
    if cfg.rotate_deg > 0 or scale > 0:
        rad = float(cfg.rotate_deg) * 3.141592653589793 / 180
        ts.append(
            RandAffined(
                keys=keys,
                prob=cfg.prob,
                rotate_range=(rad,),
                scale_range=(scale, scale),
                mode=modes,
                padding_mode="zeros",
            )
        )
    if cfg.crop_lungs_prob > 0:
        ts.append(CropLungs(cfg.crop_lungs_prob, seed))
    if cfg.zoom_range is not None or cfg.aspect > 0:
        ts.append(Zoom(cfg.zoom_range or (1.0, 1.0), cfg.aspect, cfg.prob, seed))
    if cfg.blur_sigma > 0:
        s = (min(0.3, cfg.blur_sigma), cfg.blur_sigma)
        ts.append(RandGaussianSmoothd(keys="image", sigma_x=s, sigma_y=s, prob=_NOISE_BLUR_PROB))
    if cfg.noise_std > 0:
        ts.append(RandGaussianNoised(keys="image", prob=_NOISE_BLUR_PROB, std=cfg.noise_std))
    if cfg.window_prob > 0:
        ts.append(Window(cfg.window_prob, seed))
    if cfg.gamma_range is not None:
        ts.append(Gamma(cfg.gamma_range, cfg.prob, seed))
    if cfg.minmax_prob > 0:
        ts.append(MinMax(cfg.minmax_prob, seed))
    if cfg.clahe_prob > 0 and not cfg.clahe_first:
        ts.append(Clahe(cfg.clahe_prob, seed))
    if cfg.intensity > 0:
        ts.append(RandScaleIntensityd(keys="image", factors=cfg.intensity, prob=cfg.prob))
        g = (max(0.1, 1 - cfg.intensity), 1 + cfg.intensity)
        ts.append(RandAdjustContrastd(keys="image", gamma=g, prob=cfg.prob))
    if cfg.jpeg_prob > 0:
        ts.append(Jpeg(cfg.jpeg_prob, seed))
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
