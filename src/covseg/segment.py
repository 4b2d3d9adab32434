"""Lung and infection segmentation of whole scans, with an infection-burden report.

The core works on arrays (:meth:`Segmenter.predict_volume`, :meth:`Segmenter.predict_image`);
:meth:`Segmenter.predict_file` and :func:`segment_files` are the file edges behind
``covseg segment``.

Pipeline, one batch of canonical axial slices at a time (peak memory: the input, the two uint8
output masks, and one batch; nothing per slice is kept in float):

1. intensities -> ``[0, 1]`` with the checkpoint's rule (``"auto"`` tells HU from 8-bit per scan),
   resized to the model's square input size;
2. lung and final-infection probabilities (``tta``: averaged with the left-right flipped slices),
   resized back to the slice's own size (bilinear on probabilities, then thresholded);
3. lungs = lung probability >= 0.5; infection = infection probability >= the checkpoint's
   threshold, **restricted to the predicted lungs dilated by** :data:`LUNG_MARGIN_PX` pixels (at
   the model's input size; dense consolidation at the pleura is often missed by the lung head),
   then components smaller than the checkpoint's ``min_component`` (scaled from the model's size to
   the slice's size) are removed, slice by slice; the lung mask is then united with the infection,
   so infection always lies inside the lungs and the percentages stay <= 100;
4. the masks are written straight into arrays of the input's shape and voxel order through a view
   of the canonical orientation (the same mapping as
   :func:`~covseg.data.preprocess.slices_to_volume`).

Left and right lung: canonical columns run patient right -> left. The midline is the mean column
of all lung pixels of the scan; each 2-D lung component goes to the side holding most of its
pixels, and a component with at least a quarter of its pixels on each side (lungs touching at the
anterior junction) is cut at the midline.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from scipy import ndimage as ndi
from torch import nn

from covseg._version import __version__
from covseg.data.io import Image, find_inputs, read_image, strip_suffix, write_mask
from covseg.data.preprocess import (
    canonical_spacing,
    detect_intensity_rule,
    normalize_intensity,
    resize_back,
    resize_slices,
)
from covseg.errors import CheckpointError, CovsegError, DataError
from covseg.models.blocks import fold_batchnorm
from covseg.threshold import remove_small_components

__all__ = ["LUNG_MARGIN_PX", "LUNG_THRESHOLD", "SegmentResult", "Segmenter", "segment_files"]

log = logging.getLogger(__name__)

#: Probability threshold of the lung head.
LUNG_THRESHOLD = 0.5
#: Infection is kept within the predicted lungs dilated by this many pixels (model input size).
LUNG_MARGIN_PX = 2
#: Number of slices shown in the overlay figure.
OVERLAY_SLICES = 3

_DISPLAY = axcodes2ornt(("P", "L", "S"))


@dataclass
class SegmentResult:
    """Masks and report of one scan.

    Attributes:
        lungs: uint8 ``{0, 1}`` lungs, the input's shape and voxel order (includes infection).
        infection: uint8 ``{0, 1}`` infection, the input's shape and voxel order.
        report: the infection-burden report (JSON-ready, see :meth:`Segmenter.predict_image`).
        paths: the files written by :meth:`Segmenter.predict_file` (empty for arrays).
    """

    lungs: np.ndarray
    infection: np.ndarray
    report: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)


def _canonical_view(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` canonical slices of an ``(X, Y, Z)`` array as a *view* (no copy), so the
    input is never duplicated and masks can be written straight into the output volume."""
    t = ornt_transform(io_orientation(affine), _DISPLAY)
    view = apply_orientation(array, t).transpose(2, 0, 1)
    if not np.shares_memory(view, array):  # pragma: no cover - apply_orientation only slices
        raise RuntimeError("canonical view is not a view")
    return view


class Segmenter:
    """A loaded model with its post-processing, ready to segment scans.

    Args:
        model: a network returning :class:`~covseg.models.SegOutput` with a lung head.
        meta: the checkpoint's JSON (``threshold``, ``min_component``, ``preprocessing.size``,
            ``preprocessing.intensity``, ``sha256``).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        batch_size: slices per forward pass (peak memory grows with it, not with the scan).
        tta: average with the predictions of the left-right flipped slices.

    Raises:
        CheckpointError: the model has no lung head (the single-task U-Net baseline).
        CovsegError: ``device="cuda"`` without CUDA, or ``batch_size < 1``.
    """

    def __init__(
        self,
        model: nn.Module,
        meta: dict[str, Any],
        *,
        device: str | torch.device = "auto",
        batch_size: int = 8,
        tta: bool = False,
    ) -> None:
        from covseg.inference import resolve_device

        if getattr(getattr(model, "cfg", None), "model", "bifurcated") != "bifurcated":
            raise CheckpointError("segment needs a bifurcated model (this one has no lung head)")
        self.device = resolve_device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise CovsegError("--device cuda: no CUDA device is available")
        if batch_size < 1:
            raise CovsegError(f"--batch-size must be at least 1, got {batch_size}")
        # An inference copy (the caller's model is left as it is), batch norm folded into the
        # convolutions: ~10 % of a CPU forward pass at full resolution (BENCHMARKS.md).
        self.model = fold_batchnorm(copy.deepcopy(model).eval()).to(
            self.device, memory_format=torch.channels_last
        )
        self.meta = meta
        self.batch_size = int(batch_size)
        self.tta = bool(tta)
        pre = meta.get("preprocessing") or {}
        self.size = int(pre.get("size", 256))
        self.intensity = str(pre.get("intensity", "auto"))
        self.threshold = float(meta.get("threshold", 0.5))
        self.min_component = int(meta.get("min_component", 0))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 8,
        tta: bool = False,
    ) -> Segmenter:
        """Load a checkpoint (``.safetensors`` + ``.json``), its hash and format checked.

        Raises:
            CheckpointError: missing files, a hash mismatch, a newer format, a model without a
                lung head.
        """
        from covseg.checkpoint import load_checkpoint

        model, meta = load_checkpoint(path)
        return cls(model, meta, device=device, batch_size=batch_size, tta=tta)

    @classmethod
    def from_pretrained(
        cls, *, device: str | torch.device = "auto", batch_size: int = 8, tta: bool = False
    ) -> Segmenter:
        """The model shipped with covseg (``covseg/pretrained/model.safetensors``).

        Raises:
            CheckpointError: no pretrained model in this install, or it fails its checks.
        """
        from covseg.checkpoint import pretrained_path

        return cls.from_checkpoint(pretrained_path(), device=device, batch_size=batch_size, tta=tta)

    @property
    def model_id(self) -> str:
        """sha256 of the weights file."""
        return str(self.meta.get("sha256", "unknown"))

    # ------------------------------------------------------------------------------ arrays
    def predict_volume(
        self,
        volume: np.ndarray,
        *,
        spacing: Sequence[float] | None = None,
        affine: np.ndarray | None = None,
        progress: bool = False,
    ) -> SegmentResult:
        """Segment an array (HU or 8-bit intensities); nothing touches the disk.

        Three layouts are accepted:

        - ``(X, Y, Z)`` voxels with a 4x4 ``affine`` (voxel -> RAS mm, as nibabel gives them):
          any orientation; ``spacing`` must be ``None`` (it comes from the affine).
        - ``(N, H, W)`` axial slices already in the canonical display orientation (rows anterior
          -> posterior, columns patient right -> left, slices inferior -> superior), no affine;
          ``spacing`` is ``(slice_mm, row_mm, col_mm)`` in the array's axis order, or ``None``
          (volumes are then reported as ``null`` and areas in pixels).
        - ``(H, W)``: one displayed slice; ``spacing`` is ``(row_mm, col_mm)`` or ``None``.

        Args:
            volume: the array (any real dtype, finite).
            spacing: millimetres per array axis (see above).
            affine: voxel -> world for ``(X, Y, Z)`` arrays.
            progress: show a tqdm bar on stderr.

        Returns:
            :class:`SegmentResult` with masks of ``volume``'s shape.

        Raises:
            DataError: wrong number of dimensions, NaN/inf, an intensity range that fits neither
                rule, a spacing or affine that does not fit.
        """
        volume = np.asarray(volume)
        if volume.ndim not in (2, 3) or volume.size == 0:
            raise DataError(f"<array>: expected a 2-D or 3-D array, got shape {volume.shape}")
        if affine is not None:
            affine = np.asarray(affine, dtype=np.float64)
            if volume.ndim != 3 or affine.shape != (4, 4) or spacing is not None:
                raise DataError("<array>: an affine needs a 3-D (X, Y, Z) array and no spacing")
            if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
                raise DataError("<array>: invalid affine (singular or non-finite)")
            return self.predict_image(Image(volume, affine, "array", Path("<array>")), progress)
        if spacing is not None and len(spacing) != volume.ndim:
            raise DataError(f"<array>: spacing {tuple(spacing)} does not fit shape {volume.shape}")
        lungs = np.zeros(volume.shape, dtype=np.uint8)
        infection = np.zeros(volume.shape, dtype=np.uint8)
        if volume.ndim == 2:
            views = volume[None], lungs[None], infection[None]
            mm = None if spacing is None else (float(spacing[0]), float(spacing[1]), None)
        else:
            views = volume, lungs, infection
            mm = None if spacing is None else tuple(float(s) for s in (*spacing[1:], spacing[0]))
        voxel_ml = None if mm is None or mm[2] is None else mm[0] * mm[1] * mm[2] / 1000.0
        report = self._segment(*views, Path("<array>"), mm, voxel_ml, progress)
        report["shape"] = list(volume.shape)
        return SegmentResult(lungs, infection, report)

    def predict_image(self, image: Image, progress: bool = False) -> SegmentResult:
        """Segment an :class:`~covseg.data.io.Image` (what :func:`~covseg.data.io.read_image`
        returns); masks come back in ``image.array``'s shape and voxel order.

        The report (JSON-ready) holds: ``shape``, ``spacing_mm`` (canonical row, column, slice;
        ``null`` for pictures), ``voxel_volume_ml``, ``lung_found``, ``lung_voxels``,
        ``infection_voxels``, ``lung_volume_ml``, ``infection_volume_ml``, ``infection_percent``
        (of the lungs; ``null`` without lungs), the same under ``left`` and ``right``,
        ``infection_area_per_slice`` (canonical slices, inferior -> superior) with its
        ``area_unit`` (``"mm2"`` or ``"px"``), ``intensity_rule``, ``threshold``,
        ``min_component`` (pixels at the model's size), ``lung_margin_px``, ``tta``,
        ``model_size``, ``model_id`` (weights sha256) and ``covseg_version``. Volumes are
        ``null`` where the voxel size is unknown (2-D pictures).

        Raises:
            DataError: NaN/inf values, or an intensity range that fits neither rule.
        """
        a = image.array
        lungs = np.zeros(a.shape, dtype=np.uint8)
        infection = np.zeros(a.shape, dtype=np.uint8)
        if a.ndim == 2:
            views = a[None], lungs[None], infection[None]
            mm, voxel_ml = None, None
        elif a.ndim == 3 and image.affine is not None:
            views = tuple(_canonical_view(x, image.affine) for x in (a, lungs, infection))
            mm = canonical_spacing(image)
            voxel_ml = abs(float(np.linalg.det(image.affine[:3, :3]))) / 1000.0
        else:
            raise DataError(f"{image.path}: expected a 2-D picture or a 3-D volume with an affine")
        report = self._segment(*views, image.path, mm, voxel_ml, progress)
        report["shape"] = list(a.shape)
        return SegmentResult(lungs, infection, report)

    # ------------------------------------------------------------------------------- core
    def _segment(
        self,
        slices: np.ndarray,
        out_lung: np.ndarray,
        out_inf: np.ndarray,
        path: Path,
        mm: tuple[float, float, float | None] | None,
        voxel_ml: float | None,
        progress: bool,
    ) -> dict[str, Any]:
        """Fill ``out_lung``/``out_inf`` (``(N, H, W)`` views) from ``slices``; the report."""
        from tqdm.auto import tqdm

        # min/max propagate NaN and show inf without a full-size temporary (np.isfinite).
        if (
            np.issubdtype(slices.dtype, np.floating)
            and not np.isfinite([np.min(slices), np.max(slices)]).all()
        ):
            raise DataError(f"{path}: NaN/inf values")
        rule = self.intensity
        if rule == "auto":
            try:
                rule = detect_intensity_rule(slices)
            except DataError as err:
                raise DataError(f"{path}: {err}") from None
        n, h, w = slices.shape
        scale = h * w / self.size**2
        min_px = round(self.min_component * scale)
        r = max(1, round(LUNG_MARGIN_PX * max(h, w) / self.size))
        yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
        margin = (yy**2 + xx**2 <= r * r)[None]
        bar = tqdm(total=n, desc=path.name, unit="slice", disable=not progress, leave=False)
        try:
            for i in range(0, n, self.batch_size):
                raw = np.ascontiguousarray(slices[i : i + self.batch_size])
                x = resize_slices(normalize_intensity(raw, rule), self.size, mask=False)
                lung_p, inf_p = self._probabilities(x)
                lung = resize_back(lung_p, (h, w), mask=False) >= LUNG_THRESHOLD
                inf = resize_back(inf_p, (h, w), mask=False) >= self.threshold
                inf &= ndi.binary_dilation(lung, structure=margin)
                inf = remove_small_components(inf, min_px)
                out_lung[i : i + len(raw)] = lung | inf
                out_inf[i : i + len(raw)] = inf
                bar.update(len(raw))
        finally:
            bar.close()
        return self._report(out_lung, out_inf, mm, voxel_ml, rule)

    def _probabilities(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lung and final-infection probabilities ``(B, S, S)`` of ``(B, S, S)`` slices."""
        with torch.inference_mode():
            batch = torch.from_numpy(x)[:, None].to(self.device)
            out = self.model(batch)
            lung, inf = torch.sigmoid(out.lung.float()), torch.sigmoid(out.infection.float())
            if self.tta:
                flip = self.model(torch.flip(batch, dims=[-1]))
                lung = 0.5 * (lung + torch.flip(torch.sigmoid(flip.lung.float()), dims=[-1]))
                inf = 0.5 * (inf + torch.flip(torch.sigmoid(flip.infection.float()), dims=[-1]))
            return lung[:, 0].cpu().numpy(), inf[:, 0].cpu().numpy()

    def _report(
        self,
        lungs: np.ndarray,
        infection: np.ndarray,
        mm: tuple[float, float, float | None] | None,
        voxel_ml: float | None,
        rule: str,
    ) -> dict[str, Any]:
        lung_per_slice = lungs.sum(axis=(1, 2), dtype=np.int64)
        inf_per_slice = infection.sum(axis=(1, 2), dtype=np.int64)
        sides = _left_right_counts(lungs, infection)
        pixel_mm2 = None if mm is None else mm[0] * mm[1]
        areas = inf_per_slice if pixel_mm2 is None else inf_per_slice * pixel_mm2
        total = _burden(int(lung_per_slice.sum()), int(inf_per_slice.sum()), voxel_ml)
        return {
            "shape": None,  # the input's own shape, filled by the caller
            "spacing_mm": None if mm is None or mm[2] is None else [round(v, 6) for v in mm],
            "voxel_volume_ml": voxel_ml,
            "lung_found": total["lung_voxels"] > 0,
            **total,
            "left": _burden(*sides["left"], voxel_ml),
            "right": _burden(*sides["right"], voxel_ml),
            "infection_area_per_slice": [round(float(a), 4) for a in areas],
            "area_unit": "px" if pixel_mm2 is None else "mm2",
            "slice_order": "inferior_to_superior",
            "intensity_rule": rule,
            "threshold": self.threshold,
            "lung_threshold": LUNG_THRESHOLD,
            "min_component": self.min_component,
            "lung_margin_px": LUNG_MARGIN_PX,
            "tta": self.tta,
            "model_size": self.size,
            "model_id": self.model_id,
            "covseg_version": __version__,
        }

    # ------------------------------------------------------------------------------- files
    def predict_file(
        self, path: str | Path, out_dir: str | Path, *, progress: bool = False
    ) -> SegmentResult:
        """Segment one input and write its outputs into ``out_dir``.

        Files (``<case>`` is the input's name without its suffix): ``<case>_lungs.nii.gz`` and
        ``<case>_infection.nii.gz`` (uint8, the input's shape, affine and orientation; ``.png``
        for picture inputs), ``<case>_report.json`` and ``<case>_overlay.png``. They are written
        into a private temporary folder inside ``out_dir`` and renamed into place only when the
        whole case is done, so a failure leaves nothing partial and concurrent runs writing into
        the same folder never see each other's half-written files.

        Args:
            path: a NIfTI file, a DICOM series folder, or a PNG/JPG picture.
            out_dir: output folder (created when the case is done).
            progress: show a tqdm bar on stderr.

        Returns:
            The :class:`SegmentResult` with ``paths`` filled (``lungs``, ``infection``,
            ``overlay``, ``report``); ``report`` also names the ``input``.

        Raises:
            DataError: an unreadable or unusable input.
        """
        path, out_dir = Path(path), Path(out_dir)
        image = read_image(path)
        result = self.predict_image(image, progress)
        result.report = {"case": case_name(path), "input": str(path), **result.report}
        result.paths = _write_case(image, result, self, out_dir)
        return result


def case_name(path: str | Path) -> str:
    """The output prefix of an input: its name without the image suffix."""
    return strip_suffix(Path(path).name)


def _burden(lung: int, inf: int, voxel_ml: float | None) -> dict[str, Any]:
    ml = (lambda v: None) if voxel_ml is None else (lambda v: round(v * voxel_ml, 6))
    return {
        "lung_voxels": lung,
        "infection_voxels": inf,
        "lung_volume_ml": ml(lung),
        "infection_volume_ml": ml(inf),
        "infection_percent": round(100.0 * inf / lung, 4) if lung > 0 else None,
    }


def _left_right_counts(lungs: np.ndarray, infection: np.ndarray) -> dict[str, tuple[int, int]]:
    """``{"left": (lung, infection), "right": (...)}`` pixel counts (see the module docstring)."""
    n, h, w = lungs.shape
    column_mass = lungs.sum(axis=(0, 1), dtype=np.int64)
    counts = {"left": [0, 0], "right": [0, 0]}
    if column_mass.sum() == 0:
        return {k: (0, 0) for k in counts}
    cols = np.arange(w)
    midline = float((column_mass * cols).sum() / column_mass.sum())
    left_col = np.broadcast_to(cols >= midline, (h, w))  # columns run patient right -> left
    eight = np.ones((3, 3), dtype=bool)
    for k in range(n):
        lung = lungs[k].astype(bool)
        if not lung.any():
            continue
        labels, m = ndi.label(lung, structure=eight)
        size = np.bincount(labels.ravel(), minlength=m + 1)
        on_left = np.bincount(labels.ravel(), weights=left_col.ravel(), minlength=m + 1)
        frac = on_left / np.maximum(size, 1)
        split = np.minimum(frac, 1 - frac) >= 0.25
        whole_left = frac >= 0.5
        left = np.where(split[labels], left_col, whole_left[labels]) & lung
        inf = infection[k].astype(bool)
        counts["left"][0] += int(left.sum())
        counts["right"][0] += int((lung & ~left).sum())
        counts["left"][1] += int((inf & left).sum())
        counts["right"][1] += int((inf & ~left).sum())
    return {k: (v[0], v[1]) for k, v in counts.items()}


def _write_case(image: Image, result: SegmentResult, seg: Segmenter, out_dir: Path) -> dict:
    from covseg.overlay import plot_segmentation

    case = result.report["case"]
    ext = ".png" if image.array.ndim == 2 else ".nii.gz"
    names = {
        "lungs": f"{case}_lungs{ext}",
        "infection": f"{case}_infection{ext}",
        "overlay": f"{case}_overlay.png",
        "report": f"{case}_report.json",  # last: its presence marks a complete case
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{case}.", suffix=".partial", dir=out_dir))
    try:
        write_mask(result.lungs, image, tmp / names["lungs"])
        write_mask(result.infection, image, tmp / names["infection"])
        images01, lungs, infs, ids = _overlay_slices(image, result, seg)
        unit = "mm²" if result.report["area_unit"] == "mm2" else "px"
        plot_segmentation(
            images01,
            lungs,
            infs,
            result.report["infection_area_per_slice"],
            tmp / names["overlay"],
            slice_ids=ids,
            area_unit=unit,
        )
        (tmp / names["report"]).write_text(json.dumps(result.report, indent=1))
        mode = 0o666 & ~_umask()  # temp files are created 0600; give outputs the usual mode
        for name in names.values():
            os.chmod(tmp / name, mode)
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {key: out_dir / name for key, name in names.items()}


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would, for every thread);
    ``0o077`` (owner only) where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o077


def _overlay_slices(
    image: Image, result: SegmentResult, seg: Segmenter
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """The :data:`OVERLAY_SLICES` canonical slices with the most infection (else most lung)."""
    if image.array.ndim == 2:
        views = [x[None] for x in (image.array, result.lungs, result.infection)]
    else:
        views = [
            _canonical_view(x, image.affine) for x in (image.array, result.lungs, result.infection)
        ]
    area = np.asarray(result.report["infection_area_per_slice"], dtype=float)
    if not area.any():
        area = views[1].sum(axis=(1, 2), dtype=np.int64).astype(float)
    ids = sorted(int(k) for k in np.argsort(-area, kind="stable")[:OVERLAY_SLICES])
    rule = result.report["intensity_rule"]
    images01 = normalize_intensity(views[0][ids], rule)
    return images01, views[1][ids], views[2][ids], ids


# ---------------------------------------------------------------------------------- CLI edge
def segment_files(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    checkpoint: str | Path = "pretrained",
    tta: bool = False,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """``covseg segment``: every input (files, DICOM folders, folders of them) into ``out_dir``.

    The checkpoint and the list of inputs are checked before any case runs; cases then run one
    after the other, each written completely or not at all (see :meth:`Segmenter.predict_file`).
    The first bad case stops the run (the cases before it stay, complete).

    Args:
        inputs: paths given on the command line.
        out_dir: output folder.
        checkpoint: a checkpoint path, or ``"pretrained"`` for the shipped model.
        tta: flip test-time augmentation.
        batch_size: slices per forward pass.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: one tqdm bar per case on stderr.

    Returns:
        The reports, in input order.

    Raises:
        DataError: a missing input, a folder with nothing readable, two inputs with one case
            name, or a bad case.
        CheckpointError: the checkpoint fails its checks.
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
    kwargs = {"device": device, "batch_size": batch_size, "tta": tta}
    if str(checkpoint) == "pretrained":
        seg = Segmenter.from_pretrained(**kwargs)
    else:
        seg = Segmenter.from_checkpoint(checkpoint, **kwargs)
    reports = []
    for p in paths:
        result = seg.predict_file(p, out_dir, progress=progress)
        log.debug("%s -> %s", p, result.paths["report"])
        reports.append(result.report)
    return reports


def format_summary(reports: Sequence[dict[str, Any]]) -> str:
    """A text table: case, lung mL, infection mL, percent infected (``-`` where unknown)."""

    def cell(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    rows = [("case", "lung mL", "infection mL", "infected %")]
    for r in reports:
        lung = r["lung_volume_ml"] if r["voxel_volume_ml"] is not None else None
        inf = r["infection_volume_ml"] if r["voxel_volume_ml"] is not None else None
        rows.append(
            (
                r["case"],
                cell(lung, ".1f"),
                cell(inf, ".1f"),
                cell(r["infection_percent"], ".2f") if r["lung_found"] else "no lung",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row))
        for row in rows
    )
