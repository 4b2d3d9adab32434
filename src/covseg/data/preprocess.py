"""Intensity rules and resizing of canonical slices (orientation: :mod:`covseg.data.geometry`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from covseg.errors import DataError

__all__ = [
    "HU_WINDOW",
    "detect_intensity_rule",
    "normalize_intensity",
    "resize_back",
    "resize_slices",
]

HU_WINDOW = (-1250.0, 250.0)
"""The window that maps HU to [0, 1]; the Zenodo Radiopaedia volumes are stored in this window."""


def detect_intensity_rule(array: np.ndarray) -> str:
    """Tell Hounsfield units from 8-bit windowed intensities.

    ``"hu"``: any value below -200 or above 300 (air is about -1000 HU, so every CT slice that
    shows air outside the body is caught; bone is above 300). ``"uint8"``: all values in
    ``[0, 255]`` otherwise (8-bit pictures, windowed volumes such as the Zenodo Radiopaedia ones).

    Args:
        array: an image of any shape.

    Returns:
        ``"hu"`` or ``"uint8"``.

    Raises:
        DataError: values in neither range (e.g. small negative floats); pass the rule explicitly.
    """
    lo, hi = float(np.min(array)), float(np.max(array))
    if lo < -200 or hi > 300:
        return "hu"
    if lo >= 0 and hi <= 255:
        return "uint8"
    raise DataError(
        f"cannot tell the intensity rule from the value range [{lo:g}, {hi:g}]; "
        "pass --intensity hu or --intensity uint8"
    )


def normalize_intensity(array: np.ndarray, rule: str) -> np.ndarray:
    """Map an image to float32 in ``[0, 1]``.

    Args:
        array: any shape.
        rule: ``"hu"``: clip to :data:`HU_WINDOW` ``[-1250, 250]`` then scale linearly;
            ``"uint8"``: divide by 255 (clipped).

    Returns:
        float32 array of the same shape, values in ``[0, 1]``.

    Raises:
        ValueError: unknown rule.
    """
    x = np.asarray(array, dtype=np.float32)
    if rule == "hu":
        lo, hi = HU_WINDOW
        return ((np.clip(x, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if rule == "uint8":
        return np.clip(x / 255.0, 0.0, 1.0).astype(np.float32)
    raise ValueError(f"unknown intensity rule {rule!r} (expected 'hu' or 'uint8')")


def _interpolate(x: np.ndarray, size: tuple[int, int], mask: bool) -> np.ndarray:
    if x.ndim != 3:
        raise ValueError(f"expected (N, H, W), got shape {x.shape}")
    if x.shape[1:] == tuple(size):
        return x.copy()
    if mask:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
        out = F.interpolate(t, size=size, mode="nearest-exact")
        return out[:, 0].numpy().astype(x.dtype)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[:, 0].numpy()


def resize_slices(x: np.ndarray, size: int, *, mask: bool) -> np.ndarray:
    """Resize slices to a square side.

    Args:
        x: ``(N, H, W)``.
        size: output side length.
        mask: ``True`` for label masks (nearest neighbour, labels kept), ``False`` for images
            (bilinear with anti-aliasing when shrinking).

    Returns:
        ``(N, size, size)``; float32 for images, ``x``'s dtype for masks.
    """
    return _interpolate(x, (size, size), mask)


def resize_back(x: np.ndarray, shape_hw: tuple[int, int], *, mask: bool) -> np.ndarray:
    """Inverse of :func:`resize_slices`: ``(N, S, S)`` -> ``(N, H, W)``.

    Args:
        x: ``(N, S, S)`` images (probabilities) or masks.
        shape_hw: the original ``(H, W)``.
        mask: nearest neighbour for masks, bilinear for images/probabilities.

    Returns:
        ``(N, H, W)``.
    """
    return _interpolate(x, (int(shape_hw[0]), int(shape_hw[1])), mask)
