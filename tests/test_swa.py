"""Weight averaging of a run's last epochs (``covseg train --keep-epochs``, ``covseg average``)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from _train_helpers import FAST, TINY, prepared_phantoms
from covseg.checkpoint import load_checkpoint
from covseg.cli import main
from covseg.errors import CheckpointError
from covseg.training.loop import train
from covseg.training.swa import average_run


@pytest.fixture(scope="module")
def run_with_snapshots(tmp_path_factory):
    root = tmp_path_factory.mktemp("swa")
    data = prepared_phantoms(root, cases=3, slices=4, size=32)
    run = train(TINY, FAST.replace(epochs=3, keep_epochs=2), data, root / "run")
    return run, data


def test_keep_epochs_keeps_exactly_the_last_epochs(run_with_snapshots):
    run, _ = run_with_snapshots
    kept = sorted(p.name for p in run.glob("epoch*.safetensors"))
    assert kept == ["epoch002.safetensors", "epoch003.safetensors"]
    # the last snapshot is the last weights
    a, b = load_file(run / "epoch003.safetensors"), load_file(run / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_average_is_the_mean_of_the_snapshots_with_fresh_batch_norm(run_with_snapshots):
    run, data = run_with_snapshots
    out = average_run(run, data)
    assert out == run / "swa.safetensors"
    avg = load_file(out)
    snaps = [load_file(run / f"epoch00{k}.safetensors") for k in (2, 3)]
    conv = next(k for k in avg if k.endswith("weight") and avg[k].ndim == 4)
    torch.testing.assert_close(avg[conv], (snaps[0][conv] + snaps[1][conv]) / 2)
    # batch-norm statistics are recomputed on the training slices, not averaged
    mean = next(k for k in avg if k.endswith("running_mean"))
    assert not torch.allclose(avg[mean], (snaps[0][mean] + snaps[1][mean]) / 2)
    model, meta = load_checkpoint(out)  # loads like any checkpoint, says what it averages
    assert meta.metrics["swa_of"] == ["epoch002.safetensors", "epoch003.safetensors"]
    assert meta.model_config == TINY and not model.training


def test_average_needs_two_snapshots(run_with_snapshots, tmp_path, capsys):
    run, data = run_with_snapshots
    with pytest.raises(CheckpointError, match="two or more"):
        average_run(run, data, last=1)
    assert main(["average", str(tmp_path), "--data", str(data)]) == 2
    assert "0 epoch snapshot(s)" in capsys.readouterr().err
