"""What a batch does, decided before any work: its cases, their names, this machine's share.

A :class:`Task` is one input and its case name; :class:`Settings` is everything the per-case
work needs (plain data, picklable, so worker processes and cluster workers receive it as is).
``--shard i/n`` keeps the cases whose name hashes (sha256, stable across machines and Python
runs, unlike ``hash()``) to ``i - 1`` modulo ``n``: shards ``1/n .. n/n`` run separately cover
every case exactly once, whatever order or machine they run in.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from covseg.config.choices import OVERLAY_AUTO_MAX, OVERLAYS
from covseg.data.io import find_inputs
from covseg.data.io.common import strip_suffix
from covseg.errors import DataError
from covseg.inference.outputs import OUTPUT_ENDINGS, case_name

__all__ = [
    "OVERLAYS",
    "OVERLAY_AUTO_MAX",
    "Settings",
    "Task",
    "parse_shard",
    "plan_cases",
    "select_shard",
    "shard_of",
]


@dataclass(frozen=True)
class Task:
    """One case of a batch.

    Attributes:
        input: the input path as found (a file, or a DICOM series folder).
        case: its output prefix (:func:`~covseg.inference.outputs.case_name`).
        label: the input as the user gave it where that differs from ``input`` (an entry of a
            zip file: ``scans.zip`` or ``scans.zip/slice_1.png``, read from where it was
            extracted); ``""``: ``input``.
        source: the file on disk that ``input`` was taken from where that differs (the zip
            file); ``""``: ``input``. Its size and time tell a rerun that the input changed.
    """

    input: str
    case: str
    label: str = ""
    source: str = ""

    @property
    def name(self) -> str:
        """The input as reports, tables and messages name it (``label``, else ``input``)."""
        return self.label or self.input


@dataclass(frozen=True)
class Settings:
    """Everything the per-case work needs (``covseg segment``'s options).

    Attributes:
        out_dir: the output folder.
        checkpoint: a checkpoint path, or ``"pretrained"``.
        tta: flip test-time augmentation.
        batch_size: slices per forward pass.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        backend: how the network runs.
        intensity: the intensity rule of every input; ``None``: the checkpoint's.
        framing: ``"full"`` or ``"lungs"``; ``None``: the checkpoint's.
        formats: mask formats; ``None``: the default per input kind.
        overlay: ``"all"``, ``"none"`` or ``"volumes"`` (``--overlay auto`` resolved by
            :meth:`resolve_overlay`).
        redo: segment cases again even where complete outputs of the same settings exist.
        progress: a tqdm bar per volume on stderr (serial engine only).
        probability: also write each case's calibrated infection probability
            (:mod:`covseg.inference.probability`).
    """

    out_dir: str
    checkpoint: str = "pretrained"
    tta: bool = False
    batch_size: int = 8
    device: str = "auto"
    backend: str = "torch"
    intensity: str | None = None
    framing: str | None = None
    formats: tuple[str, ...] | None = None
    overlay: str = "volumes"
    redo: bool = False
    progress: bool = False
    probability: bool = False

    @staticmethod
    def resolve_overlay(overlay: str, n_cases: int) -> str:
        """``--overlay`` as :attr:`overlay` for a batch of ``n_cases`` (all shards together, so
        that every shard decides alike).

        Raises:
            DataError: an unknown value.
        """
        if overlay not in OVERLAYS:
            raise DataError(f"--overlay {overlay!r}: expected one of {', '.join(OVERLAYS)}")
        if overlay == "auto":
            return "none" if n_cases > OVERLAY_AUTO_MAX else "volumes"
        return overlay

    def wants_overlay(self, ndim: int) -> bool:
        """Whether a case of ``ndim`` dimensions (2: a picture, 3: a volume) gets an overlay."""
        return self.overlay == "all" or (self.overlay == "volumes" and ndim == 3)


log = logging.getLogger(__name__)


def is_covseg_output(path: Path) -> bool:
    """Whether ``path`` is a file ``segment`` wrote: ``<case>_lungs.nii.gz`` and the like, with
    ``<case>_report.json`` beside it (an output folder given as input, or ``--out`` the scans'
    own folder, would otherwise have its masks segmented as scans)."""
    if not path.is_file():
        return False
    stem = strip_suffix(path.name)
    return any(
        stem.endswith(end) and (path.parent / f"{stem[: -len(end)]}_report.json").is_file()
        for end in OUTPUT_ENDINGS.values()
    )


def plan_cases(inputs: Iterable[str | Path], labels: Mapping[str, str] | None = None) -> list[Task]:
    """The cases of the inputs given on the command line, in order, each input once.

    ``labels`` maps a folder that stands for another input (a zip file extracted there) to that
    input's name: its cases get ``label`` ``ZIP`` (the folder itself) or ``ZIP/ENTRY``.

    Files that ``segment`` wrote (:func:`is_covseg_output`) are left out.

    Raises:
        DataError: a missing input, a folder with nothing readable, no input at all, one with
            only covseg's outputs, a name too long, or two inputs with one case name (their
            outputs would collide).
    """
    inputs = list(inputs)
    found = list(dict.fromkeys(p for given in inputs for p in find_inputs(given)))
    paths = [p for p in found if not is_covseg_output(Path(p))]
    if not paths:
        if found:
            raise DataError(f"{inputs[0]}: only covseg's own outputs (masks beside a report)")
        raise DataError("no input given")
    if len(paths) < len(found):
        log.warning("%d file(s) that covseg wrote left out of the inputs", len(found) - len(paths))
    seen: dict[str, Path] = {}
    tasks = []
    for p in paths:
        name = case_name(p)
        if name in seen:
            raise DataError(f"{p}: same case name {name!r} as {seen[name]}; outputs would collide")
        seen[name] = p
        label, source = _label(Path(p), labels or {})
        tasks.append(Task(str(p), name, label, source))
    return tasks


def _label(path: Path, labels: Mapping[str, str]) -> tuple[str, str]:
    """``(label, source)`` of a path inside a folder of ``labels`` (else empty strings)."""
    for folder, name in labels.items():
        if path == Path(folder):
            return name, name
        if Path(folder) in path.parents:
            return f"{name}/{path.relative_to(folder).as_posix()}", name
    return "", ""


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (``1 <= i <= n``) -> ``(i, n)``.

    Raises:
        DataError: anything else, naming the value.
    """
    parts = str(text).split("/")
    try:
        i, n = (int(x) for x in parts) if len(parts) == 2 else (0, 0)
    except ValueError:
        i, n = 0, 0
    if not 1 <= i <= n:
        raise DataError(f"--shard {text!r}: expected i/n with 1 <= i <= n (e.g. 2/3)")
    return i, n


def shard_of(case: str, n: int) -> int:
    """The shard (``1..n``) of a case name: sha256 of its UTF-8 bytes modulo ``n``, plus 1."""
    digest = hashlib.sha256(case.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def select_shard(tasks: Sequence[Task], shard: tuple[int, int] | None) -> list[Task]:
    """The tasks of ``shard`` (``(i, n)``); all of them for ``None``."""
    if shard is None:
        return list(tasks)
    i, n = shard
    return [t for t in tasks if shard_of(t.case, n) == i]
