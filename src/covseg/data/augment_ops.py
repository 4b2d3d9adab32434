"""The augmentation transforms MONAI lacks (:func:`covseg.data.augment.make_augment` composes
them with MONAI's): a crop to the lungs, a lung-keeping zoom padded with air, and image-only
changes (window, log-uniform gamma, min-max, CLAHE, JPEG).

Each draws from its own ``numpy`` Generator, seeded from the augmentation's seed and the
transform's stream tag, so turning one on or off leaves the draws of the others unchanged and
one seed gives the same outputs. Samples are dicts of ``(1, H, W)`` tensors under :data:`KEYS`.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["KEYS", "Clahe", "CropLungs", "Gamma", "Jpeg", "MinMax", "Window", "Zoom"]

#: The keys of a sample that the transforms change (geometry: all; intensity: the image).
KEYS = ("image", "lung", "infection")
#: A crop to the lungs spans at least this fraction of each side (a slice with a speck of lung
#: is magnified at most 4x).
_MIN_CROP = 0.25


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
    for k in KEYS:
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
    """A transform drawing from its own Generator (seeded from ``seed`` and the class's stream
    ``tag``), applied with probability ``prob``."""

    tag: int

    def __init__(self, prob: float, seed: int) -> None:
        self.prob = prob
        self.rng = np.random.default_rng([seed % 2**32, self.tag])

    def __call__(self, d: dict) -> dict:
        if self.rng.random() >= self.prob:
            return d
        return self.apply(d)

    def apply(self, d: dict) -> dict:
        raise NotImplementedError


class CropLungs(_Seeded):
    """Crop to the box of lung ∪ infection plus 2-15 % of its side per border, resized back."""

    tag = 1

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


class Zoom(_Seeded):
    """Log-uniform zoom with anisotropic jitter: out with air padding, in on the lungs."""

    tag = 2

    def __init__(
        self, zoom_range: tuple[float, float], aspect: float, prob: float, seed: int
    ) -> None:
        super().__init__(prob, seed)
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


class Window(_ImageOp):
    """A random window in ``[0, 1]`` space, clipped to ``[0, 1]``."""

    tag = 3

    def image(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.rng.uniform(-0.1, 0.2), self.rng.uniform(0.75, 1.05)
        return torch.clamp((x - lo) / (hi - lo), 0.0, 1.0)


class Gamma(_ImageOp):
    """A log-uniform display gamma."""

    tag = 4

    def __init__(self, gamma_range: tuple[float, float], prob: float, seed: int) -> None:
        super().__init__(prob, seed)
        self.log_range = (math.log(gamma_range[0]), math.log(gamma_range[1]))

    def image(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, 1.0) ** math.exp(self.rng.uniform(*self.log_range))


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = float(x.min()), float(x.max())
    return x if hi <= lo else (x - lo) / (hi - lo)


class MinMax(_ImageOp):
    """A per-slice min-max."""

    tag = 5

    def image(self, x: torch.Tensor) -> torch.Tensor:
        return _minmax(x)


class Clahe(_ImageOp):
    """A per-slice min-max, then CLAHE (``skimage.exposure.equalize_adapthist``)."""

    tag = 6

    def image(self, x: torch.Tensor) -> torch.Tensor:
        from skimage.exposure import equalize_adapthist

        clip = self.rng.uniform(0.01, 0.05)
        x = _minmax(x)
        if float(x.max()) <= float(x.min()):  # a constant slice has nothing to equalise
            return x
        eq = [equalize_adapthist(c.numpy(), clip_limit=clip) for c in x]
        return torch.from_numpy(np.stack(eq).astype(np.float32))


class Jpeg(_ImageOp):
    """A JPEG round trip of the 8-bit picture (PIL, quality 30-90)."""

    tag = 7

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
