"""covseg: lung and COVID-19 infection segmentation in chest CT.

The Bifurcated Autoencoder of Yazdekhasty, Zindari et al., its training and cross-validation
protocol, and the readers, writers and reports around it.
"""

from __future__ import annotations

from covseg._version import __version__
from covseg.config import PRESETS, ModelConfig
from covseg.errors import CheckpointError, CovsegError, DataError

__all__ = [
    "PRESETS",
    "CheckpointError",
    "CovsegError",
    "DataError",
    "ModelConfig",
    "Segmenter",
    "__version__",
]


def __getattr__(name: str):
    # Lazy: `import covseg` stays light (no torch) until the Segmenter is asked for.
    if name == "Segmenter":
        from covseg.inference.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'covseg' has no attribute {name!r}")
