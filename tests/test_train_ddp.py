"""DDP: `torchrun --nproc_per_node 2 -m covseg train` on CPU (gloo); only rank 0 writes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from _train_helpers import prepared_phantoms
from covseg.checkpoint import FORMAT, load_checkpoint


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    data = prepared_phantoms(tmp_path, cases=3, slices=4, size=32)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "covseg",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--no-augment",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    _, meta = load_checkpoint(out / "best.safetensors")
    assert json.loads((out / "best.json").read_text())["format"] == FORMAT
    assert 0.05 <= meta.postprocessing.threshold <= 0.95
    assert "val_dice_postprocessed" in meta.metrics
    last = json.loads((out / "last.json").read_text())
    assert last["epoch"] == 2 and "val_dice_postprocessed" in last["metrics"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no stray temp files
