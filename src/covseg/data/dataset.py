"""Reading a prepared dataset folder (written by :func:`covseg.data.prepare.prepare`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from covseg.errors import DataError

__all__ = [
    "SOURCE_SEP",
    "CombinedDataset",
    "PreparedDataset",
    "SliceDataset",
    "data_key",
    "open_prepared",
]

_FORMAT = 1
_KEYS = ("image", "lung", "infection")

#: Joins a source name and a case id in a :class:`CombinedDataset` (``"zenodo10/coronacases_001"``).
SOURCE_SEP = "/"


class _CaseIndex:
    """Case records by id (``self._by_id``, filled by the subclass) and their slices."""

    _by_id: dict[str, dict]
    _where: str

    def case(self, case_id: str) -> dict:
        """The manifest record of ``case_id``.

        Raises:
            DataError: no such case.
        """
        try:
            return self._by_id[case_id]
        except KeyError:
            raise DataError(f"{self._where}: no case {case_id!r}") from None

    def items(self, case_ids: list[str]) -> list[tuple[str, int]]:
        """``(case_id, slice_index)`` for every slice of ``case_ids``, in the given order."""
        return [(c, k) for c in case_ids for k in range(int(self.case(c)["n_slices"]))]


class PreparedDataset(_CaseIndex):
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
        self._where = str(self.root)
        self._cache: dict[str, dict[str, np.ndarray]] = {}

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

    @property
    def name(self) -> str:
        """The source name: the folder's name."""
        return self.root.resolve().name

    def sources(self) -> dict[str, str]:
        """The source name of every case (one source here)."""
        return dict.fromkeys(self.case_ids, self.name)


class CombinedDataset(_CaseIndex):
    """Several prepared datasets read as one, for training and cross-validating on all of them.

    Case ids become ``NAME/ID`` (:data:`SOURCE_SEP`), ``NAME`` being each folder's name, so
    ``splits.json``, ``test_metrics.json`` and the report tell the sources apart. The datasets
    must have been prepared at one size. :meth:`case`, :meth:`load` and :meth:`items` behave as
    :class:`PreparedDataset`'s; :attr:`manifest` is a summary (``layout`` ``"combined"``, the
    common ``size``; ``intensity`` and ``rotate`` where all parts agree, else ``"auto"``/``0``;
    each part's own parameters under ``params["sources"]``).

    Args:
        roots: two or more folders written by ``covseg prepare``.

    Raises:
        DataError: an unreadable part, two parts of one name, or different sizes.
    """

    def __init__(self, roots: Sequence[str | Path]) -> None:
        parts = [PreparedDataset(r) for r in roots]
        names = [p.name for p in parts]
        if len(set(names)) != len(names):
            raise DataError(
                f"{', '.join(map(str, roots))}: two prepared datasets named alike "
                f"({', '.join(names)}); case ids are prefixed by the folder name, rename one"
            )
        sizes = {p.name: p.manifest.get("params", {}).get("size") for p in parts}
        if len(set(sizes.values())) != 1:
            shown = ", ".join(f"{n} at {s} px" for n, s in sizes.items())
            raise DataError(f"prepared at different sizes ({shown}); prepare them at one --size")
        self.parts: dict[str, PreparedDataset] = dict(zip(names, parts, strict=True))
        self.roots = [p.root for p in parts]
        self.cases = [
            {**c, "id": f"{n}{SOURCE_SEP}{c['id']}", "source_dataset": n}
            for n, p in self.parts.items()
            for c in p.cases
        ]
        self.case_ids = [c["id"] for c in self.cases]
        self._by_id = {c["id"]: c for c in self.cases}
        self._where = data_key(self.roots)
        own = [p.manifest.get("params", {}) for p in parts]

        def common(key: str, default):
            values = {json.dumps(o.get(key, default)) for o in own}
            return own[0].get(key, default) if len(values) == 1 else default

        self.manifest: dict = {
            "format": _FORMAT,
            "layout": "combined",
            "source": self._where,
            "params": {
                "size": next(iter(sizes.values())),
                "intensity": common("intensity", "auto"),
                "rotate": common("rotate", 0),
                "sources": {
                    n: {"root": str(p.root), **o}
                    for (n, p), o in zip(self.parts.items(), own, strict=True)
                },
            },
        }

    def resolve(self, case_id: str) -> tuple[str, PreparedDataset, str]:
        """``(prefix "NAME/", the part holding the case, the case's id in it)``.

        Raises:
            DataError: an id of no part.
        """
        name, sep, local = case_id.partition(SOURCE_SEP)
        if not sep or name not in self.parts:
            raise DataError(f"{self._where}: no case {case_id!r}")
        return name + SOURCE_SEP, self.parts[name], local

    def load(self, case_id: str) -> dict[str, np.ndarray]:
        """The arrays of ``case_id`` (:meth:`PreparedDataset.load`)."""
        _, part, local = self.resolve(case_id)
        return part.load(local)

    def sources(self) -> dict[str, str]:
        """The source name of every case."""
        return {c["id"]: c["source_dataset"] for c in self.cases}


def open_prepared(roots: str | Path | Sequence[str | Path]) -> PreparedDataset | CombinedDataset:
    """One prepared folder as a :class:`PreparedDataset`, several as a :class:`CombinedDataset`."""
    if isinstance(roots, str | Path):
        return PreparedDataset(roots)
    roots = list(roots)
    if not roots:
        raise DataError("no prepared dataset given")
    return PreparedDataset(roots[0]) if len(roots) == 1 else CombinedDataset(roots)


def data_key(roots: str | Path | Sequence[str | Path]) -> str:
    """How a checkpoint records its data: the resolved folder, or the folders joined by ``" + "``."""
    if isinstance(roots, str | Path):
        roots = str(roots).split(" + ")
    return " + ".join(str(Path(r).resolve()) for r in roots)


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
