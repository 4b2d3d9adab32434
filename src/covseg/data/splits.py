"""Patient-level cross-validation folds and the validation split inside a training fold."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from covseg.errors import DataError

__all__ = ["load_or_make_folds", "make_folds", "split_validation"]

log = logging.getLogger(__name__)


def make_folds(
    case_ids: list[str],
    folds: int = 5,
    seed: int = 0,
    strata: Mapping[str, str] | None = None,
) -> list[dict]:
    """Split patients into ``folds`` disjoint test sets (sizes differ by at most one).

    Args:
        case_ids: unique patient (case) ids; their order does not matter.
        folds: number of folds, ``2 <= folds <= len(case_ids)``.
        seed: shuffling seed; the same ids and seed give the same folds.
        strata: the source of each case (:meth:`CombinedDataset.sources
            <covseg.data.dataset.CombinedDataset.sources>`): each source's cases are shuffled
            and dealt over the folds on their own, continuing where the previous source
            stopped, so every fold holds about ``1/folds`` of every source and the fold sizes
            still differ by at most one. One source (or ``None``) gives the unstratified folds.

    Returns:
        ``[{"fold": k, "train": [...], "test": [...]}]``, ids sorted within each list.

    Raises:
        DataError: duplicate ids, or too few cases for ``folds``.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise DataError(f"duplicate case ids in {ids}")
    if folds < 2 or folds > len(ids):
        raise DataError(
            f"cannot make {folds} folds from {len(ids)} case(s) (need 2 <= folds <= cases)"
        )
    groups: dict[str, list[str]] = {}
    for c in ids:
        groups.setdefault(strata.get(c, "") if strata else "", []).append(c)
    tests: list[list[str]] = [[] for _ in range(folds)]
    dealt = 0
    for _, members in sorted(groups.items()):
        order = np.random.default_rng(seed).permutation(len(members))
        for i, j in enumerate(order):
            tests[(dealt + i) % folds].append(members[j])
        dealt += len(members)
    out = []
    for k in range(folds):
        test = sorted(tests[k])
        train = sorted(set(ids) - set(test))
        out.append({"fold": k, "train": train, "test": test})
    return out


def load_or_make_folds(
    path: str | Path,
    case_ids: list[str],
    folds: int,
    seed: int,
    strata: Mapping[str, str] | None = None,
) -> list[dict]:
    """Reuse ``path`` (``splits.json``) if it exists, else make folds (:func:`make_folds`,
    stratified by ``strata``) and write it atomically.

    Raises:
        DataError: the existing file is unreadable, or its cases or fold count differ from
            ``case_ids``/``folds`` (delete it to make new folds).
    """
    path = Path(path)
    if path.exists():
        try:
            data = json.loads(path.read_text())
            saved = data["folds"]
            ids = sorted({c for f in saved for c in f["test"]})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}: unreadable splits file ({err})") from None
        if ids != sorted(case_ids) or len(saved) != folds:
            raise DataError(
                f"{path}: splits are for {len(ids)} cases in {len(saved)} folds, not these "
                f"{len(case_ids)} cases in {folds} folds; delete it to make new splits"
            )
        log.info("%s: reusing %d folds", path, len(saved))
        return saved
    result = make_folds(case_ids, folds, seed, strata)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump({"seed": seed, "folds": result}, f, indent=1)
    os.replace(tmp, path)
    return result


def split_validation(
    data, train_cases: list[str], *, fraction: float = 0.12, by: str = "slices", seed: int = 0
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Hold out part of a training fold for validation (never the fold's test cases).

    Args:
        data: a :class:`~covseg.data.dataset.PreparedDataset`.
        train_cases: the fold's training case ids.
        fraction: share held out (the paper: 12 % of the training slices).
        by: ``"slices"`` (random slices, the paper's protocol) or ``"patients"`` (whole cases;
            falls back to ``"slices"`` with a warning when fewer than 2 training cases exist).
        seed: shuffling seed.

    Returns:
        ``(train_items, val_items)`` of ``(case_id, slice_index)``; ``val_items`` has at least one
        item when the fold has at least two slices.

    Raises:
        DataError: unknown ``by`` or ``fraction`` outside ``(0, 1)``.
    """
    if not 0 < fraction < 1:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    if by not in ("slices", "patients"):
        raise DataError(f"validation split 'by' must be slices or patients, got {by!r}")
    rng = np.random.default_rng(seed)
    cases = sorted(train_cases)
    if by == "patients" and len(cases) < 2:
        log.warning(
            "only %d training case(s): validating on held-out slices, not patients", len(cases)
        )
        by = "slices"
    if by == "patients":
        n_val = min(len(cases) - 1, max(1, round(fraction * len(cases))))
        val_cases = set(rng.permutation(cases)[:n_val].tolist())
        train = data.items([c for c in cases if c not in val_cases])
        val = data.items([c for c in cases if c in val_cases])
        return train, val
    items = data.items(cases)
    if len(items) < 2:
        return items, []
    n_val = min(len(items) - 1, max(1, round(fraction * len(items))))
    pick = set(rng.permutation(len(items))[:n_val].tolist())
    train = [it for i, it in enumerate(items) if i not in pick]
    val = [it for i, it in enumerate(items) if i in pick]
    return train, val
