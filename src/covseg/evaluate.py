"""``covseg evaluate``: a checkpoint against a labelled dataset, at the ORIGINAL resolution.

The data may be a prepared dataset or a raw folder (``slices``, ``zenodo20``, ... — prepared on
the fly into a temporary folder with the checkpoint's preprocessing). Predictions are made at the
model's size, resized back to each slice's original size, and compared with the original masks
read from the source files (for a prepared dataset: from the source recorded in its manifest;
when those files are gone, with the prepared masks, and a warning).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from covseg.checkpoint import load_checkpoint, pretrained_path
from covseg.data.dataset import PreparedDataset
from covseg.data.io import Image, read_image
from covseg.data.layouts import Case, discover
from covseg.data.prepare import prepare
from covseg.data.preprocess import canonical_spacing, resize_back, volume_to_slices
from covseg.errors import DataError
from covseg.inference import predict_slices, resolve_device
from covseg.metrics import METRICS, ConfusionAccumulator, surface_metrics
from covseg.models.blocks import fold_batchnorm
from covseg.threshold import remove_small_components

__all__ = ["evaluate", "format_table", "original_infection"]

log = logging.getLogger(__name__)


def original_infection(case: Case) -> tuple[np.ndarray, tuple[float, float, float] | None] | None:
    """The infection truth of a case at its original resolution, as canonical slices.

    Returns:
        ``((N, H, W) bool, (slice_mm, row_mm, col_mm) or None)``, or ``None`` when the case's
        slices are not all the same size or come from stacked volumes (medseg).
    """
    slices, spacing = [], None
    for src in case.sources:
        if src.index is not None:
            return None
        inf: np.ndarray | None = None
        ref: Image | None = None
        for mf in src.masks:
            if not mf.infection:
                continue
            img = read_image(mf.path)
            a = np.asarray(img.array)
            if mf.threshold is not None:
                v = a >= mf.threshold
            elif mf.binary:
                v = a > 0
            else:
                v = np.isin(np.round(a).astype(np.int64), mf.infection)
            inf = v if inf is None else inf | v
            ref = img
        if inf is None or ref is None:
            inf = np.zeros(read_image(src.image).array.shape, bool)
            ref = read_image(src.image)
        slices.append(volume_to_slices(Image(inf, ref.affine, ref.kind, ref.path)))
        sp = canonical_spacing(ref)
        if sp is not None:
            spacing = (sp[2], sp[0], sp[1])
    if len({s.shape[1:] for s in slices}) != 1:
        return None
    return np.concatenate(slices).astype(bool), spacing


def _open_data(data: Path, meta: dict, tmp: Path) -> tuple[PreparedDataset, dict[str, Case]]:
    """The prepared dataset and, where the source files exist, its cases by id."""
    pre = meta.get("preprocessing", {})
    if (data / "manifest.json").exists():
        prepared = PreparedDataset(data)
        size = int(prepared.manifest.get("params", {}).get("size", 0))
        if pre.get("size") and size != int(pre["size"]):
            log.warning("%s: prepared at %d px, the model at %s px", data, size, pre["size"])
        source = Path(prepared.manifest.get("source", ""))
        params = prepared.manifest.get("params", {})
        try:
            _, cases = discover(
                source,
                prepared.manifest.get("layout", "auto"),
                masks_dir=params.get("masks_dir", "masks"),
                pseudo=params.get("pseudo", False),
                group=params.get("group"),
                include_effusion=params.get("include_effusion", False),
            )
        except DataError as err:
            log.warning("%s: original masks unavailable (%s); metrics at %d px", data, err, size)
            cases = []
        return prepared, {c.id: c for c in cases}
    out = prepare(
        data,
        tmp / "prepared",
        size=int(pre.get("size", 256)),
        intensity=pre.get("intensity", "auto")
        if pre.get("intensity") in ("hu", "uint8")
        else "auto",
    )
    prepared = PreparedDataset(out)
    _, cases = discover(data, prepared.manifest.get("layout", "auto"))
    return prepared, {c.id: c for c in cases}


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    json_out: str | Path | None = None,
    *,
    threshold: float | None = None,
    batch_size: int = 16,
    device: str = "auto",
    tta: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a labelled dataset (see the module docstring).

    Args:
        checkpoint: ``RUN/best.safetensors`` (or ``.json``), or ``"pretrained"``.
        data: a prepared dataset or a raw dataset folder.
        json_out: where to write the result as JSON (optional).
        threshold: probability threshold; default: the checkpoint's chosen one.
        batch_size: slices per forward pass.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        tta: add left-right flip test-time augmentation.

    Returns:
        ``{"n_items", "threshold", "per_slice_mean": {dice, iou, ppv, sensitivity,
        specificity}, "pooled": {...}}`` plus ``"per_volume_mean"``, ``"hd95_mm"`` and
        ``"nsd_3mm"`` for volume data.

    Raises:
        CheckpointError: a missing or damaged checkpoint.
        DataError: unusable data.
    """
    ckpt = pretrained_path() if str(checkpoint) == "pretrained" else Path(checkpoint)
    dev = resolve_device(device)
    model, meta = load_checkpoint(ckpt, device=dev)
    model = fold_batchnorm(model.eval())  # inference only: BN folded into the convolutions
    thr = float(meta.get("threshold", 0.5) if threshold is None else threshold)
    min_size = int(meta.get("min_component", 0))
    with tempfile.TemporaryDirectory(prefix="covseg-eval-") as tmp:
        prepared, originals = _open_data(Path(data), meta, Path(tmp))
        acc = ConfusionAccumulator()
        surface: list[dict[str, float]] = []
        volume = False
        for cid in prepared.case_ids:
            arrays = prepared.load(cid)
            probs = predict_slices(model, arrays["image"], batch_size, dev, tta=tta)
            truth, spacing = arrays["infection"].astype(bool), None
            orig = original_infection(originals[cid]) if cid in originals else None
            scale = 1.0
            if orig is not None and orig[0].shape[0] == probs.shape[0]:
                truth, spacing = orig
                scale = truth.shape[1] * truth.shape[2] / (probs.shape[1] * probs.shape[2])
                probs = resize_back(probs, truth.shape[1:], mask=False)
            pred = remove_small_components(probs >= thr, round(min_size * scale))
            acc.add(pred, truth, case=cid)
            if prepared.case(cid).get("kind") == "volume":
                volume = True
                if spacing is None and prepared.case(cid).get("spacing_mm"):
                    rec = prepared.case(cid)
                    spacing = (rec["slice_thickness_mm"], *rec["spacing_mm"])
                if spacing is not None:
                    surface.append(surface_metrics(pred, truth, tuple(map(float, spacing))))
    result: dict[str, Any] = {
        "n_items": acc.n_items,
        "threshold": thr,
        "per_slice_mean": acc.aggregate("per_slice_mean"),
        "pooled": acc.aggregate("pooled"),
    }
    if volume:
        result["per_volume_mean"] = acc.aggregate("per_volume_mean")
        for key in ("hd95_mm", "nsd_3mm"):
            vals = [s[key] for s in surface if not math.isnan(s[key])]
            result[key] = float(np.mean(vals)) if vals else float("nan")
    if json_out is not None:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp_name, path)
    return result


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of :func:`evaluate`'s result (rows metrics, columns modes)."""
    modes = [m for m in ("per_slice_mean", "per_volume_mean", "pooled") if m in result]
    lines = [
        f"{result['n_items']} slices, threshold {result['threshold']:.2f}",
        "",
        "| Metric | " + " | ".join(modes) + " |",
        "|---|" + "---|" * len(modes),
    ]
    for m in METRICS:
        lines.append(f"| {m} | " + " | ".join(f"{result[k][m]:.4f}" for k in modes) + " |")
    for key in ("hd95_mm", "nsd_3mm"):
        if key in result:
            lines.append(f"| {key} | {result[key]:.4f} |" + " |" * (len(modes) - 1))
    return "\n".join(lines)
