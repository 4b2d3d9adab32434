"""Shared fixtures for the training/evaluation tests: a tiny network and prepared phantoms."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from covseg.checkpoint import save_checkpoint
from covseg.config import PRESETS, ModelConfig, Preprocessing, TrainConfig
from covseg.data.prepare import prepare
from covseg.data.preprocess import normalize_intensity, resize_slices
from covseg.data.synthetic import make_phantom, write_synthetic_dataset
from covseg.meta import CheckpointMeta
from covseg.models import build_model

#: The small preset's topology at a fraction of its width (fast on 2 CPU cores).
TINY: ModelConfig = PRESETS["small"].replace(
    encoder_channels=(8, 16, 24, 32, 48),
    lung_decoder_channels=(4, 8, 12, 16, 24),
    infection_decoder_channels=(8, 12, 16, 24, 32),
    fusion_channels=(8, 8, 4),
)

#: Deterministic CPU training that learns the phantoms quickly.
FAST = TrainConfig(
    epochs=2, batch_size=8, lr=2e-3, dice=1.0, patience=0, augment=False, device="cpu"
)


def tiny_checkpoint(path: Path) -> tuple[Path, nn.Module]:
    """An untrained :data:`TINY` checkpoint at 32 px (seeded) that finds some lung, and its model."""
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    # shift the lung head so that an untrained model finds some lung (about half of a phantom's
    # pixels): the infection is restricted to the lungs, and no lung would mean no infection
    hu = make_phantom(0, (32, 32, 4))[0].transpose(2, 1, 0)
    x = torch.from_numpy(resize_slices(normalize_intensity(hu, "hu"), 32, mask=False))[:, None]
    with torch.no_grad():
        model.lung_head.bias -= torch.quantile(model(x).lung, 0.5)
    meta = CheckpointMeta(model_config=TINY, preprocessing=Preprocessing(size=32))
    return save_checkpoint(path, model, meta), model


def prepared_phantoms(root: Path, cases: int = 4, slices: int = 8, size: int = 32) -> Path:
    raw = write_synthetic_dataset(root / "raw", "zenodo20", cases, seed=0, slices=slices, size=size)
    return prepare(raw, root / "prepared", size=size)
