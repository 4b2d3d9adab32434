"""Training augmentation from MONAI dictionary transforms (same geometry for image and masks).

Two profiles (:data:`PROFILES`): ``"basic"`` (flip, small rotation and zoom, mild intensity) and
``"robust"``, which also re-frames slices (up-down flips, crops to the lungs, zooms out with air
padding and in on the lungs, anisotropic scaling) and re-windows them (another window, display
gamma, per-slice min-max and CLAHE, noise, blur), so that a model trained with it copes with the
framings and windows of :mod:`covseg.evaluation.robustness` and of the datasets trained on
(full-frame 8-bit lung-window pictures, min-max normalised + CLAHE'd slices, some upside down,
lung-cropped pictures, HU volumes in :data:`~covseg.data.preprocess.HU_WINDOW`).

MONAI transforms are used where they fit; the few it lacks (crop to the lungs, a lung-keeping
zoom padded with air, window, log-uniform gamma, min-max, CLAHE, JPEG) are small callables with
their own ``numpy`` Generator seeded from the augmentation's seed, so that one seed gives the
same outputs (the training loop rebuilds the augmentation every epoch from the epoch's seed).
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PROFILES", "AugmentConfig", "make_augment"]

_KEYS = ("image", "lung", "infection")
_MASKS = ("lung", "infection")
#: A crop to the lungs spans at least this fraction of each side (a slice with a speck of lung
#: is magnified at most 4x).
_MIN_CROP = 0.25
#: Probability of the noise and of the blur (each), when on.
_NOISE_BLUR_PROB = 0.2
# Stream tags of the hand-written transforms: each draws from its own Generator, so turning one
# on or off leaves the draws of the others unchanged.
_CROP, _ZOOM, _WINDOW, _GAMMA, _MINMAX, _CLAHE, _JPEG = range(1, 8)


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


# ----------------------------------------------------------------------------- hand-written
def _plain(x: object) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def _extent(m: torch.Tensor, axis: int) -> tuple[int, int] | None:
    """Half-open ``(first, last + 1)`` of the nonzero rows (axis 0) or columns (1) of ``m``."""
    idx = torch.nonzero(m.any(dim=1 - axis)).flatten()
    return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else None


def _region(d: dict) -> torch.Tensor:
    """``(H, W)`` boolean lung ∪ infection."""
    return ((_plain(d["lung"]) > 0.5) | (_plain(d["infection"]) > 0.5)).any(dim=0)


def _resample(
    d: dict,
    box: tuple[int, int, int, int],
    size: tuple[int, int],
    offset: tuple[int, int],
) -> dict:
    """Resize ``box`` (half-open ``r0, r1, c0, c1``) of every key to ``size``, placed at
    ``offset`` in a frame of the input's size (image: bilinear, anti-aliased when shrinking,
    padded with its minimum; masks: nearest neighbour, padded with 0)."""
    r0, r1, c0, c1 = box
    (dh, dw), (pr, pc) = size, offset
    out = dict(d)
    for k in _KEYS:
        x = _plain(d[k]).float()
        win = x[None, :, r0:r1, c0:c1]
        if k == "image":
            shrink = dh < r1 - r0 or dw < c1 - c0
            y = F.interpolate(
                win, size=size, mode="bilinear", align_corners=False, antialias=shrink
            )
            frame = torch.full_like(x, float(x.min()))
        else:
            y = F.interpolate(win, size=size, mode="nearest-exact")
            frame = torch.zeros_like(x)
        frame[:, pr : pr + dh, pc : pc + dw] = y[0]
        out[k] = frame
    return out


class _Seeded:
    """A transform drawing from its own Generator, applied with probability ``prob``."""

    def __init__(self, prob: float, seed: int, tag: int) -> None:
        self.prob = prob
        self.rng = np.random.default_rng([seed % 2**32, tag])

    def __call__(self, d: dict) -> dict:
        if self.rng.random() >= self.prob:
            return d
        return self.apply(d)

    def apply(self, d: dict) -> dict:
        raise NotImplementedError


class _CropLungs(_Seeded):
    """Crop to the box of lung ∪ infection plus 2-15 % of its side per border, resized back."""

    def apply(self, d: dict) -> dict:
        margins = self.rng.uniform(0.02, 0.15, size=4)
        if not bool((_plain(d["lung"]) > 0.5).any()):
            return d
        region = _region(d)
        h, w = region.shape
        box: list[int] = []
        for axis, n in enumerate((h, w)):
            a, b = _extent(region, axis)  # type: ignore[misc]  # the lungs are not empty
            lo = a - margins[2 * axis] * (b - a)
            hi = b + margins[2 * axis + 1] * (b - a)
            grow = max(0.0, _MIN_CROP * n - (hi - lo)) / 2
            lo, hi = max(0, math.floor(lo - grow)), min(n, math.ceil(hi + grow))
            box += [lo, hi]
        return _resample(d, (box[0], box[1], box[2], box[3]), (h, w), (0, 0))


class _Zoom(_Seeded):
    """Log-uniform zoom with anisotropic jitter: out with air padding, in on the lungs."""

    def __init__(
        self, zoom_range: tuple[float, float], aspect: float, prob: float, seed: int
    ) -> None:
        super().__init__(prob, seed, _ZOOM)
        self.log_range = (math.log(zoom_range[0]), math.log(zoom_range[1]))
        self.aspect = aspect

    def _axis(self, n: int, f: float, ext: tuple[int, int] | None) -> tuple[int, int, int, int]:
        """``(src0, src1, dst_len, dst_off)`` along one axis of ``n`` pixels zoomed by ``f``."""
        if f < 1:
            dst = max(1, round(f * n))
            return 0, n, dst, int(self.rng.integers(0, n - dst + 1))
        src = min(n, max(1, round(n / f)))
        if ext is None:
            lo, hi = 0, n - src
        elif ext[1] - ext[0] <= src:  # the whole extent fits: windows that hold it
            lo, hi = max(0, ext[1] - src), min(ext[0], n - src)
        else:  # windows inside the extent
            lo, hi = ext[0], ext[1] - src
        o = int(self.rng.integers(lo, hi + 1))
        return o, o + src, n, 0

    def apply(self, d: dict) -> dict:
        z = math.exp(self.rng.uniform(*self.log_range))
        q = 1 + self.rng.uniform(-self.aspect, self.aspect)
        region = _region(d)
        h, w = region.shape
        r0, r1, dh, pr = self._axis(h, z * math.sqrt(q), _extent(region, 0))
        c0, c1, dw, pc = self._axis(w, z / math.sqrt(q), _extent(region, 1))
        return _resample(d, (r0, r1, c0, c1), (dh, dw), (pr, pc))


class _ImageOp(_Seeded):
    """A change of the image only."""

    def apply(self, d: dict) -> dict:
        out = dict(d)
        out["image"] = self.image(_plain(d["image"]).float())
        return out

    def image(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _Window(_ImageOp):
    def image(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.rng.uniform(-0.1, 0.2), self.rng.uniform(0.75, 1.05)
        return torch.clamp((x - lo) / (hi - lo), 0.0, 1.0)


class _Gamma(_ImageOp):
    def __init__(self, gamma_range: tuple[float, float], prob: float, seed: int) -> None:
        super().__init__(prob, seed, _GAMMA)
        self.log_range = (math.log(gamma_range[0]), math.log(gamma_range[1]))

    def image(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, 1.0) ** math.exp(self.rng.uniform(*self.log_range))


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = float(x.min()), float(x.max())
    return x if hi <= lo else (x - lo) / (hi - lo)


class _MinMax(_ImageOp):
    def image(self, x: torch.Tensor) -> torch.Tensor:
        return _minmax(x)


class _Clahe(_ImageOp):
    def image(self, x: torch.Tensor) -> torch.Tensor:
        from skimage.exposure import equalize_adapthist

        clip = self.rng.uniform(0.01, 0.05)
        x = _minmax(x)
        if float(x.max()) <= float(x.min()):  # a constant slice has nothing to equalise
            return x
        eq = [equalize_adapthist(c.numpy(), clip_limit=clip) for c in x]
        return torch.from_numpy(np.stack(eq).astype(np.float32))


class _Jpeg(_ImageOp):
    def image(self, x: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        quality = int(self.rng.integers(30, 91))
        pics = (torch.clamp(x, 0.0, 1.0) * 255).round().to(torch.uint8).numpy()
        out = []
        for p in pics:
            buf = io.BytesIO()
            Image.fromarray(p).save(buf, format="JPEG", quality=quality)
            buf.seek(0)
            out.append(np.asarray(Image.open(buf), dtype=np.float32) / 255)
        return torch.from_numpy(np.stack(out))


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

    keys = list(_KEYS)
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    scale = 0 if cfg.zoom_range is not None else cfg.scale
    ts: list = []
    if cfg.clahe_prob > 0 and cfg.clahe_first:
        ts.append(_Clahe(cfg.clahe_prob, seed, _CLAHE))
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
        ts.append(_CropLungs(cfg.crop_lungs_prob, seed, _CROP))
    if cfg.zoom_range is not None or cfg.aspect > 0:
        ts.append(_Zoom(cfg.zoom_range or (1.0, 1.0), cfg.aspect, cfg.prob, seed))
    if cfg.blur_sigma > 0:
        s = (min(0.3, cfg.blur_sigma), cfg.blur_sigma)
        ts.append(RandGaussianSmoothd(keys="image", sigma_x=s, sigma_y=s, prob=_NOISE_BLUR_PROB))
    if cfg.noise_std > 0:
        ts.append(RandGaussianNoised(keys="image", prob=_NOISE_BLUR_PROB, std=cfg.noise_std))
    if cfg.window_prob > 0:
        ts.append(_Window(cfg.window_prob, seed, _WINDOW))
    if cfg.gamma_range is not None:
        ts.append(_Gamma(cfg.gamma_range, cfg.prob, seed))
    if cfg.minmax_prob > 0:
        ts.append(_MinMax(cfg.minmax_prob, seed, _MINMAX))
    if cfg.clahe_prob > 0 and not cfg.clahe_first:
        ts.append(_Clahe(cfg.clahe_prob, seed, _CLAHE))
    if cfg.intensity > 0:
        ts.append(RandScaleIntensityd(keys="image", factors=cfg.intensity, prob=cfg.prob))
        g = (max(0.1, 1 - cfg.intensity), 1 + cfg.intensity)
        ts.append(RandAdjustContrastd(keys="image", gamma=g, prob=cfg.prob))
    if cfg.jpeg_prob > 0:
        ts.append(_Jpeg(cfg.jpeg_prob, seed, _JPEG))
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
