"""Weight averaging of a run's last epochs (SWA, Izmailov et al. 2018), after training.

``covseg train --keep-epochs N`` keeps the weights of the last ``N`` epochs
(``epochNNN.safetensors``). Their mean lies in a flatter part of the loss surface than any one
of them; its batch-norm statistics, which do not average, are recomputed with one pass over the
run's training slices (:func:`torch.optim.swa_utils.update_bn`, a cumulative mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from covseg.checkpoint import load_checkpoint, save_checkpoint
from covseg.errors import CheckpointError

__all__ = ["average_run", "average_snapshots"]


def average_snapshots(
    snapshots: Sequence[str | Path],
    images: np.ndarray,
    out: str | Path,
    *,
    batch_size: int = 8,
) -> Path:
    """Save the mean of ``snapshots``' weights, batch norm recomputed on ``images``, as ``out``.

    Args:
        snapshots: two or more checkpoints of one run (same network).
        images: ``(N, S, S)`` float training slices in ``[0, 1]`` (the network's input) for the
            batch-norm statistics.
        out: the averaged checkpoint (``.safetensors``); its metadata is the last snapshot's,
            with ``metrics["swa_of"]`` naming the snapshots.
        batch_size: slices per forward pass.

    Returns:
        ``out``.

    Raises:
        CheckpointError: fewer than two snapshots, or snapshots of different networks.
    """
    if len(snapshots) < 2:
        raise CheckpointError(f"{out}: weight averaging needs two or more snapshots")
    models = [load_checkpoint(p) for p in snapshots]
    first, meta = models[0][0], models[-1][1]
    if any(m.model_config != meta.model_config for _, m in models):
        raise CheckpointError(f"{snapshots[0]}: snapshots of different networks")
    avg = {}
    for name, value in first.state_dict().items():
        if value.is_floating_point():
            avg[name] = torch.stack([m.state_dict()[name] for m, _ in models]).mean(0)
        else:
            avg[name] = value
    model = first
    model.load_state_dict(avg)
    batches = [
        torch.from_numpy(np.asarray(images[k : k + batch_size], np.float32)[:, None])
        for k in range(0, len(images), batch_size)
    ]
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(batches, model)
    model.eval()
    names = [Path(p).name for p in snapshots]
    return save_checkpoint(out, model, meta.replace(metrics={**meta.metrics, "swa_of": names}))


def average_run(
    run_dir: str | Path,
    data_roots: str | Path | Sequence[str | Path],
    *,
    last: int | None = None,
    name: str = "swa",
    batch_size: int = 8,
) -> Path:
    """Average a training run's kept snapshots (``epochNNN.safetensors``) into
    ``run_dir/<name>.safetensors``, batch norm recomputed on the run's own training cases.

    Args:
        run_dir: a run folder of ``covseg train``/``cv`` trained with ``--keep-epochs``.
        data_roots: the prepared dataset(s) it was trained on (its training cases are read
            from them, by the ids its metadata records).
        last: average only the last ``last`` snapshots (default: all kept).
        name: the averaged checkpoint's name in ``run_dir``.
        batch_size: slices per forward pass of the batch-norm pass.

    Returns:
        The averaged checkpoint's path.

    Raises:
        CheckpointError: fewer than two snapshots, or no training cases in the metadata.
        DataError: a training case missing from ``data_roots``.
    """
    from covseg.checkpoint import read_meta
    from covseg.data.dataset import open_prepared

    run_dir = Path(run_dir)
    snaps = sorted(run_dir.glob("epoch[0-9][0-9][0-9].safetensors"))
    if last is not None:
        snaps = snaps[-last:] if last > 0 else []
    if len(snaps) < 2:
        raise CheckpointError(
            f"{run_dir}: {len(snaps)} epoch snapshot(s); weight averaging needs two or more "
            "(train with --keep-epochs N)"
        )
    meta = read_meta(snaps[-1].with_suffix(".json"))
    if not meta.data.train_cases:
        raise CheckpointError(f"{snaps[-1]}: its metadata names no training cases")
    data = open_prepared(data_roots)
    images = np.concatenate([data.load(c)["image"] for c in meta.data.train_cases])
    return average_snapshots(snaps, images, run_dir / f"{name}.safetensors", batch_size=batch_size)
