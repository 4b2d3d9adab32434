"""Out-of-fold predictions of a finished ``covseg cv``, and the post-processing chosen on them.

Every run of a cross-validation predicts its own test fold (data it never saw), so together the
runs give one out-of-fold prediction for every case — many more slices than a run's validation
split. On them :func:`select_on_oof` searches the post-processing grid (threshold, minimum
component, lung margin) with :func:`~covseg.training.selection.select_postprocessing`, at the
original resolution, through the same Segmenter as ``segment``. That is how the shipped model's
post-processing is chosen (:func:`ship`).

A value picked here is picked on the test folds: its score is optimistic and is *not* the
cross-validated result (that is ``covseg report``'s, each run with its own validated
post-processing, which :func:`own_scores` reproduces on the same predictions).
:func:`other_folds_scores` estimates the rule honestly: each run's test cases scored with the
post-processing selected on the *other* runs' out-of-fold predictions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from covseg.checkpoint import load_checkpoint, read_meta, save_checkpoint
from covseg.config import PostProcessing, to_dict
from covseg.data.dataset import SOURCE_SEP, CombinedDataset, PreparedDataset
from covseg.evaluation.cases import labelled_cases, original_cases
from covseg.evaluation.metrics import aggregate, confusion
from covseg.inference.postprocess import masks_from_probabilities
from covseg.inference.segmenter import Segmenter
from covseg.meta import DataRecord
from covseg.training.selection import THRESHOLDS, Item, Selection, select_postprocessing

__all__ = ["OOF", "collect_oof", "own_scores", "select_on_oof", "ship"]

#: The grid searched on out-of-fold predictions.
MIN_COMPONENTS = (0, 5, 10, 20, 40)
LUNG_MARGINS: tuple[int | None, ...] = (2, 0, 4, 8, None)


class OOF:
    """Out-of-fold probabilities: one :class:`~covseg.training.selection.Item` per test case,
    with the run that predicted it, that run's own post-processing, the case's lung truth
    (``None`` where the masks have no lung labels) and its voxel volume in mL (``None`` for
    pictures)."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.case_ids: list[str] = []
        self.own: list[PostProcessing] = []
        self.lung_truth: list[np.ndarray | None] = []
        self.voxel_ml: list[float | None] = []
        self.model_size = 0

    @property
    def n_slices(self) -> int:
        return sum(len(it.truth) for it in self.items)


def collect_oof(
    cv_dir: str | Path,
    data: PreparedDataset | CombinedDataset,
    which: str = "last",
    device: str = "cpu",
    framing: str | None = None,
) -> OOF:
    """Predict every run's test cases with its ``which`` checkpoint (``"best"`` or ``"last"``),
    with ``framing`` (``None``: each checkpoint's own; ``"lungs"`` for a model shipped with
    lung framing).

    Raises:
        DataError: no run folder with that checkpoint.
    """
    from covseg.errors import DataError

    cv_dir = Path(cv_dir)
    runs = sorted(p for p in cv_dir.glob("fold*_rep*") if (p / f"{which}.safetensors").exists())
    if not runs:
        raise DataError(f"{cv_dir}: no fold*_rep*/{which}.safetensors (run `covseg cv` first)")
    oof = OOF()
    with tempfile.TemporaryDirectory(prefix="covseg-oof-") as tmp:
        pre = read_meta(runs[0] / f"{which}.json").preprocessing
        originals = original_cases(data, pre, Path(tmp))
    for run in runs:
        model, meta = load_checkpoint(run / f"{which}.safetensors")
        seg = Segmenter(model, meta, device=device, batch_size=16, framing=framing)
        oof.model_size = seg.size
        for case in labelled_cases(data, list(meta.data.test_cases), originals):
            if case.raw is not None:
                rule = seg.intensity_rule(case.raw, case.source)
                parts = [p for _, p in seg.probabilities(case.raw, rule=rule)]
                lung = None if parts[0].lung is None else np.concatenate([p.lung for p in parts])
                inf = np.concatenate([p.infection for p in parts])
            else:
                lung, inf = seg.framed(case.images01)
            oof.items.append(Item(lung, inf, case.truth))
            oof.case_ids.append(f"{run.name}/{case.id}")
            oof.own.append(meta.postprocessing)
            oof.lung_truth.append(case.lung)
            sp = case.spacing
            oof.voxel_ml.append(None if sp is None else float(np.prod(sp)) / 1000.0)
    return oof


def _scores(preds: list[np.ndarray], oof: OOF) -> dict[str, Any]:
    counts, cases = [], []
    for pred, it, cid in zip(preds, oof.items, oof.case_ids, strict=True):
        tp, fp, fn, tn = confusion(pred, it.truth, axes=(1, 2))
        counts.append(np.stack([tp, fp, fn, tn], axis=1))
        cases += [cid] * len(tp)
    c = np.concatenate(counts)
    out: dict[str, Any] = {
        "per_slice_mean": aggregate(c, cases, "per_slice_mean")["dice"],
        "pooled": aggregate(c, cases, "pooled")["dice"],
    }
    # case ids are RUN/CASE, or RUN/DATASET/CASE for a cross-validation over several datasets
    source = [cid.split("/", 1)[1].partition(SOURCE_SEP) for cid in cases]
    if all(sep and tail for _, sep, tail in source):
        names = np.array([name for name, _, _ in source])
        out["by_source"] = {
            str(name): {
                "n_slices": int((names == name).sum()),
                "per_slice_mean": aggregate(
                    c[names == name],
                    [x for x, n in zip(cases, names, strict=True) if n == name],
                    "per_slice_mean",
                )["dice"],
            }
            for name in sorted(set(names.tolist()))
        }
    return out


def own_scores(oof: OOF) -> dict[str, Any]:
    """Dice (per-slice mean and pooled; per-slice mean per dataset under ``by_source`` for a
    cross-validation over several) of every case with its run's own post-processing."""
    preds = [
        masks_from_probabilities(it.lung, it.infection, post, oof.model_size).infection
        for it, post in zip(oof.items, oof.own, strict=True)
    ]
    return _scores(preds, oof)


def shared_scores(oof: OOF, post: PostProcessing) -> dict[str, Any]:
    """Dice (as :func:`own_scores`) of every case with one post-processing."""
    preds = [
        masks_from_probabilities(it.lung, it.infection, post, oof.model_size).infection
        for it in oof.items
    ]
    return _scores(preds, oof)


def select_on_oof(oof: OOF) -> Selection:
    """The post-processing grid (:data:`THRESHOLDS` x :data:`MIN_COMPONENTS` x
    :data:`LUNG_MARGINS`) searched on the out-of-fold predictions."""
    return _select(oof.items, oof.model_size)


def _select(items: list[Item], model_size: int) -> Selection:
    return select_postprocessing(
        items,
        model_size,
        thresholds=THRESHOLDS,
        min_components=MIN_COMPONENTS,
        lung_margins=LUNG_MARGINS,
    )


def other_folds_scores(oof: OOF) -> dict[str, Any]:
    """Dice (as :func:`own_scores`) of every run's cases with the post-processing that
    :func:`select_on_oof` picks on the *other* runs' out-of-fold predictions.

    The selection never sees the slices it is scored on, so this is a cross-validated estimate
    of choosing the post-processing on out-of-fold predictions (as :func:`ship` does), to
    compare with :func:`own_scores` (choosing it on each run's validation slices). ``"chosen"``
    maps each run to its selection; a single run has no other runs and is not scored (``{}``).
    """
    runs = [cid.split("/", 1)[0] for cid in oof.case_ids]
    if len(set(runs)) < 2:
        return {}
    post = {
        run: _select(
            [it for it, r in zip(oof.items, runs, strict=True) if r != run], oof.model_size
        ).postprocessing
        for run in sorted(set(runs))
    }
    preds = [
        masks_from_probabilities(it.lung, it.infection, post[r], oof.model_size).infection
        for it, r in zip(oof.items, runs, strict=True)
    ]
    chosen = {run: to_dict(p) for run, p in post.items()}
    return {**_scores(preds, oof), "chosen": chosen}


def summary(oof: OOF, sel: Selection, other_folds: bool = False) -> dict[str, Any]:
    """A JSON-ready record of an out-of-fold selection (with ``other_folds``:
    :func:`other_folds_scores` too)."""
    return {
        "n_slices": oof.n_slices,
        "own_postprocessing": own_scores(oof),
        **({"other_folds_selection": other_folds_scores(oof)} if other_folds else {}),
        "selected": {
            "postprocessing": to_dict(sel.postprocessing),
            **shared_scores(oof, sel.postprocessing),
        },
        "grid_per_slice_dice": sel.scores,
    }


def ship(
    checkpoint: str | Path,
    dest: str | Path,
    sel: Selection,
    *,
    source: str,
    dataset: str | None = None,
) -> Path:
    """Copy ``checkpoint`` to ``dest`` with the selected post-processing written into it.

    Args:
        checkpoint: the final model (e.g. ``runs/final/last.safetensors``).
        dest: the new checkpoint (e.g. ``src/covseg/pretrained/model.safetensors``).
        sel: :func:`select_on_oof`'s result.
        source: how the post-processing was chosen (recorded as ``postprocessing_source``).
        dataset: a description of the training data (recorded in ``data.dataset``).
    """
    model, meta = load_checkpoint(checkpoint)
    data = DataRecord(dataset=dataset, train_cases=meta.data.train_cases) if dataset else meta.data
    return save_checkpoint(
        dest,
        model,
        meta.replace(postprocessing=sel.postprocessing, postprocessing_source=source, data=data),
    )
