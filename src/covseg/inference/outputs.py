"""File outputs of ``covseg segment``: masks, report JSON and overlay per case (the batch over
all inputs is :mod:`covseg.cohort`).

Per case (``<case>`` is the input's name without its image suffix): ``<case>_lungs.nii.gz`` and
``<case>_infection.nii.gz`` (uint8, the input's shape, affine and orientation; ``.png`` for picture
inputs), ``<case>_overlay.png`` and ``<case>_report.json``; for a DICOM series also
``<case>_seg.dcm``, a DICOM Segmentation of both masks referencing the source slices
(:mod:`covseg.data.io.dicom_seg`; :func:`case_formats` says when), and ``<case>_sr.dcm``, the
lung and infection volumes as a DICOM SR measurement report on it
(:mod:`covseg.data.io.dicom_sr`); with ``--probabilities`` also
``<case>_infection_prob.nii.gz`` (``.png`` for pictures), the uint8 calibrated infection
probability the threshold is applied to (:mod:`covseg.inference.probability`). They are written into a private temporary folder inside the
output folder and renamed into place only when the whole case is done, as one unit: under the
output folder's lock (:func:`covseg.files.folder_lock`), the old report is removed first and the
new one renamed last, so the report's presence marks a complete case whose files all come from
one run — whether another run writes the same case at the same time or this one is killed
between two renames. The temporary folders of killed runs are removed
by the next run (:func:`covseg.files.remove_stale`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.geometry import canonical_view
from covseg.data.io import Image, read_image, write_mask
from covseg.data.io.common import strip_suffix
from covseg.data.io.dicom_seg import dicom_seg_problem, write_dicom_seg
from covseg.data.io.dicom_sr import write_burden_sr
from covseg.data.preprocess import normalize_intensity
from covseg.errors import DataError
from covseg.files import file_mode, folder_lock, remove_stale, temporary_dir
from covseg.inference.burden import BurdenReport
from covseg.inference.probability import write_probability
from covseg.inference.segmenter import Segmenter, SegmentResult

__all__ = [
    "MAX_CASE_BYTES",
    "OUTPUT_FORMATS",
    "OVERLAY_SLICES",
    "case_formats",
    "case_name",
    "check_formats",
    "check_output_dir",
    "format_summary",
    "output_names",
    "segment_file",
    "write_case",
]

log = logging.getLogger(__name__)

#: Number of slices shown in the overlay figure.
OVERLAY_SLICES = 3
#: Largest side of a slice in the overlay figure (larger slices are subsampled).
OVERLAY_MAX_SIDE = 512
#: Longest case name in bytes: ``<case>_infection.nii.gz`` and its temporary name must stay
#: within the 255-byte file name limit of common file systems.
MAX_CASE_BYTES = 200
#: Free space asked of ``--out`` before a run: per case, plus a share of the inputs' size
#: (uint8 masks compress to a small fraction of a CT's int16 voxels).
SPACE_PER_CASE = 4 << 20
SPACE_SHARE = 0.1
#: The mask formats ``covseg segment --format`` takes: ``nifti`` (NIfTI masks, PNG for picture
#: inputs) and ``dicom-seg`` (``<case>_seg.dcm``, DICOM series only).
OUTPUT_FORMATS = ("nifti", "dicom-seg")
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
        DataError: naming the folder and the problem (an empty ``--out ""`` too: ``Path("")``
            would silently be the current folder).
    """
    if not str(out_dir).strip():
        raise DataError(f"--out {str(out_dir)!r}: an empty folder name (give a folder)")
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


def check_formats(formats: Sequence[str], inputs: Sequence[Path] = ()) -> tuple[str, ...]:
    """Check ``--format`` before any work.

    Args:
        formats: names of :data:`OUTPUT_FORMATS`.
        inputs: the inputs found (:func:`~covseg.data.io.find_inputs`): with ``dicom-seg`` asked
            for, each must be a DICOM series folder.

    Returns:
        ``formats`` without repeats.

    Raises:
        DataError: no format, an unknown one, or ``dicom-seg`` for a NIfTI/picture input.
    """
    if not formats or any(f not in OUTPUT_FORMATS for f in formats):
        raise DataError(
            f"--format {','.join(formats)}: expected one or more of {', '.join(OUTPUT_FORMATS)} "
            "(comma-separated)"
        )
    if "dicom-seg" in formats:
        for p in inputs:
            if not Path(p).is_dir():
                raise DataError(
                    f"{p}: --format dicom-seg needs DICOM series inputs, this is a file "
                    "(leave --format out: DICOM series then get one, other inputs NIfTI/PNG)"
                )
    return tuple(dict.fromkeys(formats))


def case_formats(requested: Sequence[str] | None, image: Image) -> tuple[str, ...]:
    """The mask formats of one case: ``requested`` when given; else NIfTI (PNG for pictures),
    plus a DICOM-SEG for a DICOM series that carries the UIDs a SEG references (a series that
    does not gets NIfTI alone and a warning saying why).

    Raises:
        DataError: ``requested`` holds ``dicom-seg`` and the input cannot have one.
    """
    if requested is not None:
        formats = check_formats(requested)
        problem = "dicom-seg" in formats and dicom_seg_problem(image)
        if problem:
            raise DataError(problem)
        return formats
    if image.kind != "dicom":
        return ("nifti",)
    problem = dicom_seg_problem(image)
    if problem:
        log.warning("%s; writing NIfTI masks only", problem)
        return ("nifti",)
    return OUTPUT_FORMATS


#: The name ending of each file :func:`write_case` writes beside ``<case>_report.json``.
OUTPUT_ENDINGS = {
    "lungs": "_lungs",
    "infection": "_infection",
    "dicom_seg": "_seg",
    "dicom_sr": "_sr",
    "probability": "_infection_prob",
    "overlay": "_overlay",
}


def output_names(
    case: str, image: Image, formats: Sequence[str] = ("nifti",), probability: bool = False
) -> dict[str, str]:
    """The file names :func:`write_case` writes for ``case`` in ``formats`` (a complete case
    has all of them): ``lungs``/``infection`` (``nifti``), ``dicom_seg`` and ``dicom_sr``
    (``dicom-seg``), ``probability`` (with ``probability``, whatever the formats), ``overlay``
    and ``report`` (always; the report last)."""
    ext = ".png" if image.array.ndim == 2 else ".nii.gz"
    kinds = {}
    if "nifti" in formats:
        kinds |= {"lungs": ext, "infection": ext}
    if "dicom-seg" in formats:
        kinds |= {"dicom_seg": ".dcm", "dicom_sr": ".dcm"}
    if probability:
        kinds["probability"] = ext
    kinds["overlay"] = ".png"
    names = {k: f"{case}{OUTPUT_ENDINGS[k]}{suffix}" for k, suffix in kinds.items()}
    return names | {"report": f"{case}_report.json"}


def write_case(
    image: Image,
    result: SegmentResult,
    out_dir: str | Path,
    *,
    formats: Sequence[str] = ("nifti",),
    overlay: bool = True,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write one case's masks, overlay and report into ``out_dir`` (see the module docstring).

    Args:
        image: the input as read.
        result: its masks and report; its ``probability``, when there, is written too.
        out_dir: the output folder.
        formats: mask formats of :data:`OUTPUT_FORMATS` (:func:`case_formats` picks them); a
            case's files of a format not asked for this time are removed with the old report.
        overlay: write ``<case>_overlay.png`` (an earlier one is removed when not).
        settings: stored as the report's ``"settings"`` record (what made the case; a batch
            compares it to skip finished cases, :mod:`covseg.cohort`).

    Returns:
        The paths of :func:`output_names`, by key.

    Raises:
        DataError: a file cannot be written, or a DICOM-SEG cannot reference the input.
    """
    from covseg.figures.overlay import plot_segmentation

    out_dir = Path(out_dir)
    report = result.report
    case = report.case or case_name(image.path)
    names = output_names(case, image, formats, probability=result.probability is not None)
    if not overlay:
        del names["overlay"]
    # Every earlier file of this case name not in the new set (another format, or another
    # input's kind: a picture's .png masks beside a volume's): the set is replaced as one.
    others = _every_name(case) - set(names.values())
    record = report.to_dict() | ({} if settings is None else {"settings": dict(settings)})
    try:
        with temporary_dir(out_dir, prefix=f"{_TMP_PREFIX}{case}.", suffix=_TMP_SUFFIX) as tmp:
            for key in ("lungs", "infection"):
                if key in names:
                    write_mask(getattr(result, key), image, tmp / names[key])
            if result.probability is not None:
                write_probability(result.probability, image, tmp / names["probability"])
            if "dicom_seg" in names:
                write_dicom_seg(
                    image,
                    result.lungs,
                    result.infection,
                    tmp / names["dicom_seg"],
                    report=report.to_dict(),
                )
                write_burden_sr(tmp / names["dicom_seg"], report.to_dict(), tmp / names["dicom_sr"])
            if overlay:
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
            (tmp / names["report"]).write_text(json.dumps(record, indent=1))
            mode = file_mode()  # temp files are created 0600; give outputs the usual mode
            for name in names.values():
                os.chmod(tmp / name, mode)
            with folder_lock(out_dir):  # one unit: see the module docstring
                (out_dir / names["report"]).unlink(missing_ok=True)
                for name in others:  # an earlier run's other files: not of this set
                    (out_dir / name).unlink(missing_ok=True)
                for name in names.values():
                    os.replace(tmp / name, out_dir / name)
    except OSError as err:  # full disk, permissions changed meanwhile, ...
        where = Path(err.filename) if err.filename else out_dir
        if where.parent.name.endswith(_TMP_SUFFIX):  # name the output, not its temporary
            where = out_dir / where.name
        raise DataError(f"{where}: cannot write the outputs ({err.strerror or err})") from None
    return {key: out_dir / name for key, name in names.items()}


def _every_name(case: str) -> set[str]:
    """Every file name a case may have in ``--out``, whatever its input's kind and formats."""
    kinds = (np.zeros((1, 1), np.uint8), np.zeros((1, 1, 1), np.uint8))
    return {
        name
        for a in kinds
        for name in output_names(
            case, Image(a, None, "probe", Path(case)), OUTPUT_FORMATS, probability=True
        ).values()
    }


def _overlay_slices(
    image: Image, result: SegmentResult
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """The :data:`OVERLAY_SLICES` canonical slices with the most infection (else most lung)."""
    views = [canonical_view(x, image) for x in (image.array, result.lungs, result.infection)]
    area = np.asarray(result.report.infection_area_per_slice, dtype=float)
    if not area.any():
        area = views[1].sum(axis=(1, 2), dtype=np.int64).astype(float)
    ids = sorted(int(k) for k in np.argsort(-area, kind="stable")[:OVERLAY_SLICES])
    # The panels are drawn ~240 px wide; matplotlib would turn a 4096 px slice into 1.5 GB of
    # float RGBA first. Every n-th pixel, for at most OVERLAY_MAX_SIDE px:
    n = -(-max(views[0].shape[1:]) // OVERLAY_MAX_SIDE)
    images01 = normalize_intensity(views[0][ids, ::n, ::n], result.report.intensity_rule)
    return images01, views[1][ids, ::n, ::n], views[2][ids, ::n, ::n], ids


def segment_file(
    seg: Segmenter,
    path: str | Path,
    out_dir: str | Path,
    *,
    progress: bool = False,
    formats: Sequence[str] | None = None,
    probability: bool = False,
) -> SegmentResult:
    """Segment one input with ``seg`` and write its outputs into ``out_dir`` (:func:`write_case`:
    ``<case>_lungs``, ``<case>_infection``, ``<case>_report.json``, ``<case>_overlay.png``, all
    written or none).

    Args:
        seg: the loaded model.
        path: a NIfTI file, a DICOM series folder, or a PNG/JPG picture.
        out_dir: output folder (created when the case is done).
        progress: show a tqdm bar on stderr.
        formats: mask formats (:data:`OUTPUT_FORMATS`); ``None``: :func:`case_formats`'s
            default (NIfTI, and a DICOM-SEG for a DICOM series).
        probability: also write ``<case>_infection_prob`` (:mod:`covseg.inference.probability`).

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
    result = seg.predict_image(image, progress, probability=probability)
    result.report = result.report.replace(case=case_name(path), input=str(path))
    result.paths = write_case(image, result, out_dir, formats=case_formats(formats, image))
    return result


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
