"""Reading a prepared dataset folder (written by :func:`covseg.data.prepare.prepare`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from covseg.errors import DataError

__all__ = ["PreparedDataset", "SliceDataset"]

_FORMAT = 1
_KEYS = ("image", "lung", "infection")


class PreparedDataset:
    """A prepared dataset: its manifest and, on demand, its case arrays (cached in memory).

    Args:
        root: the folder written by ``covseg prepare``.

    Raises:
        DataError: missing or unreadable ``manifest.json``, a newer format, or a bad case list.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(
                f"{path}: missing (is {self.root} a `covseg prepare` output?)"
            ) from None
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: unreadable manifest ({err})") from None
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        if not isinstance(fmt, int):
            raise DataError(f"{path}: not a covseg manifest (no format number)")
        if fmt > _FORMAT:
            raise DataError(
                f"{path}: format {fmt} is newer than this covseg reads ({_FORMAT}); upgrade covseg"
            )
        cases = manifest.get("cases")
        if not isinstance(cases, list) or not all(
            isinstance(c, dict) and {"id", "file", "n_slices"} <= set(c) for c in cases
        ):
            raise DataError(f"{path}: 'cases' must be a list of records with id, file, n_slices")
        self.manifest: dict = manifest
        self.cases: list[dict] = cases
        self.case_ids: list[str] = [c["id"] for c in cases]
        if len(set(self.case_ids)) != len(self.case_ids):
            raise DataError(f"{path}: duplicate case ids")
        self._by_id = {c["id"]: c for c in cases}
        self._cache: dict[str, dict[str, np.ndarray]] = {}

    def case(self, case_id: str) -> dict:
        """The manifest record of ``case_id``."""
        try:
            return self._by_id[case_id]
        except KeyError:
            raise DataError(f"{self.root}: no case {case_id!r}") from None

    def load(self, case_id: str) -> dict[str, np.ndarray]:
        """``{"image": float16 (N,S,S), "lung": uint8 (N,S,S), "infection": uint8 (N,S,S)}``.

        Raises:
            DataError: the case file is missing, unreadable or lacks an array.
        """
        if case_id not in self._cache:
            path = self.root / self.case(case_id)["file"]
            try:
                with np.load(path) as npz:
                    arrays = {k: npz[k] for k in _KEYS}
            except (OSError, ValueError, KeyError) as err:
                raise DataError(f"{path}: unreadable case file ({err})") from None
            shapes = {a.shape for a in arrays.values()}
            if len(shapes) != 1 or arrays["image"].ndim != 3:
                raise DataError(f"{path}: arrays of different or wrong shapes {shapes}")
            self._cache[case_id] = arrays
        return self._cache[case_id]

    def items(self, case_ids: list[str]) -> list[tuple[str, int]]:
        """``(case_id, slice_index)`` for every slice of ``case_ids``, in the given order."""
        return [(c, k) for c in case_ids for k in range(int(self.case(c)["n_slices"]))]


class SliceDataset(Dataset):
    """Slices of a :class:`PreparedDataset` as training samples.

    Args:
        data: the prepared dataset.
        items: ``(case_id, slice_index)`` pairs.
        transform: optional callable on the sample dict (e.g. :func:`~covseg.data.augment.make_augment`).

    A sample is ``{"image", "lung", "infection"}`` float32 ``(1, S, S)`` tensors plus ``"case"``
    (str) and ``"index"`` (int).
    """

    def __init__(
        self,
        data: PreparedDataset,
        items: list[tuple[str, int]],
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        self.data = data
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        case, k = self.items[i]
        arrays = self.data.load(case)
        sample = {key: torch.from_numpy(arrays[key][k].astype(np.float32))[None] for key in _KEYS}
        sample["case"], sample["index"] = case, int(k)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample
