"""A tiny, randomly initialised bifurcated checkpoint for the segment/ONNX tests.

Random weights give near-constant logits; the head biases are shifted so that the masks are
non-trivial (some lung, some infection), which the geometry and report tests need.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from covseg.checkpoint import save_checkpoint
from covseg.config import PRESETS, PostProcessing, Preprocessing
from covseg.data.preprocess import normalize_intensity, resize_slices
from covseg.data.synthetic import make_phantom
from covseg.meta import CheckpointMeta
from covseg.models import build_model

TINY = PRESETS["small"].replace(
    encoder_channels=(4, 8, 8, 8, 8),
    lung_decoder_channels=(4, 4, 4, 4, 4),
    infection_decoder_channels=(4, 4, 4, 4, 4),
    fusion_channels=(4, 4, 4),
)
SIZE = 32


def save_tiny_checkpoint(path: Path, min_component: int = 2, lung_shift: float = 0.0) -> Path:
    """Write a tiny checkpoint (model input side :data:`SIZE`) at ``path``; its weights path.

    ``lung_shift`` is added to the lung logits (``-50``: a model that never finds lungs).
    """
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    hu = make_phantom(0, (SIZE, SIZE, 4))[0].transpose(2, 1, 0)
    x = torch.from_numpy(resize_slices(normalize_intensity(hu, "hu"), SIZE, mask=False))[:, None]
    with torch.no_grad():
        model.lung_head.bias -= torch.quantile(model(x).lung, 0.6) - lung_shift
        model.fusion.layers[-1].bias -= torch.quantile(model(x).infection, 0.8)
    meta = CheckpointMeta(
        model_config=TINY,
        preprocessing=Preprocessing(size=SIZE, intensity="auto"),
        postprocessing=PostProcessing(threshold=0.5, min_component=min_component),
    )
    return save_checkpoint(path, model, meta)


def fraction(mask: np.ndarray) -> float:
    return float(np.count_nonzero(mask)) / mask.size
