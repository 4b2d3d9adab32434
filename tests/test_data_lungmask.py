"""Derived lung masks: synthetic phantoms, and (realdata) the expert Zenodo lung masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covseg.data.lungmask import derive_lung_mask
from covseg.data.preprocess import detect_intensity_rule, normalize_intensity
from covseg.data.synthetic import make_phantom

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_phantom_lungs_are_found():
    hu, lung, inf = make_phantom(5, (64, 64, 6))
    x = normalize_intensity(hu, "hu").transpose(2, 1, 0)
    derived = derive_lung_mask(x, inf.transpose(2, 1, 0))
    assert derived.shape == x.shape and derived.dtype == np.uint8
    assert _dice(derived, lung.transpose(2, 1, 0)) > 0.9
    assert not (inf.transpose(2, 1, 0).astype(bool) & ~derived.astype(bool)).any()
    assert derive_lung_mask(np.zeros((16, 16))).sum() == 0  # a blank slice has no lungs


@pytest.mark.realdata
@pytest.mark.skipif(
    not (DATA / "zenodo-lung5").is_dir(), reason="../shared/data/zenodo-lung5 absent"
)
@pytest.mark.parametrize(
    "name, min_dice",
    [
        ("coronacases_001_{}_slice_98", 0.95),
        ("coronacases_001_{}_slice_110", 0.95),
        ("coronacases_001_{}_slice_122", 0.95),
        ("radiopaedia_14_85914_0_{}_slice_0", 0.85),
    ],
)
def test_expert_lung_masks(name, min_dice):
    img = np.load(DATA / "zenodo-lung5" / f"{name.format('image')}.npy")
    expert = np.load(DATA / "zenodo-lung5" / f"{name.format('masks')}.npy")
    x = normalize_intensity(img, detect_intensity_rule(img))
    assert _dice(derive_lung_mask(x), expert) >= min_dice


@pytest.mark.realdata
@pytest.mark.skipif(
    not (DATA / "zenodo-lung5").is_dir(), reason="../shared/data/zenodo-lung5 absent"
)
def test_lung_base_slice_has_no_bowel_gas():
    # coronacases_008 slice 26: only 311 expert lung pixels (partial volume at the lung base)
    # next to bowel gas; the derived mask must not take the gas for lung.
    img = np.load(DATA / "zenodo-lung5" / "coronacases_008_image_slice_26.npy")
    derived = derive_lung_mask(normalize_intensity(img, "hu"))
    assert derived.sum() < 1000
