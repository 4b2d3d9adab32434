"""A safetensors file and its JSON sidecar as one unit: written so that a kill at any point
leaves a consistent pair, and read back only when the tensors' sha256 matches a record.

Checkpoints (:mod:`covseg.checkpoint`) and the training state of ``--resume`` are stored this way.
Every write goes to a temporary name in the target's folder and is renamed when complete; the
JSON names its tensors' hash, so a reader can tell a pair torn by a crash from a whole one.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from covseg.errors import CheckpointError
from covseg.files import file_mode, write_json

__all__ = [
    "MAX_WEIGHTS_BYTES",
    "commit_pair",
    "file_sha256",
    "matching_record",
    "pair_paths",
    "write_tensors",
]

#: Weights files larger than this are refused before hashing (the paper preset is 71 MB).
MAX_WEIGHTS_BYTES = 2 << 30


def pair_paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, json)`` of a pair given either file or the bare stem."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` completely to a temporary file next to ``path``; return its name (the
    caller renames it into place). A failed write leaves no temporary file."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as err:  # name the file asked for, not the temporary one
        raise OSError(err.errno, err.strerror, str(path)) from None
    os.close(fd)
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata
        )
        os.chmod(tmp, file_mode())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def commit_pair(
    weights: Path,
    side: Path,
    tensors: dict[str, torch.Tensor],
    record: dict,
    metadata: dict[str, str] | None = None,
) -> str:
    """Replace a tensors + JSON pair so that a kill at any point leaves a consistent pair.

    The new tensors are written to a temporary file first. Before they are renamed into place,
    the JSON is rewritten to hold the new record *and* the old one (``"previous"``); readers pick
    the record whose sha256 matches the tensors file on disk (:func:`matching_record`), so
    between the two renames old tensors still pair with their old record and new ones with the
    new. The final JSON holds the new record alone.

    Args:
        weights: the tensors file to replace.
        side: its JSON sidecar.
        tensors: what ``weights`` will hold.
        record: the JSON record (its ``"sha256"`` is set to the new tensors' hash).
        metadata: strings stored in the safetensors header.

    Returns:
        The sha256 of the new tensors file.
    """
    tmp = write_tensors(weights, tensors, metadata)
    sha = file_sha256(tmp)
    new = {**record, "sha256": sha}
    new.pop("previous", None)
    try:
        old = _read_json(side)
        if old is not None and weights.exists():
            old.pop("previous", None)
            write_json(side, {**new, "previous": old})
        os.replace(tmp, weights)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_json(side, new)
    return sha


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _check_weights_file(weights: Path) -> None:
    """A regular file of a plausible size, checked before it is hashed or opened (a FIFO or
    ``/dev/zero`` would block or hash for ever)."""
    try:
        st = weights.stat()
    except FileNotFoundError:
        raise CheckpointError(f"{weights}: missing") from None
    except OSError as err:
        raise CheckpointError(f"{weights}: unreadable ({err.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{weights}: not a regular file")
    if st.st_size > MAX_WEIGHTS_BYTES:
        raise CheckpointError(f"{weights}: {st.st_size} bytes, more than any covseg model")


def matching_record(weights: Path, meta: dict, what: str) -> dict:
    """The record of ``meta`` (itself, or its ``"previous"`` after an interrupted save) whose
    sha256 is that of ``weights``.

    Raises:
        CheckpointError: the file is missing or matches no record (modified or corrupt).
    """
    _check_weights_file(weights)
    digest = file_sha256(weights)
    for record in (meta, meta.get("previous")):
        if isinstance(record, dict) and record.get("sha256") == digest:
            return {k: v for k, v in record.items() if k != "previous"}
    raise CheckpointError(
        f"{weights}: {what} do not match the recorded sha256 — file modified or corrupt"
    )
