"""Hostile scenarios: commands other than ``segment`` (report, train --resume, cv)."""

from __future__ import annotations

from pathlib import Path

from hostile_common import scenario


# ------------------------------------------------------------------------- other commands
@scenario("report_damaged", "covseg report on a run with a damaged metrics file", "error")
def _(tmp, ckpt):
    run = tmp / "cv" / "fold0_rep0"
    run.mkdir(parents=True)
    (tmp / "cv" / "splits.json").write_text("{}")
    (run / "test_metrics.json").write_text('{"fold": 0, "per_slice_mean"')
    return ["report", str(tmp / "cv"), "--no-panels"]


@scenario("resume_missing", "covseg train --resume without a previous run", "error")
def _(tmp, ckpt):
    from _train_helpers import prepared_phantoms

    data = prepared_phantoms(tmp, cases=2, slices=2, size=32)
    return ["train", "--data", str(data), "--out", str(tmp / "run"), "--resume", "--epochs", "1",
            "--device", "cpu"]  # fmt: skip


def _trained(tmp: Path) -> list[str]:
    """A 1-epoch ``covseg train --preset fast`` run on phantoms (made here); its flags."""
    from _train_helpers import prepared_phantoms
    from covseg.cli import main

    data = prepared_phantoms(tmp, cases=2, slices=2, size=32)
    common = ["--data", str(data), "--out", str(tmp / "run"), "--device", "cpu",
              "--preset", "fast", "--batch-size", "2", "--threads", "1"]  # fmt: skip
    assert main(["train", *common, "--epochs", "1"]) == 0
    return common


@scenario("resume_other_lr", "covseg train --resume --lr X on a run made with another lr", "error")
def _(tmp, ckpt):
    return ["train", *_trained(tmp), "--resume", "--epochs", "2", "--lr", "1e-3"]


@scenario("resume_other_model", "covseg train --resume with another preset", "error")
def _(tmp, ckpt):
    return ["train", *_trained(tmp), "--resume", "--epochs", "2", "--preset", "small"]


@scenario("cv_rerun_other_lr", "covseg cv rerun into a folder made with another lr", "error")
def _(tmp, ckpt):
    from _train_helpers import prepared_phantoms
    from covseg.cli import main

    data = prepared_phantoms(tmp, cases=3, slices=2, size=32)
    common = ["cv", "--data", str(data), "--out", str(tmp / "cv"), "--folds", "3", "--repeats",
              "1", "--fold", "0", "--repeat", "0", "--preset", "fast", "--epochs", "1",
              "--batch-size", "2", "--device", "cpu", "--threads", "1"]  # fmt: skip
    assert main(common) == 0
    return [*common, "--lr", "1e-3"]
