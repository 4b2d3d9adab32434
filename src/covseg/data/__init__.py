"""Data layer: readers/writers, geometry, dataset layouts, preprocessing, lung masks, phantoms,
splits.

The names below are imported on first use (PEP 562), so that ``import covseg.data.io`` (the
readers, used by the server's upload checks and by argument parsing) does not pull in torch,
scipy and scikit-image with the dataset and geometry modules.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule that defines it
_WHERE = {
    "PreparedDataset": "dataset",
    "SliceDataset": "dataset",
    "slices_to_volume": "geometry",
    "volume_to_slices": "geometry",
    "Image": "io",
    "find_inputs": "io",
    "read_image": "io",
    "write_mask": "io",
    "derive_lung_mask": "lungmask",
    "prepare": "prepare",
    "detect_intensity_rule": "preprocess",
    "normalize_intensity": "preprocess",
    "resize_back": "preprocess",
    "resize_slices": "preprocess",
    "load_or_make_folds": "splits",
    "make_folds": "splits",
    "split_validation": "splits",
    "make_phantom": "synthetic",
    "write_synthetic_dataset": "synthetic",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
