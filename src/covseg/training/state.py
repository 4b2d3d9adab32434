"""A run folder's resumable state: ``last_state.*`` (model, optimiser, scheduler, counters, RNG),
the ``last.*`` checkpoint of every epoch, and ``log.csv``.

Resuming reads ``last_state`` alone, which is one atomic commit, so a kill between the saves
loses nothing; ``last.*`` is the inference checkpoint of the epoch.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covseg.checkpoint import load_train_state, save_checkpoint, save_train_state
from covseg.errors import DataError
from covseg.files import write_text
from covseg.meta import CheckpointMeta

__all__ = ["LOG_COLUMNS", "read_log", "restore", "save_last", "write_log"]

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


def restore(
    out: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load ``out/last_state`` into the model, optimiser, scheduler and the RNGs.

    Returns:
        ``(counters, log rows up to the restored epoch)``.

    Raises:
        DataError: no ``last_state`` in ``out``.
        CheckpointError: a damaged state.
    """
    if not (out / "last_state.json").exists():
        raise DataError(f"{out}: --resume but no last_state.json from an earlier run")
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
