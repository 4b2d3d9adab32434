"""A run folder's resumable state: ``last_state.*`` (model, optimiser, scheduler, counters, RNG),
the ``last.*`` checkpoint of every epoch, and ``log.csv``.

Resuming reads ``last_state`` alone, which is one atomic commit, so a kill between the saves
loses nothing; ``last.*`` is the inference checkpoint of the epoch.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covseg.checkpoint import load_train_state, save_checkpoint, save_train_state
from covseg.errors import DataError
from covseg.files import write_text
from covseg.meta import CheckpointMeta

__all__ = [
    "LOG_COLUMNS",
    "RESUMABLE",
    "describe_changes",
    "read_log",
    "restore",
    "save_last",
    "settings_changes",
    "write_log",
]

LOG_COLUMNS = ("epoch", "lr", "loss", "loss_lung", "loss_aux", "loss_final", "val_dice", "seconds")


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy_keys"] = torch.from_numpy(keys.astype(np.uint32).view(np.uint8).copy())
    state["numpy_rest"] = [str(kind), int(pos), int(has_gauss), float(gauss)]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "numpy_keys" in state and "numpy_rest" in state:
        keys = state["numpy_keys"].numpy().view(np.uint32).copy()
        kind, pos, has_gauss, gauss = state["numpy_rest"]
        np.random.set_state((kind, keys, int(pos), int(has_gauss), float(gauss)))


def save_last(
    out: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    counters: dict[str, Any],
    meta: CheckpointMeta,
) -> None:
    """``last_state.*`` then the ``last.*`` checkpoint (see the module docstring)."""
    save_train_state(
        out / "last_state",
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else {},
            "counters": dict(counters),
            "rng": _rng_state(),
        },
    )
    save_checkpoint(out / "last.safetensors", model, meta.replace(epoch=counters["epoch"]))


#: Training settings a resumed run may change without ``--force``: where and how fast it runs,
#: and how long it goes on.
RESUMABLE = frozenset({"epochs", "patience", "device", "workers", "threads", "keep_epochs"})


def settings_changes(
    out: Path,
    model_cfg: Any,
    train_cfg: Any,
    data_root: str | Path | Sequence[str | Path],
    data: Any = None,
    preprocessing: Any = None,
) -> list[str]:
    """What differs between the run recorded in ``out/last.json`` and the settings of a run
    about to continue (or reuse) it, as ``"field: old -> new"``; ``[]`` when nothing does or no
    run is recorded. Compared: the model, the training settings but :data:`RESUMABLE`, the data
    folder, and where given the :class:`~covseg.meta.DataRecord` cases and the preprocessing."""
    from covseg.checkpoint import read_meta
    from covseg.config import to_dict
    from covseg.data.dataset import data_key

    if not (out / "last.json").exists():
        return []
    old = read_meta(out / "last")
    changes: list[str] = []

    def compare(prefix: str, a: dict[str, Any], b: dict[str, Any], skip: frozenset = frozenset()):
        for key in sorted(set(a) | set(b)):
            if key not in skip and a.get(key) != b.get(key):
                changes.append(f"{prefix}{key}: {a.get(key)!r} -> {b.get(key)!r}")

    compare("model.", to_dict(old.model_config), to_dict(model_cfg))
    if old.train_config is not None:
        compare("", to_dict(old.train_config), to_dict(train_cfg), RESUMABLE)
    if preprocessing is not None:
        compare("preprocessing.", to_dict(old.preprocessing), to_dict(preprocessing))
    if old.data.root is not None and data_key(old.data.root) != data_key(data_root):
        changes.append(f"data: {old.data.root} -> {data_root}")
    if data is not None and (
        tuple(old.data.train_cases) != tuple(data.train_cases)
        or tuple(old.data.test_cases) != tuple(data.test_cases)
    ):
        changes.append("data: other training/test cases")
    return changes


def describe_changes(changes: list[str]) -> str:
    """The first few of :func:`settings_changes`, for a one-line message."""
    return "; ".join(changes[:4]) + ("; ..." if len(changes) > 4 else "")


def restore(
    out: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    meta: CheckpointMeta,
    force: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load ``out/last_state`` into the model, optimiser, scheduler and the RNGs.

    Args:
        out: the run folder.
        model, opt, sched: built for the settings in ``meta``.
        meta: the settings of the continued run.
        force: continue although settings differ from the recorded run's; a new learning
            rate is then applied (the schedule continues from its position, scaled).

    Returns:
        ``(counters, log rows up to the restored epoch)``.

    Raises:
        DataError: no ``last_state`` in ``out``, another model, or other settings than the
            recorded run's without ``force``.
        CheckpointError: a damaged state.
    """
    if not (out / "last_state.json").exists():
        raise DataError(f"{out}: --resume but no last_state.json from an earlier run")
    changes = settings_changes(
        out,
        meta.model_config,
        meta.train_config,
        meta.data.root or out,
        data=meta.data,
        preprocessing=meta.preprocessing,
    )
    model_changed = any(c.startswith("model.") for c in changes)
    if changes and (model_changed or not force):
        shown = describe_changes(changes)
        hint = "" if model_changed else " (pass --force to continue with the new ones)"
        raise DataError(f"{out}: resuming with other settings than the run's: {shown}{hint}")
    s = load_train_state(out / "last_state")
    try:
        model.load_state_dict(s["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise DataError(f"{out}: --resume with another model than the run's ({first})") from None
    opt_state = s["optimizer"]
    opt_state["state"] = {int(k): v for k, v in opt_state["state"].items()}
    opt.load_state_dict(opt_state)
    if sched is not None and s["scheduler"]:
        sched.load_state_dict(s["scheduler"])
    lr = meta.train_config.lr if meta.train_config is not None else None
    if changes and lr is not None:  # forced: apply the new learning rate, keep the schedule
        for group in opt.param_groups:
            scale = lr / group.get("initial_lr", group["lr"])
            group["lr"] *= scale
            group["initial_lr"] = lr
        if sched is not None and hasattr(sched, "base_lrs"):
            sched.base_lrs = [lr for _ in sched.base_lrs]
    _set_rng_state(s["rng"])
    epoch = int(s["counters"]["epoch"])
    rows = [r for r in read_log(out / "log.csv") if r["epoch"] <= epoch]
    return dict(s["counters"]), rows


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """``log.csv`` (:data:`LOG_COLUMNS`), atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def read_log(path: Path) -> list[dict[str, Any]]:
    """Rows of ``log.csv`` (epoch an int, the rest floats); ``[]`` when absent."""
    if not path.exists():
        return []
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items()} for r in rows]
