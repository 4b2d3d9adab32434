"""File outputs of ``covseg segment``: masks, report JSON and overlay per case, and the run over
all inputs.

Per case (``<case>`` is the input's name without its image suffix): ``<case>_lungs.nii.gz`` and
``<case>_infection.nii.gz`` (uint8, the input's shape, affine and orientation; ``.png`` for picture
inputs), ``<case>_overlay.png`` and ``<case>_report.json``. They are written into a private
temporary folder inside the output folder and renamed into place only when the whole case is
done, as one unit: under the output folder's lock (:func:`covseg.files.folder_lock`), the old
report is removed first and the new one renamed last, so the report's presence marks a complete
case whose files all come from one run — whether another run writes the same case at the same
time or this one is killed between two renames. The temporary folders of killed runs are removed
by the next run (:func:`covseg.files.remove_stale`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from covseg.data.geometry import canonical_view
from covseg.data.io import Image, find_inputs, read_image, write_mask
from covseg.data.io.common import strip_suffix
from covseg.data.preprocess import normalize_intensity
from covseg.errors import DataError
from covseg.files import file_mode, folder_lock, remove_stale, temporary_dir
from covseg.inference.burden import BurdenReport
from covseg.inference.segmenter import Segmenter, SegmentResult

__all__ = [
    "MAX_CASE_BYTES",
    "OVERLAY_SLICES",
    "case_name",
    "check_output_dir",
    "format_summary",
    "segment_file",
    "segment_files",
    "write_case",
]

log = logging.getLogger(__name__)

#: Number of slices shown in the overlay figure.
OVERLAY_SLICES = 3
#: Longest case name in bytes: ``<case>_infection.nii.gz`` and its temporary name must stay
#: within the 255-byte file name limit of common file systems.
MAX_CASE_BYTES = 200
#: Free space asked of ``--out`` before a run: per case, plus a share of the inputs' size
#: (uint8 masks compress to a small fraction of a CT's int16 voxels).
SPACE_PER_CASE = 4 << 20
SPACE_SHARE = 0.1
#: The prefix and suffix of the per-case temporary folders.
_TMP_PREFIX, _TMP_SUFFIX = ".", ".partial"


def case_name(path: str | Path) -> str:
    """The output prefix of an input: its name without the image suffix, made safe as a file
    name: control characters (newlines...) and path separators become ``_``, and so do leading
    dots (``..nii.gz`` would give a hidden ``._lungs`` file); an empty name becomes ``case``.

    Raises:
        DataError: a name longer than :data:`MAX_CASE_BYTES` bytes.
    """
    name = strip_suffix(Path(path).name)
    name = "".join(c if c.isprintable() and c not in "/\\" else "_" for c in name)
    stripped = name.lstrip(".")
    name = "_" * (len(name) - len(stripped)) + stripped if stripped else "case"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_CASE_BYTES:
        raise DataError(
            f"{path}: name longer than {MAX_CASE_BYTES} bytes; its output file names would "
            "pass the file system's limit (rename the input)"
        )
    return name


def check_output_dir(out_dir: str | Path, inputs: Sequence[Path], n_cases: int) -> Path:
    """Check ``--out`` before any work: a folder (created) that this process can write, not
    inside an input folder (the next run would read its outputs as inputs), with room for the
    outputs; temporary folders left there by killed runs are removed.

    Raises:
        DataError: naming the folder and the problem.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: --out exists and is not a folder")
    real = out.resolve()
    for given in inputs:
        folder = Path(given).resolve()
        if folder.is_dir() and (real == folder or folder in real.parents):
            raise DataError(
                f"{out}: --out is inside the input folder {given}; the next run would read "
                "the outputs as inputs (choose another folder)"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".covseg-write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise DataError(f"{out}: cannot write to --out ({err.strerror or err})") from None
    need = n_cases * SPACE_PER_CASE + int(SPACE_SHARE * sum(_size(p) for p in inputs))
    free = shutil.disk_usage(out).free
    if free < need:
        raise DataError(
            f"{out}: {free / 2**20:.0f} MiB free, the outputs need about {need / 2**20:.0f} MiB"
        )
    remove_stale(out, _TMP_PREFIX, _TMP_SUFFIX)
    return out


def _size(path: Path) -> int:
    """Bytes of a file, or of the files directly in a folder (a DICOM series)."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def write_case(image: Image, result: SegmentResult, out_dir: str | Path) -> dict[str, Path]:
    """Write one case's masks, overlay and report into ``out_dir`` (see the module docstring).

    Returns:
        ``{"lungs", "infection", "overlay", "report"}`` paths.
    """
    from covseg.figures.overlay import plot_segmentation

    out_dir = Path(out_dir)
    report = result.report
    case = report.case or case_name(image.path)
    ext = ".png" if image.array.ndim == 2 else ".nii.gz"
    names = {
        "lungs": f"{case}_lungs{ext}",
        "infection": f"{case}_infection{ext}",
        "overlay": f"{case}_overlay.png",
        "report": f"{case}_report.json",  # last: its presence marks a complete case
    }
    try:
        with temporary_dir(out_dir, prefix=f"{_TMP_PREFIX}{case}.", suffix=_TMP_SUFFIX) as tmp:
            write_mask(result.lungs, image, tmp / names["lungs"])
            write_mask(result.infection, image, tmp / names["infection"])
            images01, lungs, infs, ids = _overlay_slices(image, result)
            plot_segmentation(
                images01,
                lungs,
                infs,
                report.infection_area_per_slice,
                tmp / names["overlay"],
                slice_ids=ids,
                area_unit="mm²" if report.area_unit == "mm2" else "px",
            )
            (tmp / names["report"]).write_text(json.dumps(report.to_dict(), indent=1))
            mode = file_mode()  # temp files are created 0600; give outputs the usual mode
            for name in names.values():
                os.chmod(tmp / name, mode)
            with folder_lock(out_dir):  # one unit: see the module docstring
                (out_dir / names["report"]).unlink(missing_ok=True)
                for name in names.values():
                    os.replace(tmp / name, out_dir / name)
    except OSError as err:  # full disk, permissions changed meanwhile, ...
        where = Path(err.filename) if err.filename else out_dir
        if where.parent.name.endswith(_TMP_SUFFIX):  # name the output, not its temporary
            where = out_dir / where.name
        raise DataError(f"{where}: cannot write the outputs ({err.strerror or err})") from None
    return {key: out_dir / name for key, name in names.items()}


def _overlay_slices(
    image: Image, result: SegmentResult
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """The :data:`OVERLAY_SLICES` canonical slices with the most infection (else most lung)."""
    views = [canonical_view(x, image) for x in (image.array, result.lungs, result.infection)]
    area = np.asarray(result.report.infection_area_per_slice, dtype=float)
    if not area.any():
        area = views[1].sum(axis=(1, 2), dtype=np.int64).astype(float)
    ids = sorted(int(k) for k in np.argsort(-area, kind="stable")[:OVERLAY_SLICES])
    images01 = normalize_intensity(views[0][ids], result.report.intensity_rule)
    return images01, views[1][ids], views[2][ids], ids


def segment_file(
    seg: Segmenter, path: str | Path, out_dir: str | Path, *, progress: bool = False
) -> SegmentResult:
    """Segment one input with ``seg`` and write its outputs into ``out_dir`` (:func:`write_case`:
    ``<case>_lungs``, ``<case>_infection``, ``<case>_report.json``, ``<case>_overlay.png``, all
    written or none).

    Args:
        seg: the loaded model.
        path: a NIfTI file, a DICOM series folder, or a PNG/JPG picture.
        out_dir: output folder (created when the case is done).
        progress: show a tqdm bar on stderr.

    Returns:
        The :class:`~covseg.inference.segmenter.SegmentResult` with ``paths`` filled
        (``lungs``, ``infection``, ``overlay``, ``report``); its report names the ``case`` and
        the ``input``.

    Raises:
        DataError: an unreadable or unusable input.
        CheckpointError: a model without a lung head.
    """
    path = Path(path)
    image = read_image(path)
    result = seg.predict_image(image, progress)
    result.report = result.report.replace(case=case_name(path), input=str(path))
    result.paths = write_case(image, result, out_dir)
    return result


def segment_files(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    checkpoint: str | Path = "pretrained",
    tta: bool = False,
    batch_size: int = 8,
    device: str = "auto",
    backend: str = "torch",
    intensity: str | None = None,
    framing: str | None = None,
    progress: bool = False,
) -> list[BurdenReport]:
    """``covseg segment``: every input (files, DICOM folders, folders of them) into ``out_dir``.

    The checkpoint and the list of inputs are checked before any case runs; cases then run one
    after the other, each written completely or not at all (:func:`write_case`). The first bad
    case stops the run (the cases before it stay, complete).

    Args:
        inputs: paths given on the command line.
        out_dir: output folder.
        checkpoint: a checkpoint path, or ``"pretrained"`` for the shipped model.
        tta: flip test-time augmentation.
        batch_size: slices per forward pass.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        backend: how the network runs (:data:`~covseg.inference.predict.BACKENDS`).
        intensity: the intensity rule for every input (``"auto"``: told per scan); ``None``:
            the checkpoint's.
        framing: ``"full"`` or ``"lungs"`` (:mod:`covseg.inference.framing`); ``None``: the
            checkpoint's.
        progress: one tqdm bar per case on stderr.

    Returns:
        The reports, in input order.

    Raises:
        DataError: a missing input, a folder with nothing readable, two inputs with one case
            name, or a bad case.
        CheckpointError: the checkpoint fails its checks or has no lung head.
    """
    paths = [p for given in inputs for p in find_inputs(given)]
    if not paths:
        raise DataError("no input given")
    seen: dict[str, Path] = {}
    for p in paths:
        name = case_name(p)
        if name in seen and seen[name] != p:
            raise DataError(f"{p}: same case name {name!r} as {seen[name]}; outputs would collide")
        seen[name] = p
    paths = list(dict.fromkeys(paths))
    seg = Segmenter.from_checkpoint(
        checkpoint,
        device=device,
        batch_size=batch_size,
        tta=tta,
        backend=backend,
        intensity=intensity,
        framing=framing,
    )
    seg.require_lung_head()
    created = not Path(out_dir).exists()
    check_output_dir(out_dir, [Path(p) for p in inputs], len(paths))
    reports = []
    try:
        for p in paths:
            result = segment_file(seg, p, out_dir, progress=progress)
            log.debug("%s -> %s", p, result.paths["report"])
            reports.append(result.report)
    finally:
        if created and not reports:
            with contextlib.suppress(OSError):  # only if nothing else was put there
                os.rmdir(out_dir)
    return reports


def format_summary(reports: Sequence[BurdenReport]) -> str:
    """A text table: case, lung mL, infection mL, percent infected (``-`` where unknown); with a
    calibrated model also the expected percent and the interval of the percent."""

    def cell(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    calibrated = any(r.estimate is not None for r in reports)
    head = ("case", "lung mL", "infection mL", "infected %")
    rows = [head + (("expected %", "interval %") if calibrated else ())]
    for r in reports:
        row = (
            str(r.case),
            cell(r.total.lung_volume_ml, ".1f"),
            cell(r.total.infection_volume_ml, ".1f"),
            cell(r.total.infection_percent, ".2f") if r.lung_found else "no lung",
        )
        if calibrated:
            est = None if r.estimate is None else r.estimate.to_dict(None, r.total.lung_voxels)
            iv = None if est is None else est["interval_percent"]
            row += (
                cell(None if est is None else est["expected_percent"], ".2f"),
                "-" if iv is None else f"{iv[0]:.2f}-{iv[1]:.2f}",
            )
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row))
        for row in rows
    )
