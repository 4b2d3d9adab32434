"""Checkpoints: weights in safetensors, everything else in a typed JSON sidecar. Never pickle.

A checkpoint is two files with one stem::

    RUN/best.safetensors   the model's state dict
    RUN/best.json          CheckpointMeta as JSON: {"format", "covseg_version", "requires_covseg",
                           "model_config", "preprocessing", "postprocessing", "train_config",
                           "data", "metrics", "epoch", "postprocessing_source", "weights",
                           "sha256"}

The JSON is read through one dataclass, :class:`~covseg.meta.CheckpointMeta`, validated field by
field before anything is built (a wrong type or range is a :class:`~covseg.errors.CheckpointError`
naming the file and the field). :func:`load_checkpoint` rebuilds the network from the JSON alone
(the nanoGPT habit) after checking the format and the weights' sha256. Weights are written first
and the JSON last, each to a temporary name renamed when complete, so a JSON always names a
complete weights file (:mod:`covseg.tensor_pair`). ``"pretrained"`` names the shipped model
wherever a checkpoint is asked for (:func:`resolve_checkpoint`).

Format 1 (covseg 0.1) kept ``threshold`` and ``min_component`` at the top level and restricted
infection to the lungs in ``segment`` only, with a 2-pixel margin; it is read as
``PostProcessing(threshold, min_component, lung_margin_px=2)``.

The optimiser/scheduler state needed by ``--resume`` is stored the same way
(:func:`save_train_state`): tensors in ``RUN/last_state.safetensors``, the rest in
``RUN/last_state.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from covseg._version import __version__
from covseg.errors import CheckpointError
from covseg.files import write_json
from covseg.meta import CheckpointMeta
from covseg.tensor_pair import commit_pair, matching_record, pair_paths

__all__ = [
    "CALIBRATED_FORMAT",
    "ENSEMBLE_FORMAT",
    "FORMAT",
    "build_network",
    "load_checkpoint",
    "load_train_state",
    "pretrained_path",
    "read_meta",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_train_state",
    "update_meta",
]

#: Checkpoint format of a single network written by this covseg.
FORMAT = 2
#: The format of an ensemble (a ``"ensemble"`` list of member configs).
ENSEMBLE_FORMAT = 3
#: The format of a checkpoint with a :class:`~covseg.config.Calibration` (single or ensemble):
#: an older covseg would drop the calibration and threshold uncalibrated probabilities, so it
#: must refuse the file. The newest this covseg reads; readers refuse newer ones.
CALIBRATED_FORMAT = 4
#: The first covseg version that reads each format (recorded so older readers can say so).
REQUIRES_COVSEG = {FORMAT: "0.2.0", ENSEMBLE_FORMAT: "0.2.1", CALIBRATED_FORMAT: "0.3.0"}


def pretrained_path() -> Path:
    """The shipped model ``covseg/pretrained/model.safetensors`` (with ``model.json``).

    Raises:
        CheckpointError: no pretrained model is shipped in this install.
    """
    path = Path(__file__).parent / "pretrained" / "model.safetensors"
    if not path.exists() or not path.with_suffix(".json").exists():
        raise CheckpointError(
            f"no pretrained model is shipped in this install ({path} is missing); "
            "pass --checkpoint RUN/best.safetensors from `covseg train`"
        )
    return path


def resolve_checkpoint(spec: str | Path) -> Path:
    """``"pretrained"`` -> the shipped model; any other value -> that path.

    Raises:
        CheckpointError: an empty value, ``"pretrained"`` in an install without one, a folder,
            another kind of file (a scan given as the checkpoint), or no such pair.
    """
    if str(spec) == "pretrained":
        return pretrained_path()
    if not str(spec).strip():
        raise CheckpointError("--checkpoint is empty (give RUN/best.safetensors or 'pretrained')")
    path = Path(spec)
    if path.name in ("", ".", "..") or path.is_dir():
        raise CheckpointError(f"{spec}: a folder, not a checkpoint (give RUN/best.safetensors)")
    if path.suffix not in (".safetensors", ".json") and path.is_file():
        raise CheckpointError(
            f"{spec}: not a checkpoint (give NAME.safetensors, with NAME.json beside it)"
        )
    if not any(p.exists() for p in pair_paths(path)):
        raise CheckpointError(f"{spec}: no such checkpoint")
    return path


def save_checkpoint(path: str | Path, model: nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights and the JSON sidecar of ``meta`` (format and hash added).

    Args:
        path: ``.../name.safetensors`` (or ``name.json``, or the stem ``name``).
        model: the network (a DDP wrapper is unwrapped).
        meta: the metadata; its ``sha256`` is replaced by the new weights' hash.

    Returns:
        The weights path.
    """
    weights, side = pair_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)
    record = {
        **meta.replace(covseg_version=__version__).to_json(),
        **_format_fields(meta),
        "weights": weights.name,
    }
    commit_pair(weights, side, model.state_dict(), record)
    return weights


def _format_fields(meta: CheckpointMeta) -> dict[str, Any]:
    """``format`` and ``requires_covseg`` of ``meta``'s record: a calibration needs format 4,
    else an ensemble format 3."""
    fmt = CALIBRATED_FORMAT if meta.calibrated else ENSEMBLE_FORMAT if meta.members else FORMAT
    return {"format": fmt, "requires_covseg": REQUIRES_COVSEG[fmt]}


def _read_raw(side: Path) -> dict[str, Any]:
    """The JSON sidecar as a dict, its format checked."""
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{side}: missing (a checkpoint is a .safetensors + .json pair)"
        ) from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{side}: unreadable checkpoint metadata ({err})") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise CheckpointError(f"{side}: not a covseg checkpoint (no format number)")
    if fmt > CALIBRATED_FORMAT:
        need = meta.get("requires_covseg") or f"a version newer than {__version__}"
        raise CheckpointError(
            f"{side}: checkpoint format {fmt} needs covseg >= {need} "
            f"(this is covseg {__version__}, reading format <= {CALIBRATED_FORMAT}); upgrade covseg"
        )
    return meta


def _current_record(side: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """The record of ``raw`` that belongs to the weights on disk: ``raw`` itself, or after a
    save interrupted between its two renames, whichever of it and ``"previous"`` matches."""
    if "previous" not in raw:
        return raw
    return matching_record(
        side.parent / str(raw.get("weights", side.stem + ".safetensors")), raw, "weights"
    )


def read_meta(path: str | Path) -> CheckpointMeta:
    """The typed metadata of a checkpoint (``"pretrained"`` or a path); the weights are only
    read (hashed) when an interrupted save left two records to choose from.

    Raises:
        CheckpointError: missing or unreadable JSON, a newer format, or a bad field.
    """
    _, side = pair_paths(resolve_checkpoint(path))
    return CheckpointMeta.from_json(_current_record(side, _read_raw(side)), side)


def update_meta(path: str | Path, **changes: Any) -> CheckpointMeta:
    """Rewrite fields of a checkpoint's JSON (e.g. the chosen post-processing); weights and
    their hash untouched."""
    _, side = pair_paths(path)
    raw = _current_record(side, _read_raw(side))
    meta = CheckpointMeta.from_json(raw, side).replace(**changes)
    record = {**raw, **meta.to_json(), **_format_fields(meta)}
    for legacy in ("threshold", "min_component", "previous"):
        record.pop(legacy, None)
    write_json(side, record)
    return meta


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the network of a checkpoint from its JSON and load its verified weights.

    Args:
        path: ``"pretrained"``, the ``.safetensors`` or ``.json`` file (or their common stem).
        device: where to put the model.

    Returns:
        ``(model in eval mode, its metadata)``.

    Raises:
        CheckpointError: missing files, a newer format, a bad field, a sha256 mismatch (the
            weights were modified or are corrupt), or weights that do not fit the model config.
    """
    weights, side = pair_paths(resolve_checkpoint(path))
    raw = _read_raw(side)
    name = raw.get("weights", weights.name)
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise CheckpointError(f"{side}: bad weights file name {name!r}")
    weights = side.parent / name
    record = matching_record(weights, raw, "weights")
    meta = CheckpointMeta.from_json(record, side)
    _check_tensors(weights, meta, side)
    model = build_network(meta)
    try:
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, SafetensorError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(
            f"{weights}: weights do not fit the model config recorded in {side.name} ({first})"
        ) from None
    return model.to(device).eval(), meta


#: safetensors dtype names of the torch dtypes a covseg state dict holds.
_ST_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
}


def build_network(meta: CheckpointMeta) -> nn.Module:
    """The (untrained) network ``meta`` describes: its ``model_config``, or an
    :class:`~covseg.models.ensemble.Ensemble` of its ``members``."""
    from covseg.models import build_model
    from covseg.models.ensemble import Ensemble

    if meta.members:
        return Ensemble([build_model(c) for c in meta.members])
    return build_model(meta.model_config)


def _check_tensors(weights: Path, meta: CheckpointMeta, side: Path) -> None:
    """The weights file's tensor names, shapes and dtypes against the network the metadata
    describes, built on the meta device (no memory), before the real network is built: a
    config that widens the model, or weights stored as int8/bool, fail here.

    Raises:
        CheckpointError: not a safetensors file, or a tensor that does not fit.
    """
    with torch.device("meta"):
        expected = build_network(meta).state_dict()
    try:
        with safe_open(str(weights), framework="pt") as f:
            found = {}
            for k in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                tensor = f.get_slice(k)
                found[k] = (tuple(tensor.get_shape()), tensor.get_dtype())
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"{weights}: not a readable safetensors file ({first})") from None
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise CheckpointError(
            f"{weights}: weights do not fit the model config recorded in {side.name} ({what})"
        )
    for key, ref in expected.items():
        shape, dtype = found[key]
        want = _ST_DTYPES.get(ref.dtype, str(ref.dtype))
        if shape != tuple(ref.shape) or dtype != want:
            raise CheckpointError(
                f"{weights}: weights do not fit the model config recorded in {side.name} "
                f"(tensor {key} is {dtype} {list(shape)}, the config needs {want} "
                f"{list(ref.shape)})"
            )


# ------------------------------------------------------------------ training state (resume)
def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move tensors of a nested dict/list into ``tensors``; leave ``{"__tensor__": key}``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {str(k): _flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_train_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write a nested dict of tensors and JSON values (optimizer/scheduler state dicts, RNG
    states as uint8 tensors, counters) as ``path.safetensors`` + ``path.json``, without pickle."""
    weights, side = pair_paths(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "s", tensors)
    # The non-tensor part travels inside the tensors file (its safetensors header), so tensors
    # and counters are one atomic unit; the JSON only records the format and the hash.
    commit_pair(weights, side, tensors, {"format": FORMAT}, {"state": json.dumps(skeleton)})


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Inverse of :func:`save_train_state`; optimizer state-dict keys that were ints are ints.

    Raises:
        CheckpointError: missing or mismatching files.
    """
    weights, side = pair_paths(path)
    matching_record(weights, _read_raw(side), "training state tensors")
    try:
        with safe_open(str(weights), framework="pt") as f:
            skeleton = json.loads((f.metadata() or {})["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (no iter)
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"{weights}: unreadable training state ({err})") from None
    return _unflatten(skeleton, tensors)
