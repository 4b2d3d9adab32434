"""The steps around the network, stored in every checkpoint: :class:`Preprocessing` (slices ->
network input), :class:`Calibration` (network probabilities -> calibrated probabilities and the
burden's interval) and :class:`PostProcessing` (probabilities -> masks)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from covseg.config.choices import FRAMINGS, INTENSITY_RULES

__all__ = ["Calibration", "PostProcessing", "Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """How slices are turned into network input (stored in every checkpoint).

    Args:
        size: side ``S`` of the square network input; slices are resized to ``S x S``.
        intensity: ``"auto"`` (HU or 8-bit, told per scan), ``"hu"`` or ``"uint8"``
            (:func:`covseg.data.preprocess.normalize_intensity`).
        rotate: quarter turns (counter-clockwise) the training pictures were rotated by in
            ``covseg prepare`` (``--rotate``); ``evaluate`` applies it to the originals too.
        layout: the dataset layout the model was trained on (provenance only).
        params: the other parameters ``covseg prepare`` recorded (provenance only).
        framing: ``"full"`` (the network sees each whole slice) or ``"lungs"`` (it sees the
            crop to the lungs a scout look found; :mod:`covseg.inference.framing`).
    """

    size: int = 256
    intensity: Literal["auto", "hu", "uint8"] = "auto"
    rotate: int = 0
    layout: str | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    framing: Literal["full", "lungs"] = "full"

    def __post_init__(self) -> None:
        if self.framing not in FRAMINGS:
            raise ValueError(
                f"preprocessing.framing must be one of {', '.join(FRAMINGS)}, got {self.framing!r}"
            )
        if not _is_int(self.size) or not 16 <= self.size <= 4096:
            raise ValueError(
                f"preprocessing.size must be an integer in 16..4096, got {self.size!r}"
            )
        if self.intensity not in ("auto", *INTENSITY_RULES):
            raise ValueError(f"preprocessing.intensity: unknown {self.intensity!r}")
        if not _is_int(self.rotate):
            raise ValueError(f"preprocessing.rotate must be an integer, got {self.rotate!r}")
        if self.layout is not None and not isinstance(self.layout, str):
            raise ValueError(f"preprocessing.layout must be a string, got {self.layout!r}")

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Preprocessing:
        """From the flat record of a checkpoint or a prepared manifest's ``params``."""
        own = ("size", "intensity", "rotate", "layout", "framing")
        rotate = record.get("rotate", 0)
        return cls(
            size=record.get("size", 256),
            intensity=record.get("intensity", "auto"),
            rotate=rotate % 4 if _is_int(rotate) else rotate,
            layout=record.get("layout"),
            params={k: v for k, v in record.items() if k not in own},
            framing=record.get("framing", "full"),
        )

    def to_record(self) -> dict[str, Any]:
        """The flat JSON record (inverse of :meth:`from_record`)."""
        return {
            "layout": self.layout,
            **self.params,
            "size": self.size,
            "intensity": self.intensity,
            "rotate": self.rotate,
            "framing": self.framing,
        }


@dataclass(frozen=True)
class PostProcessing:
    """The one step from probabilities to masks (:mod:`covseg.inference.postprocess`), applied
    identically by ``segment``, ``evaluate``, ``cv``, training validation and the selection of
    these values on validation data.

    Sizes are in pixels at the network's input size ``S`` and scaled to each slice's own size
    (areas by ``H * W / S**2``, distances by ``max(H, W) / S``).

    Args:
        threshold: infection probability threshold (``0 < t < 1``).
        min_component: 8-connected infection components smaller than this are removed, slice by
            slice (0 or 1 keeps everything).
        lung_threshold: lung probability threshold.
        lung_margin_px: infection is kept only within the predicted lungs dilated by this many
            pixels (dense consolidation at the pleura is often missed by the lung head);
            ``None`` keeps infection anywhere. Models without a lung head skip the restriction.
    """

    threshold: float = 0.5
    min_component: int = 0
    lung_threshold: float = 0.5
    lung_margin_px: int | None = 2

    def __post_init__(self) -> None:
        for name in ("threshold", "lung_threshold"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
                raise ValueError(f"postprocessing.{name} must be a number in (0, 1), got {v!r}")
        if not _is_int(self.min_component) or not 0 <= self.min_component <= 1_000_000:
            raise ValueError(
                f"postprocessing.min_component must be an integer >= 0, got {self.min_component!r}"
            )
        m = self.lung_margin_px
        if m is not None and (not _is_int(m) or not 0 <= m <= 1000):
            raise ValueError(
                f"postprocessing.lung_margin_px must be null or an integer >= 0, got {m!r}"
            )

    def replace(self, **changes: Any) -> PostProcessing:
        """A copy with ``changes`` applied (the config is frozen)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Calibration:
    """Calibrated infection probabilities and the interval of the infected volume
    (:mod:`covseg.inference.calibration`; fitted on out-of-fold predictions by
    :mod:`covseg.studies.burden`). The default is the identity: no calibration, no interval.

    Args:
        infection_slope: Platt slope on the infection logit (``> 0``; ``1 / temperature``).
        infection_offset: Platt offset on the infection logit.
        interval_thresholds: ``(low, high)`` calibrated-probability thresholds: the infection
            mask volumes at ``high`` and at ``low`` (same post-processing otherwise) bound the
            infected volume; ``None``: no interval.
        interval_coverage: the share of out-of-fold cases (patients or slices) whose true
            volume the interval held when it was chosen (the smallest over data sources), for
            the record.
        headline: which infected volume ``segment`` puts first: ``"mask"`` (the mask's
            volume) or ``"expected"`` (the sum of calibrated probabilities within the lungs),
            whichever had the smaller out-of-fold error.
        source: how it was fitted (provenance).
    """

    infection_slope: float = 1.0
    infection_offset: float = 0.0
    interval_thresholds: tuple[float, float] | None = None
    interval_coverage: float | None = None
    headline: Literal["mask", "expected"] = "mask"
    source: str | None = None

    def __post_init__(self) -> None:
        for name in ("infection_slope", "infection_offset"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"calibration.{name} must be a finite number, got {v!r}")
        if self.infection_slope <= 0:
            raise ValueError(f"calibration.infection_slope must be > 0, got {self.infection_slope}")
        t = self.interval_thresholds
        if t is not None and (
            not isinstance(t, tuple)
            or len(t) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in t)
            or not 0.0 < t[0] < t[1] < 1.0
        ):
            raise ValueError(
                f"calibration.interval_thresholds must be null or [low, high] with "
                f"0 < low < high < 1, got {t!r}"
            )
        c = self.interval_coverage
        if c is not None and (
            isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 <= c <= 1
        ):
            raise ValueError(f"calibration.interval_coverage must be null or in [0, 1], got {c!r}")
        if self.headline not in ("mask", "expected"):
            raise ValueError(f"calibration.headline: 'mask' or 'expected', got {self.headline!r}")

    @property
    def identity(self) -> bool:
        """No change to the probabilities."""
        return self.infection_slope == 1.0 and self.infection_offset == 0.0

    def replace(self, **changes: Any) -> Calibration:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
