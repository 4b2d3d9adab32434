"""Configuration as data: frozen dataclasses with a JSON round trip, one module per concern.

- :mod:`.model`: the network's architecture (:class:`ModelConfig`) and the named
  :data:`PRESETS`; a checkpoint carries its :class:`ModelConfig`, so inference rebuilds the
  network from the file alone (the nanoGPT habit);
- :mod:`.train`: how a model is trained (:class:`TrainConfig`);
- :mod:`.processing`: the steps around the network (:class:`Preprocessing`,
  :class:`Calibration`, :class:`PostProcessing`);
- :mod:`.choices`: the values each named setting accepts;
- :mod:`.serialize`: :func:`to_dict` / :func:`from_dict`.

This package is the door: ``from covseg.config import TrainConfig``.
"""

from __future__ import annotations

from covseg.config.choices import (
    AUGMENTATIONS,
    BACKENDS,
    DEVICES,
    FRAMINGS,
    INPUT_NORMS,
    INTENSITY_RULES,
    ROBUSTNESS_VARIANTS,
)
from covseg.config.model import PRESETS, ModelConfig
from covseg.config.processing import Calibration, PostProcessing, Preprocessing
from covseg.config.serialize import from_dict, to_dict
from covseg.config.train import TrainConfig

__all__ = [
    "AUGMENTATIONS",
    "BACKENDS",
    "DEVICES",
    "FRAMINGS",
    "INPUT_NORMS",
    "INTENSITY_RULES",
    "PRESETS",
    "ROBUSTNESS_VARIANTS",
    "Calibration",
    "ModelConfig",
    "PostProcessing",
    "Preprocessing",
    "TrainConfig",
    "from_dict",
    "to_dict",
]
