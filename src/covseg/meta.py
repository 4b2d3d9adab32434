"""The typed metadata of a checkpoint: what ``RUN/*.json`` holds besides format and hash.

Read through one dataclass (the ``ConfigurationManager`` habit of nnU-Net), validated field by
field before anything is built, so a wrong type or range is a
:class:`~covseg.errors.CheckpointError` naming the file and the field, never a traceback.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covseg._version import __version__
from covseg.config import (
    Calibration,
    ModelConfig,
    PostProcessing,
    Preprocessing,
    TrainConfig,
    from_dict,
    to_dict,
)
from covseg.errors import CheckpointError

__all__ = ["CheckpointMeta", "DataRecord"]


@dataclass(frozen=True)
class DataRecord:
    """What a checkpoint was trained on.

    Args:
        root: the prepared dataset folder.
        dataset: a human description (the shipped model's).
        train_cases: case ids used for training (validation slices held out inside).
        test_cases: case ids held out for testing (the run's test fold).
    """

    root: str | None = None
    dataset: str | None = None
    train_cases: tuple[str, ...] = ()
    test_cases: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything about a checkpoint but its weights.

    Args:
        model_config: the network (rebuilt from it alone).
        preprocessing: input size and intensity rule.
        postprocessing: the probabilities -> masks step (threshold, components, lung margin).
        train_config: how it was trained (``None`` for hand-made checkpoints).
        data: what it was trained on.
        metrics: numbers recorded by training (``val_dice``, ...).
        epoch: epochs trained.
        postprocessing_source: how ``postprocessing`` was chosen.
        sha256: of the weights file (set by :func:`save_checkpoint` / :func:`load_checkpoint`).
        covseg_version: the covseg that wrote it.
        members: for an ensemble (:class:`~covseg.models.ensemble.Ensemble`), every member's
            network in order, ``model_config`` being the first; empty for a single network.
        calibration: the infection head's calibration and the burden interval (identity and
            none by default; a checkpoint with one is format 4).
    """

    model_config: ModelConfig
    preprocessing: Preprocessing = dataclasses.field(default_factory=Preprocessing)
    postprocessing: PostProcessing = dataclasses.field(default_factory=PostProcessing)
    train_config: TrainConfig | None = None
    data: DataRecord = dataclasses.field(default_factory=DataRecord)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    epoch: int | None = None
    postprocessing_source: str | None = None
    sha256: str | None = None
    covseg_version: str = __version__
    members: tuple[ModelConfig, ...] = ()
    calibration: Calibration = dataclasses.field(default_factory=Calibration)

    def __post_init__(self) -> None:
        if self.members and self.members[0] != self.model_config:
            raise ValueError("an ensemble's model_config must be its first member's")

    def replace(self, **changes: Any) -> CheckpointMeta:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def model_id(self) -> str:
        """sha256 of the weights (``"unknown"`` before saving)."""
        return self.sha256 or "unknown"

    def to_json(self) -> dict[str, Any]:
        """The JSON record (without format/weights, which :func:`save_checkpoint` adds)."""
        return {
            "model_config": to_dict(self.model_config),
            "preprocessing": self.preprocessing.to_record(),
            "postprocessing": to_dict(self.postprocessing),
            "train_config": None if self.train_config is None else to_dict(self.train_config),
            "data": to_dict(self.data),
            "metrics": dict(self.metrics),
            "epoch": self.epoch,
            "postprocessing_source": self.postprocessing_source,
            "covseg_version": self.covseg_version,
            "sha256": self.sha256,
            **({"ensemble": [to_dict(c) for c in self.members]} if self.members else {}),
            **({"calibration": to_dict(self.calibration)} if self.calibrated else {}),
        }

    @property
    def calibrated(self) -> bool:
        """Whether the checkpoint carries a calibration other than the default."""
        return self.calibration != Calibration()

    @classmethod
    def from_json(cls, record: dict[str, Any], where: str | Path = "<meta>") -> CheckpointMeta:
        """Validate and type a JSON record (format 1 or 2).

        Raises:
            CheckpointError: a missing, unknown or ill-typed field, named with ``where``.
        """
        field = "model_config"
        try:
            if not isinstance(record.get("model_config"), dict):
                raise ValueError("missing or not an object")
            model_config = from_dict(ModelConfig, record["model_config"])
            field = "preprocessing"
            pre = record.get("preprocessing") or {}
            if not isinstance(pre, dict):
                raise ValueError("not an object")
            preprocessing = Preprocessing.from_record(pre)
            field = "postprocessing"
            if "postprocessing" in record:
                post = record["postprocessing"]
                if not isinstance(post, dict):
                    raise ValueError("not an object")
                postprocessing = from_dict(PostProcessing, post)
            else:  # format 1
                postprocessing = PostProcessing(
                    threshold=record.get("threshold", 0.5),
                    min_component=record.get("min_component", 0),
                    lung_margin_px=2,
                )
            field = "train_config"
            tc = record.get("train_config")
            train_config = None if tc is None else from_dict(TrainConfig, tc)
            field = "data"
            data_rec = record.get("data") or {}
            if not isinstance(data_rec, dict):
                raise ValueError("not an object")
            data = from_dict(DataRecord, {k: v for k, v in data_rec.items() if v is not None})
            if not all(isinstance(c, str) for c in (*data.train_cases, *data.test_cases)):
                raise ValueError("case ids must be strings")
            field = "metrics"
            metrics = record.get("metrics") or {}
            if not isinstance(metrics, dict):
                raise ValueError("not an object")
            field = "epoch"
            epoch = record.get("epoch")
            if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool)):
                raise ValueError(f"not an integer: {epoch!r}")
            field = "ensemble"
            members = record.get("ensemble") or []
            if not isinstance(members, list) or not all(isinstance(c, dict) for c in members):
                raise ValueError("not a list of model configs")
            if len(members) == 1:
                raise ValueError("an ensemble needs at least two members")
            configs = tuple(from_dict(ModelConfig, c) for c in members)
            if configs and configs[0] != model_config:
                raise ValueError("its first member is not model_config")
            field = "calibration"
            cal = record.get("calibration")
            if cal is not None and not isinstance(cal, dict):
                raise ValueError("not an object")
            calibration = Calibration() if cal is None else from_dict(Calibration, cal)
            field = "sha256"
            sha = record.get("sha256")
            if sha is not None and not isinstance(sha, str):
                raise ValueError(f"not a string: {sha!r}")
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: bad {field} ({err})") from None
        return cls(
            model_config=model_config,
            preprocessing=preprocessing,
            postprocessing=postprocessing,
            train_config=train_config,
            data=data,
            metrics=metrics,
            epoch=epoch,
            postprocessing_source=record.get("postprocessing_source"),
            sha256=sha,
            covseg_version=str(record.get("covseg_version", "unknown")),
            members=configs,
            calibration=calibration,
        )
