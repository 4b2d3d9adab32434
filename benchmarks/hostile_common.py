"""The scenario registry of ``benchmarks/hostile.py`` and the builders its scenario modules
share (phantoms, NIfTI and DICOM writers, the ``segment`` command line)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


@dataclass
class Scenario:
    name: str
    what: str
    build: Callable[[Path, Path], list[str]]  # (tmp, checkpoint) -> argv after "covseg"
    expect: str  # "ok" or "error"
    check: Callable[[Path], bool] | None = None  # for "ok": the result is right


def phantom(shape=(32, 32, 3)) -> np.ndarray:
    from covseg.data.synthetic import make_phantom

    return make_phantom(0, shape)[0].astype(np.int16)


def write_nifti(path: Path, vol: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine),
             str(path))  # fmt: skip
    return path


def segment_argv(
    tmp: Path, ckpt: Path | str, *inputs: Path | str, out: Path | None = None
) -> list[str]:
    return ["segment", *map(str, inputs), "--out", str(out or tmp / "out"),
            "--checkpoint", str(ckpt), "--device", "cpu"]  # fmt: skip


def write_series(folder: Path, vol: np.ndarray, z0: float = 0.0, prefix: str = "") -> Path:
    from pydicom.uid import generate_uid

    from _dicom import hu_to_stored, write_dicom_series

    uid = generate_uid()  # one series: one SeriesInstanceUID, as scanners write them

    def tag(ds, k):
        ds.SeriesInstanceUID = uid

    z = [z0 + 2.5 * k for k in range(vol.shape[2])]
    return write_dicom_series(folder, hu_to_stored(vol), z, prefix=prefix, edit=tag)


SCENARIOS: list[Scenario] = []


def scenario(name: str, what: str, expect: str, check=None):
    def add(build):
        SCENARIOS.append(Scenario(name, what, build, expect, check))
        return build

    return add
