"""Data layer: readers/writers, geometry, dataset layouts, preprocessing, lung masks, phantoms,
splits."""

from __future__ import annotations

from covseg.data.dataset import PreparedDataset, SliceDataset
from covseg.data.geometry import slices_to_volume, volume_to_slices
from covseg.data.io import Image, find_inputs, read_image, write_mask
from covseg.data.lungmask import derive_lung_mask
from covseg.data.prepare import prepare
from covseg.data.preprocess import (
    detect_intensity_rule,
    normalize_intensity,
    resize_back,
    resize_slices,
)
from covseg.data.splits import load_or_make_folds, make_folds, split_validation
from covseg.data.synthetic import make_phantom, write_synthetic_dataset

__all__ = [
    "Image",
    "PreparedDataset",
    "SliceDataset",
    "derive_lung_mask",
    "detect_intensity_rule",
    "find_inputs",
    "load_or_make_folds",
    "make_folds",
    "make_phantom",
    "normalize_intensity",
    "prepare",
    "read_image",
    "resize_back",
    "resize_slices",
    "slices_to_volume",
    "split_validation",
    "volume_to_slices",
    "write_mask",
    "write_synthetic_dataset",
]
