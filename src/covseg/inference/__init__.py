"""Inference: network -> probabilities (:mod:`.predict`), the one probabilities -> masks step
(:mod:`.postprocess`), arrays in/out (:mod:`.segmenter`), the burden report (:mod:`.burden`) and
the file outputs of ``covseg segment`` (:mod:`.outputs`)."""

from __future__ import annotations

from covseg.inference.burden import Burden, BurdenReport
from covseg.inference.postprocess import Masks, postprocess
from covseg.inference.predict import Predictor, Probabilities, resolve_device
from covseg.inference.segmenter import Segmenter, SegmentResult

__all__ = [
    "Burden",
    "BurdenReport",
    "Masks",
    "Predictor",
    "Probabilities",
    "SegmentResult",
    "Segmenter",
    "postprocess",
    "resolve_device",
]
