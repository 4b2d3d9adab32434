"""Shared fixtures for the training/evaluation tests: a tiny network and prepared phantoms."""

from __future__ import annotations

from pathlib import Path

from covseg.config import PRESETS, ModelConfig, TrainConfig
from covseg.data.prepare import prepare
from covseg.data.synthetic import write_synthetic_dataset

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


def prepared_phantoms(root: Path, cases: int = 4, slices: int = 8, size: int = 32) -> Path:
    raw = write_synthetic_dataset(root / "raw", "zenodo20", cases, seed=0, slices=slices, size=size)
    return prepare(raw, root / "prepared", size=size)
