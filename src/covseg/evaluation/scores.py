"""Per-slice confusion counts of scored cases: the one schema that ``evaluate`` summarises,
``cv`` writes as a run's ``test_metrics.json`` and ``report`` reads back."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covseg.data.dataset import SOURCE_SEP
from covseg.errors import DataError
from covseg.evaluation.agreement import CaseBurden, agreement, case_burden
from covseg.evaluation.metrics import aggregate, by_lesion_size, confusion, surface_metrics

if TYPE_CHECKING:
    from covseg.evaluation.cases import LabelledCase

__all__ = ["Scores"]


@dataclass
class Scores:
    """Per-slice confusion counts of scored cases, with what aggregates need.

    Attributes:
        cases: the case id of every slice.
        counts: ``(tp, fp, fn, tn)`` of every slice.
        kinds: ``"slice"`` or ``"volume"`` per case.
        surface: HD95 / NSD@3mm per volume case with a known spacing.
        resolution: per case, ``"original"`` or ``"prepared"``.
        postprocessing: the post-processing that made the masks (a JSON dict).
        burden: per case, the :class:`~covseg.evaluation.agreement.CaseBurden` of the mask
            volume (``"mask"``) and, from a calibrated model, of the expected volume with its
            interval (``"expected"``).
    """

    cases: list[str] = field(default_factory=list)
    counts: list[list[int]] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)
    surface: dict[str, dict[str, float]] = field(default_factory=dict)
    resolution: dict[str, str] = field(default_factory=dict)
    postprocessing: dict[str, Any] = field(default_factory=dict)
    burden: dict[str, dict[str, CaseBurden]] = field(default_factory=dict)

    def add(
        self,
        case: LabelledCase,
        pred: np.ndarray,
        lung: np.ndarray | None = None,
        estimate: Any = None,
    ) -> None:
        """Score ``(N, H, W)`` predicted infection of ``case``, with the predicted lungs (for
        "% infected") and a calibrated model's
        :class:`~covseg.inference.burden.BurdenEstimate` where there is one."""
        sp = case.spacing
        voxel_ml = None if sp is None else float(np.prod(sp)) / 1000.0
        source = case.id.partition(SOURCE_SEP)[0] if SOURCE_SEP in case.id else ""
        args = (case.id, pred, case.truth, lung, case.lung)
        rec = {"mask": case_burden(*args, voxel_ml=voxel_ml, source=source)}
        if estimate is not None:
            iv = estimate.interval_voxels
            rec["expected"] = case_burden(
                *args, voxel_ml=voxel_ml, source=source, estimate=estimate.expected_voxels,
                interval=None if iv is None else (float(iv[0]), float(iv[1])),
            )  # fmt: skip
        self.burden[case.id] = rec
        tp, fp, fn, tn = confusion(pred, case.truth, axes=(1, 2))
        self.counts += np.stack([tp, fp, fn, tn], axis=1).tolist()
        self.cases += [case.id] * len(tp)
        self.kinds[case.id] = case.kind
        self.resolution[case.id] = case.resolution
        if case.kind == "volume" and case.spacing is not None:
            self.surface[case.id] = surface_metrics(pred, case.truth, tuple(case.spacing))

    def sources(self) -> list[str]:
        """The dataset names of a combined dataset's case ids (``NAME/ID``), sorted; ``[]``
        when some id has no such prefix (a single dataset)."""
        names = {c.partition(SOURCE_SEP)[0] for c in self.cases if SOURCE_SEP in c}
        return sorted(names) if names and all(SOURCE_SEP in c for c in self.cases) else []

    def subset(self, source: str) -> Scores:
        """The slices of the cases of dataset ``source`` (ids ``source/ID``)."""
        keep = [i for i, c in enumerate(self.cases) if c.startswith(source + SOURCE_SEP)]
        ids = {self.cases[i] for i in keep}

        def own(d: dict) -> dict:
            return {k: v for k, v in d.items() if k in ids}

        return Scores(
            cases=[self.cases[i] for i in keep],
            counts=[self.counts[i] for i in keep],
            kinds=own(self.kinds),
            surface=own(self.surface),
            resolution=own(self.resolution),
            postprocessing=dict(self.postprocessing),
            burden=own(self.burden),
        )

    @property
    def n_items(self) -> int:
        return len(self.counts)

    def aggregate(self, mode: str) -> dict[str, float]:
        return aggregate(np.asarray(self.counts, dtype=np.int64).reshape(-1, 4), self.cases, mode)

    def by_lesion_size(self) -> list[dict[str, Any]]:
        """Per-slice Dice and more by the truth's share of the slice
        (:func:`~covseg.evaluation.metrics.by_lesion_size`)."""
        return by_lesion_size(self.counts)

    def surface_means(self) -> dict[str, float]:
        """Mean HD95 and NSD over the volume cases (NaN HD95 of an empty prediction skipped)."""
        out = {}
        for key in ("hd95_mm", "nsd_3mm"):
            vals = [s[key] for s in self.surface.values() if not math.isnan(s[key])]
            out[key] = float(np.mean(vals)) if vals else float("nan")
        return out

    def summary(self) -> dict[str, Any]:
        """``evaluate``'s result: ``n_items``, ``threshold``, ``per_slice_mean``, ``pooled``,
        ``by_lesion_size`` (:meth:`by_lesion_size`), and for volume data ``per_volume_mean``,
        ``hd95_mm``, ``nsd_3mm``."""
        result: dict[str, Any] = {
            "n_items": self.n_items,
            "threshold": self.postprocessing.get("threshold"),
            "per_slice_mean": self.aggregate("per_slice_mean"),
            "pooled": self.aggregate("pooled"),
            "by_lesion_size": self.by_lesion_size(),
        }
        if "volume" in self.kinds.values():
            result["per_volume_mean"] = self.aggregate("per_volume_mean")
            result.update(self.surface_means())
        result.update(self.burden_summary())
        return result

    def burden_summary(self) -> dict[str, Any]:
        """``{"burden": agreement of the mask volumes}`` and, where every case has one,
        ``"burden_expected"`` (:func:`~covseg.evaluation.agreement.agreement`); ``{}`` without
        burden rows (a record from before covseg 0.3)."""
        if not self.burden:
            return {}
        out = {"burden": agreement([b["mask"] for b in self.burden.values()])}
        if all("expected" in b for b in self.burden.values()):
            out["burden_expected"] = agreement([b["expected"] for b in self.burden.values()])
        return out

    def to_record(self) -> dict[str, Any]:
        """The JSON record (``test_metrics.json`` of a cross-validation run)."""
        return {
            "postprocessing": self.postprocessing,
            "threshold": self.postprocessing.get("threshold"),
            "min_component": self.postprocessing.get("min_component"),
            "cases": self.cases,
            "counts": self.counts,
            "kinds": self.kinds,
            "surface": self.surface,
            "resolution": self.resolution,
            "per_slice_mean": self.aggregate("per_slice_mean") if self.n_items else {},
            "burden": {
                c: {k: dataclasses.asdict(v) for k, v in b.items()} for c, b in self.burden.items()
            },
        }

    @classmethod
    def from_record(cls, record: Any, where: str | Path) -> Scores:
        """Inverse of :meth:`to_record`, validated.

        Raises:
            DataError: a damaged record.
        """
        try:
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            counts = np.asarray(record["counts"], dtype=np.int64)
            cases = [str(c) for c in record["cases"]]
            if counts.size and (counts.ndim != 2 or counts.shape[1] != 4 or (counts < 0).any()):
                raise ValueError(
                    f"counts must be rows of 4 non-negative integers, got {counts.shape}"
                )
            if len(cases) != len(counts):
                raise ValueError(f"{len(cases)} case ids for {len(counts)} count rows")
            surface = {
                str(k): {m: float(v[m]) for m in ("hd95_mm", "nsd_3mm")}
                for k, v in (record.get("surface") or {}).items()
            }
            kinds = {str(k): str(v) for k, v in (record.get("kinds") or {}).items()}
            burden = {
                str(c): {str(k): _case_burden(v) for k, v in b.items()}
                for c, b in (record.get("burden") or {}).items()
            }
            post = record.get("postprocessing") or {
                "threshold": record.get("threshold"),
                "min_component": record.get("min_component"),
            }
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DataError(f"{where}: damaged metrics ({err})") from None
        return cls(
            cases=cases,
            counts=counts.reshape(-1, 4).tolist(),
            kinds=kinds,
            surface=surface,
            resolution=dict(record.get("resolution") or {}),
            postprocessing=dict(post),
            burden=burden,
        )


def _case_burden(d: Any) -> CaseBurden:
    if not isinstance(d, dict):
        raise ValueError("a burden row is not an object")
    iv = d.get("interval")
    # Numbers checked here (ValueError/TypeError: a damaged record), not at the first sum.
    volumes = {
        k: float(d[k]) for k in ("true_infection", "pred_infection", "true_lung", "pred_lung")
    }
    counts = {k: int(d[k]) for k in ("tp", "fp", "fn")}
    interval = None if iv is None else (float(iv[0]), float(iv[1]))
    return CaseBurden(**{**d, **volumes, **counts, "interval": interval})
