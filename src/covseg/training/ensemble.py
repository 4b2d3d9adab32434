"""Join trained checkpoints into one ensemble checkpoint (``covseg ensemble``).

The ensemble (:class:`~covseg.models.ensemble.Ensemble`: the mean of the members' probabilities)
is saved as one checkpoint, so ``segment``, ``evaluate``, ``export-onnx`` and ``serve`` take it
wherever they take a single network. Its post-processing is chosen again for the averaged
probabilities, by the search that ends ``covseg train``, on the validation slices the members
held out. That needs members trained on the same cases with the same validation split (e.g.
runs of one cross-validation fold, or final runs on all cases, with different presets or
recipes); other members are refused, since one member's validation slices would be another's
training slices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from covseg.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from covseg.errors import CheckpointError, DataError
from covseg.inference.predict import resolve_device
from covseg.meta import CheckpointMeta, DataRecord
from covseg.models.ensemble import Ensemble
from covseg.training.validation import chosen_postprocessing, validation_slices

__all__ = ["ensemble"]

#: Preprocessing fields the members must share: the input they are shown (framing is the
#: ensemble's own, see :func:`ensemble`).
_SHARED_INPUT = ("size", "intensity", "rotate")
#: Training settings that decide a run's validation slices.
_SPLIT = ("seed", "val_fraction", "val_by")


def ensemble(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    *,
    data_root: str | Path | Sequence[str | Path] | None = None,
    framing: str | None = None,
    device: str = "cpu",
) -> CheckpointMeta:
    """Save the ensemble of ``checkpoints`` at ``out``, its post-processing chosen on validation.

    Args:
        checkpoints: two or more checkpoints (``"pretrained"`` or paths) of one kind of network
            with the same input size, intensity rule and rotation.
        out: the ensemble's ``.safetensors`` (its ``.json`` is written next to it); written once
            everything is computed, so an interrupted run leaves nothing.
        data_root: the prepared dataset(s) the members were trained on, in their order: the
            post-processing is chosen on the validation slices they held out. ``None``: the
            first member's post-processing is kept (recorded as such).
        framing: the ensemble's framing (the post-processing is chosen with it); ``None``: the
            first member's.
        device: where the validation slices are predicted.

    Returns:
        The ensemble's metadata.

    Raises:
        CheckpointError: fewer than two members, one given twice, an ensemble among them,
            members of different kinds or inputs, or ``out`` naming a member.
        DataError: with ``data_root``, members trained on different cases or validation splits.
    """
    if len(checkpoints) < 2:
        raise CheckpointError(f"an ensemble needs at least two checkpoints, got {len(checkpoints)}")
    paths = [resolve_checkpoint(c) for c in checkpoints]
    out = Path(out)
    if out.suffix != ".safetensors":
        raise CheckpointError(f"{out}: the ensemble's file must end in .safetensors")
    for p in paths:
        if p.with_suffix("").resolve() == out.with_suffix("").resolve():
            raise CheckpointError(f"{out}: is one of the members; choose another --out")
    dev = resolve_device(device)
    loaded = [load_checkpoint(p, device=dev) for p in paths]
    first = loaded[0][1]
    seen: dict[str | None, Path] = {}
    for p, (_, meta) in zip(paths, loaded, strict=True):
        if meta.sha256 in seen:
            raise CheckpointError(f"{p}: the same weights as {seen[meta.sha256]} (given twice)")
        seen[meta.sha256] = p
        if meta.members:
            raise CheckpointError(f"{p}: already an ensemble (give its members instead)")
        for name in _SHARED_INPUT:
            mine, theirs = getattr(meta.preprocessing, name), getattr(first.preprocessing, name)
            if mine != theirs:
                raise CheckpointError(
                    f"{p}: preprocessing {name} is {mine!r}, the first member's is {theirs!r}; "
                    "ensemble members must see the same input"
                )
    try:
        model = Ensemble([m for m, _ in loaded])
    except ValueError as err:
        raise CheckpointError(f"{', '.join(map(str, paths))}: {err}") from None
    pre = first.preprocessing
    if framing is not None:
        pre = dataclasses.replace(pre, framing=framing)
    train_cases = sorted({c for _, m in loaded for c in m.data.train_cases})
    test_sets = {m.data.test_cases for _, m in loaded}
    meta = CheckpointMeta(
        model_config=first.model_config,
        members=tuple(m.model_config for _, m in loaded),
        preprocessing=pre,
        postprocessing=first.postprocessing,
        train_config=first.train_config,
        data=DataRecord(
            root=first.data.root,
            dataset=first.data.dataset,
            train_cases=tuple(train_cases),
            test_cases=first.data.test_cases if len(test_sets) == 1 else (),
        ),
        metrics={
            "members": [
                {"checkpoint": str(p), "sha256": m.sha256}
                for p, (_, m) in zip(paths, loaded, strict=True)
            ]
        },
        postprocessing_source="the first member's (not chosen for the ensemble)",
    )
    if data_root is not None:
        _check_same_split(paths, [m for _, m in loaded])
        images, truth = validation_slices(first, data_root, str(paths[0]))
        assert first.train_config is not None
        meta = chosen_postprocessing(model, meta, images, truth, first.train_config, dev)
    save_checkpoint(out, model, meta)
    return meta


def _check_same_split(paths: Sequence[Path], metas: Sequence[CheckpointMeta]) -> None:
    """Members whose validation slices are the same (and none's training slices)."""
    first = metas[0]
    for p, meta in zip(paths, metas, strict=True):
        if meta.train_config is None or not meta.data.train_cases:
            raise DataError(f"{p}: no recorded training run to take validation slices from")
        if set(meta.data.train_cases) != set(first.data.train_cases):
            raise DataError(
                f"{p}: trained on other cases than {paths[0]}; the ensemble's validation slices "
                "would be training slices of a member"
            )
        for name in _SPLIT:
            mine = getattr(meta.train_config, name)
            theirs = getattr(first.train_config, name)
            if mine != theirs:
                raise DataError(
                    f"{p}: validation split {name} is {mine!r}, {paths[0]}'s is {theirs!r}; the "
                    "ensemble's validation slices would be training slices of a member"
                )
