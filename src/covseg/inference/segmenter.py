"""Lung and infection segmentation of whole scans, arrays in and arrays out.

Pipeline, one batch of canonical axial slices at a time (peak memory: the input, the two uint8
output masks, and one batch; nothing per slice is kept in float):

1. intensities -> ``[0, 1]`` with the checkpoint's rule (``"auto"`` tells HU from 8-bit per scan),
   resized to the model's square input size;
2. probabilities of the lung and final infection heads (:class:`~covseg.inference.predict.Predictor`:
   batching, device, flip TTA, batch norm folded);
3. masks at the slice's own size by :func:`~covseg.inference.postprocess.postprocess` — the step
   that ``evaluate``, ``cv`` and training validation share;
4. the masks are written straight into arrays of the input's shape and voxel order through a view
   of the canonical orientation (:meth:`~covseg.inference.arrays.ScanSlices.zeros`).

What the segmenter is given (an array in one of three layouts, an
:class:`~covseg.data.io.Image`) becomes canonical slices with their geometry, and what it gives
back (:class:`~covseg.inference.arrays.SegmentResult`), in :mod:`covseg.inference.arrays`.

File outputs (masks, report JSON, overlay) are :mod:`covseg.inference.outputs`' job: it calls the
segmenter, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from covseg.checkpoint import load_checkpoint
from covseg.config import FRAMINGS
from covseg.data.io import Image
from covseg.data.preprocess import INTENSITY_RULES, detect_intensity_rule, normalize_intensity
from covseg.errors import CheckpointError, DataError
from covseg.inference.arrays import (
    ScanSlices,
    SegmentResult,
    array_slices,
    check_slices,
    image_slices,
)
from covseg.inference.burden import BurdenEstimate, BurdenReport, burden_report
from covseg.inference.calibration import calibrate
from covseg.inference.framing import framed_probabilities
from covseg.inference.postprocess import Masks, estimate_counts, masks_from_probabilities
from covseg.inference.predict import Predictor, Probabilities
from covseg.inference.probability import quantize_probability
from covseg.meta import CheckpointMeta

__all__ = ["SegmentResult", "Segmenter"]

#: Output pixels post-processed per batch: the batch shrinks for large slices, so the float
#: probabilities at full resolution stay within ~100 MB whatever the slice size.
PIXELS_PER_BATCH = 8 * 512 * 512


class Segmenter:
    """A loaded model with its pre- and post-processing, ready to segment scans.

    Args:
        model: a network returning :class:`~covseg.models.SegOutput`.
        meta: its checkpoint metadata (input size, intensity rule, post-processing, sha256).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        batch_size: slices per forward pass (peak memory grows with it, not with the scan).
        tta: average with the predictions of the left-right flipped slices.
        backend: how the network runs (:data:`~covseg.inference.predict.BACKENDS`).
        intensity: the intensity rule for every input (``"auto"``: told per scan, or one of
            :data:`~covseg.data.preprocess.INTENSITY_RULES`); ``None``: the checkpoint's.
        framing: ``"full"`` or ``"lungs"`` (:mod:`covseg.inference.framing`); ``None``: the
            checkpoint's.

    Raises:
        CovsegError: ``device="cuda"`` without CUDA, ``batch_size < 1``, a bad backend,
            intensity rule or framing.
    """

    def __init__(
        self,
        model: nn.Module,
        meta: CheckpointMeta,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 8,
        tta: bool = False,
        backend: str = "torch",
        intensity: str | None = None,
        framing: str | None = None,
    ) -> None:
        if intensity is not None and intensity not in ("auto", *INTENSITY_RULES):
            raise DataError(
                f"unknown intensity rule {intensity!r} (auto, {', '.join(INTENSITY_RULES)})"
            )
        if framing is not None and framing not in FRAMINGS:
            raise DataError(f"unknown framing {framing!r} ({', '.join(FRAMINGS)})")
        self.meta = meta
        self.predictor = Predictor(
            model,
            device=device,
            batch_size=batch_size,
            tta=tta,
            backend=backend,
            size=meta.preprocessing.size,
        )
        self.post = meta.postprocessing
        self.calibration = meta.calibration
        self.size = meta.preprocessing.size
        self.intensity = intensity or meta.preprocessing.intensity
        self.framing = framing or meta.preprocessing.framing

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 8,
        tta: bool = False,
        backend: str = "torch",
        intensity: str | None = None,
        framing: str | None = None,
    ) -> Segmenter:
        """Load a checkpoint (``"pretrained"`` or ``.safetensors`` + ``.json``), its hash and
        format checked.

        Raises:
            CheckpointError: missing files, a hash mismatch, a newer format, a bad field.
        """
        model, meta = load_checkpoint(path)
        return cls(
            model,
            meta,
            device=device,
            batch_size=batch_size,
            tta=tta,
            backend=backend,
            intensity=intensity,
            framing=framing,
        )

    @classmethod
    def from_pretrained(
        cls,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 8,
        tta: bool = False,
        backend: str = "torch",
    ) -> Segmenter:
        """The model shipped with covseg (``covseg/pretrained/model.safetensors``).

        Raises:
            CheckpointError: no pretrained model in this install, or it fails its checks.
        """
        return cls.from_checkpoint(
            "pretrained", device=device, batch_size=batch_size, tta=tta, backend=backend
        )

    @property
    def model_id(self) -> str:
        """sha256 of the weights file."""
        return self.meta.model_id

    @property
    def tta(self) -> bool:
        return self.predictor.tta

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def require_lung_head(self) -> None:
        """Raises :class:`~covseg.errors.CheckpointError` for a model without a lung head (the
        single-task U-Net baseline): a burden report needs lungs."""
        if not self.predictor.has_lung_head:
            raise CheckpointError("segment needs a bifurcated model (this one has no lung head)")

    # ------------------------------------------------------------------------------- core
    def intensity_rule(self, slices: np.ndarray, path: str | Path) -> str:
        """Check ``(N, H, W)`` slices; the intensity rule applied to them (the checkpoint's, or
        told from the values).

        Raises:
            DataError: slices larger than :data:`~covseg.data.io.MAX_SIDE`, NaN/inf values
                (:func:`~covseg.inference.arrays.check_slices`), or a range that fits neither
                rule.
        """
        check_slices(slices, path)
        if self.intensity != "auto":
            return self.intensity
        try:
            return detect_intensity_rule(slices)
        except DataError as err:
            raise DataError(f"{path}: {err}") from None

    def probabilities(
        self,
        slices: np.ndarray,
        *,
        rule: str,
        progress: str | None = None,
        check: Callable[[], None] | None = None,
    ) -> Iterator[tuple[int, Probabilities]]:
        """Steps 1-2 of the module docstring, batch by batch: ``(first slice index, head
        probabilities at the slices' own (H, W))`` for raw canonical ``(N, H, W)`` slices.

        Args:
            slices: intensities as read (HU or 8-bit).
            rule: intensity rule (:meth:`intensity_rule`).
            progress: a tqdm bar on stderr with this label.
            check: called before each batch (it may raise to stop).
        """
        from tqdm.auto import tqdm

        n, h, w = slices.shape
        step = self.batch_step(h, w)
        with tqdm(
            total=n, desc=progress, unit="slice", disable=progress is None, leave=False
        ) as bar:
            for i in range(0, n, step):
                if check is not None:
                    check()
                raw = np.ascontiguousarray(slices[i : i + step])
                yield i, self.framed(normalize_intensity(raw, rule))
                bar.update(len(raw))

    def framed(self, images01: np.ndarray) -> Probabilities:
        """Head probabilities of normalised ``(N, H, W)`` slices at their own ``(H, W)``: resized
        to the network's input, with the segmenter's framing
        (:func:`~covseg.inference.framing.framed_probabilities`), the infection head's
        calibrated by the checkpoint's :class:`~covseg.config.Calibration`."""
        lung, inf = framed_probabilities(
            self.predictor, np.asarray(images01, dtype=np.float32), self.size, self.framing
        )
        cal = self.calibration
        return Probabilities(lung, calibrate(inf, cal.infection_slope, cal.infection_offset))

    def segment_slices(
        self,
        slices: np.ndarray,
        out_lung: np.ndarray,
        out_inf: np.ndarray,
        *,
        rule: str,
        progress: str | None = None,
        check: Callable[[], None] | None = None,
        out_prob: np.ndarray | None = None,
    ) -> BurdenEstimate | None:
        """Fill ``out_lung``/``out_inf`` (``(N, H, W)``, views allowed) from raw canonical
        ``(N, H, W)`` slices (steps 1-3 of the module docstring); ``out_lung`` gets zeros for a
        model without a lung head. ``check`` is called before each batch: what it raises stops
        the work there (a server's shutdown or time budget). ``out_prob``, when given, gets the
        uint8 calibrated infection probability the threshold is applied to
        (:func:`~covseg.inference.probability.quantize_probability`).

        Returns:
            With a calibrated checkpoint, the expected infected voxels (calibrated infection
            probabilities summed over the predicted lungs) and the interval's voxel counts
            (:class:`~covseg.config.Calibration`); else ``None``.
        """
        expected, bounds = 0.0, [0] * len(self.calibration.interval_thresholds or ())
        for i, probs in self.probabilities(slices, rule=rule, progress=progress, check=check):
            prob = None if out_prob is None else out_prob[i:]
            e, counts = self.write_batch(probs, out_lung[i:], out_inf[i:], prob)
            expected, bounds = expected + e, [a + b for a, b in zip(bounds, counts, strict=True)]
        return self.estimate(expected, bounds)

    def batch_step(self, height: int, width: int) -> int:
        """Slices of ``height x width`` per forward pass (fewer for large slices, so a batch's
        float probabilities stay within :data:`PIXELS_PER_BATCH`)."""
        return max(1, min(self.predictor.batch_size, PIXELS_PER_BATCH // (height * width)))

    def write_batch(
        self,
        probs: Probabilities,
        out_lung: np.ndarray,
        out_inf: np.ndarray,
        out_prob: np.ndarray | None = None,
    ) -> tuple[float, list[int]]:
        """Write one batch's masks into the first ``len(probs.infection)`` slices of
        ``out_lung``/``out_inf`` (and its uint8 calibrated probability into ``out_prob``'s).

        Returns:
            The batch's expected infected voxels and interval counts (zeros for an
            uncalibrated checkpoint), to be summed over batches and given to :meth:`estimate`.
        """
        masks = masks_from_probabilities(*probs, self.post, self.size)
        k = len(masks.infection)
        out_lung[:k] = 0 if masks.lung is None else masks.lung
        out_inf[:k] = masks.infection
        if out_prob is not None:
            out_prob[:k] = quantize_probability(probs.infection, self.post.threshold)
        thresholds = tuple(self.calibration.interval_thresholds or ())
        if not self.meta.calibrated:
            return 0.0, [0] * len(thresholds)
        return estimate_counts(probs, self.post, thresholds, self.size)

    def estimate(self, expected: float, counts: Sequence[int]) -> BurdenEstimate | None:
        """The calibrated burden estimate from :meth:`write_batch`'s sums (``None`` for an
        uncalibrated checkpoint)."""
        if not self.meta.calibrated:
            return None
        cal = self.calibration
        return BurdenEstimate(expected, (counts[1], counts[0]) if counts else None, cal)

    def segment_prepared(self, images01: np.ndarray) -> Masks:
        """Masks of slices already normalised (a prepared dataset's ``(N, S', S')`` images in
        ``[0, 1]``), through the same resizing, network and post-processing as
        :meth:`segment_slices`; masks at ``S' x S'``."""
        if images01.ndim != 3:
            raise DataError(f"prepared slices must be (N, S, S), got {images01.shape}")
        return masks_from_probabilities(*self.framed(images01), self.post, self.size)

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
            CheckpointError: a model without a lung head.
        """
        return self._predict(array_slices(np.asarray(volume), spacing, affine), progress)

    def predict_image(
        self,
        image: Image,
        progress: bool = False,
        check: Callable[[], None] | None = None,
        probability: bool = False,
    ) -> SegmentResult:
        """Segment an :class:`~covseg.data.io.Image` (what :func:`~covseg.data.io.read_image`
        returns); masks come back in ``image.array``'s shape and voxel order. ``check``: as
        :meth:`segment_slices`'; ``probability``: also the uint8 calibrated infection
        probability (:attr:`SegmentResult.probability`).

        Raises:
            DataError: NaN/inf values, an intensity range that fits neither rule, a degenerate
                affine.
            CheckpointError: a model without a lung head.
        """
        return self._predict(image_slices(image), progress, check, probability)

    def _predict(
        self,
        scan: ScanSlices,
        progress: bool,
        check: Callable[[], None] | None = None,
        probability: bool = False,
    ) -> SegmentResult:
        self.require_lung_head()
        rule = self.intensity_rule(scan.slices, scan.path)
        outs, views = zip(*(scan.zeros() for _ in range(3 if probability else 2)), strict=True)
        estimate = self.segment_slices(
            scan.slices,
            *views[:2],
            rule=rule,
            progress=scan.path.name if progress else None,
            check=check,
            out_prob=views[2] if probability else None,
        )
        report = self.report(*views[:2], scan.shape, rule, scan.mm, scan.voxel_ml, estimate)
        return SegmentResult(*outs[:2], report, probability=outs[2] if probability else None)

    def report(
        self,
        lung_view: np.ndarray,
        inf_view: np.ndarray,
        shape: tuple[int, ...],
        rule: str,
        mm: tuple[float, float, float | None] | None,
        voxel_ml: float | None,
        estimate: BurdenEstimate | None,
    ) -> BurdenReport:
        """The burden report of canonical ``(N, H, W)`` masks made by this segmenter (its
        post-processing, TTA, framing, input size and model id recorded)."""
        return burden_report(
            lung_view,
            inf_view,
            spacing_mm=mm,
            voxel_ml=voxel_ml,
            shape=shape,
            intensity_rule=rule,
            postprocessing=self.post,
            tta=self.tta,
            framing=self.framing,
            model_size=self.size,
            model_id=self.model_id,
            estimate=estimate,
        )
