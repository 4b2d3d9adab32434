"""Array-in, array-out prediction of slices (no file I/O here)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["predict_slices", "resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other values pass through."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def predict_slices(
    model: nn.Module,
    images01: np.ndarray,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    tta: bool = False,
) -> np.ndarray:
    """Infection probabilities of slices.

    Args:
        model: a network returning :class:`~covseg.models.SegOutput` logits; it is moved to
            ``device``, run in eval mode, and its previous train/eval mode is restored.
        images01: ``(N, S, S)`` (or ``(S, S)``) intensities in ``[0, 1]``, any float dtype.
        batch_size: slices per forward pass.
        device: where to run.
        tta: also predict the left-right flipped slices and average the probabilities.

    Returns:
        ``(N, S, S)`` float32 probabilities of the final infection head (``(S, S)`` for a 2-D
        input).
    """
    x = np.asarray(images01, dtype=np.float32)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected (N, S, S) slices, got shape {x.shape}")
    dev = torch.device(device)
    was_training = model.training
    model.to(dev).eval()
    out = np.empty(x.shape, dtype=np.float32)
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                batch = torch.from_numpy(x[i : i + batch_size])[:, None].to(dev)
                p = torch.sigmoid(model(batch).infection.float())
                if tta:
                    flipped = model(torch.flip(batch, dims=[-1])).infection.float()
                    p = 0.5 * (p + torch.flip(torch.sigmoid(flipped), dims=[-1]))
                out[i : i + batch_size] = p[:, 0].cpu().numpy()
    finally:
        model.train(was_training)
    return out[0] if squeeze else out
