"""Reliability of checkpoints and of training runs that die.

- a crash while a checkpoint is being written leaves the previous checkpoint loadable (hash
  verified) and no temporary files;
- a training run killed at any point of its end-of-epoch save can still be resumed;
- ``covseg train`` killed with SIGKILL mid-epoch, then ``--resume``d, ends with the weights of an
  uninterrupted run.

Tampered weights/JSON and future formats are covered by tests/test_checkpoint.py (not repeated);
here they go through the CLI: exit code 2 and one stderr line.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import covseg.checkpoint as ck
import covseg.tensor_pair as pair
from _train_helpers import FAST, TINY, prepared_phantoms
from covseg.checkpoint import load_checkpoint, save_checkpoint
from covseg.cli import main
from covseg.config import PostProcessing
from covseg.meta import CheckpointMeta
from covseg.models import build_model
from covseg.training.loop import train


class Crash(Exception):
    """Stands for the process dying at this point (files stay as they are)."""


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(TINY)


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------- atomic saves
META = CheckpointMeta(model_config=TINY)


def test_crash_while_writing_weights_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "best.safetensors", _model(0), META)

    def half_written(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 1000)  # a partial temp file, then the "kill"
        raise Crash

    monkeypatch.setattr(pair, "save_file", half_written)
    with pytest.raises(Crash):
        save_checkpoint(path, _model(1), META)
    monkeypatch.undo()
    loaded, _ = load_checkpoint(path)  # hash verified
    assert _same_weights(loaded, _model(0)) and _temp_files(tmp_path) == []


def test_crash_while_writing_json_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "best.safetensors", _model(0), META)
    real_write_text = Path.write_text

    def half_written(self, data, *args, **kwargs):
        if self.name.startswith(".best.json"):  # the temporary file of best.json
            real_write_text(self, data[:20], *args, **kwargs)  # a partial file, then the "kill"
            raise Crash
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", half_written)
    with pytest.raises(Crash):
        ck.update_meta(path, postprocessing=PostProcessing(threshold=0.3))
    monkeypatch.undo()
    _, meta = load_checkpoint(path)
    assert meta.postprocessing.threshold == 0.5
    assert _temp_files(tmp_path) == [], "a crashed JSON write leaves its temporary file behind"


@pytest.mark.parametrize("kill_at", [0, 1])
def test_crash_between_weights_and_json_keeps_a_loadable_checkpoint(tmp_path, monkeypatch, kill_at):
    """The weights file is renamed into place between two JSON writes (the first holds the new
    and the previous record, the second the new alone): a kill at either must not leave a JSON
    whose sha256 names other weights (the checkpoint would be refused for good)."""
    path = save_checkpoint(tmp_path / "best.safetensors", _model(0), META)
    real_write_json = pair.write_json
    calls: list[Path] = []

    def killed(target, *args, **kwargs):
        calls.append(Path(target))
        if len(calls) > kill_at:
            raise Crash
        return real_write_json(target, *args, **kwargs)

    monkeypatch.setattr(pair, "write_json", killed)
    with pytest.raises(Crash):
        save_checkpoint(path, _model(1), META)
    monkeypatch.undo()
    assert calls[-1] == path.with_suffix(".json")
    loaded, meta = load_checkpoint(path)  # either the old or the new weights, but loadable
    old, new = _same_weights(loaded, _model(0)), _same_weights(loaded, _model(1))
    assert old if kill_at == 0 else new  # before the rename: old weights; after: the new ones
    assert meta.sha256 == pair.file_sha256(path) and _temp_files(tmp_path) == []


_SAVE_LOOP = """
import sys, torch
sys.path.insert(0, {tests!r})
from _train_helpers import TINY
from covseg.checkpoint import save_checkpoint
from covseg.meta import CheckpointMeta
from covseg.models import build_model
torch.manual_seed(0)
model = build_model(TINY)
print("ready", flush=True)
i = 0
while True:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    save_checkpoint({path!r}, model, CheckpointMeta(model_config=TINY, metrics={{"i": i}}))
    i += 1
"""


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 0.7, 1.1])
def test_sigkill_during_a_save_loop_leaves_a_loadable_checkpoint(tmp_path, delay):
    path = tmp_path / "last.safetensors"
    code = _SAVE_LOOP.format(tests=str(Path(__file__).parent), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not path.with_suffix(".json").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _, meta = load_checkpoint(path)
    assert meta.metrics["i"] >= 0


# ---------------------------------------------------------------- training runs that die
CFG = FAST.replace(epochs=3, threshold_search=False)
#: File operations of one epoch's ``last*`` save (tensors write, JSON with the previous record,
#: rename, final JSON, for ``last_state`` and ``last``); every one is a kill point below.
SAVE_OPS = 12


class KillPoints:
    """Counts the file operations of the ``last*`` checkpoint saves (tensor writes, JSON writes,
    renames) and raises :class:`Crash` just before the ``kill_at``-th one: the files are left
    exactly as a SIGKILL at that point would leave them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, kill_at: int | None = None) -> None:
        self.events: list[str] = []
        self.kill_at = kill_at
        for name in ("write_json", "write_tensors"):
            monkeypatch.setattr(pair, name, self._wrap(getattr(pair, name), name))
        monkeypatch.setattr(pair.os, "replace", self._wrap(os.replace, "replace", dest_arg=1))

    def _wrap(self, real, name: str, dest_arg: int = 0):
        def op(*args, **kwargs):
            target = Path(args[dest_arg])
            if target.name.startswith("last"):
                if self.kill_at is not None and len(self.events) == self.kill_at:
                    raise Crash(f"killed before {name}({target.name})")
                self.events.append(f"{name}({target.name})")
            return real(*args, **kwargs)

        return op


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> tuple[Path, Path, int, list[str]]:
    """Phantoms, an uninterrupted 3-epoch run, the number of file operations of epoch 1's save
    and the list of those of epoch 2's save (the kill points)."""
    root = tmp_path_factory.mktemp("straight")
    data = prepared_phantoms(root, cases=2, slices=4, size=32)
    mp = pytest.MonkeyPatch()
    try:
        counter = KillPoints(mp)
        train(TINY, CFG.replace(epochs=1), data, root / "one")
        first = len(counter.events)
        counter.events.clear()
        run = train(TINY, CFG, data, root / "run")
        per_epoch = (len(counter.events) - first) // 2
        epoch2 = counter.events[first : first + per_epoch]
    finally:
        mp.undo()
    return data, run, first, epoch2


def _kill_and_resume(straight_run, tmp_path, monkeypatch, k: int) -> None:
    data, straight, first, epoch2 = straight_run
    assert k < len(epoch2) == SAVE_OPS, epoch2
    points = KillPoints(monkeypatch, kill_at=first + k)
    with pytest.raises(Crash):
        train(TINY, CFG, data, tmp_path / "killed")
    monkeypatch.undo()
    # what is on disk right after the kill still loads and passes its hash checks
    load_checkpoint(tmp_path / "killed" / "last.safetensors")
    ck.load_train_state(tmp_path / "killed" / "last_state")
    train(TINY, CFG, data, tmp_path / "killed", resume=True)
    a = load_file(str(straight / "last.safetensors"))
    b = load_file(str(tmp_path / "killed" / "last.safetensors"))
    for key in a:
        torch.testing.assert_close(
            a[key],
            b[key],
            rtol=1e-5,
            atol=1e-6,
            msg=f"killed after {points.events[len(points.events) - 1]}",
        )


def test_training_killed_between_state_tensors_rename_and_json_resumes_exactly(
    straight_run, tmp_path, monkeypatch
):
    """``last_state.safetensors`` renamed into place (epoch 2), the final ``last_state.json`` not
    yet written: the old JSON (epoch-1 counters, RNG, scheduler) must not be paired with the new
    tensors (epoch-2 weights and Adam moments)."""
    epoch2 = straight_run[3]
    # the kill points tested below are all of them (a new file operation needs a new one)
    assert len(epoch2) == SAVE_OPS, epoch2
    k = epoch2.index("replace(last_state.safetensors)") + 1
    _kill_and_resume(straight_run, tmp_path, monkeypatch, k)


@pytest.mark.slow
@pytest.mark.parametrize("k", range(SAVE_OPS))
def test_training_killed_at_every_point_of_its_save_can_resume(
    k, straight_run, tmp_path, monkeypatch
):
    _kill_and_resume(straight_run, tmp_path, monkeypatch, k)


def _train_cmd(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "covseg", "train", "--data", str(data), "--out", str(out),
        "--preset", "small", "--epochs", str(epochs), "--batch-size", "4", "--lr", "2e-3",
        "--no-augment", "--patience", "0", "--device", "cpu", "--seed", "3", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    data = prepared_phantoms(tmp_path, cases=3, slices=8, size=32)
    epochs = 8  # margin: on a loaded machine the first epoch (start-up) is much the slowest
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in every process
    subprocess.run(
        _train_cmd(data, tmp_path / "straight", epochs),
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )

    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(data, run, epochs), env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300

        def first_epoch_logged() -> bool:  # last.json is written before the log row
            log_csv = run / "log.csv"
            return (run / "last.json").exists() and (
                log_csv.exists() and len(log_csv.read_text().splitlines()) > 1
            )

        while not first_epoch_logged() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first_epoch_logged(), "no checkpoint and log row after the first epoch"
        epoch_s = float((run / "log.csv").read_text().splitlines()[1].split(",")[-1])
        time.sleep(epoch_s / 4)  # inside the second epoch (or a later one)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = json.loads((run / "last.json").read_text())["epoch"]
    assert 1 <= killed_at < epochs

    r = subprocess.run(
        _train_cmd(data, run, epochs, "--resume"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for stem in ("last", "best"):
        a = load_file(str(tmp_path / "straight" / f"{stem}.safetensors"))
        b = load_file(str(run / f"{stem}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{stem}: {k}")
    meta_a = json.loads((tmp_path / "straight" / "best.json").read_text())
    meta_b = json.loads((run / "best.json").read_text())
    assert meta_a["postprocessing"] == meta_b["postprocessing"]
    assert [ln.split(",")[0] for ln in (run / "log.csv").read_text().splitlines()[1:]] == [
        str(e) for e in range(1, epochs + 1)
    ]


# ------------------------------------------------------------------- tampered, via the CLI
def _cli(argv: list[str]) -> tuple[int, list[str]]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, [line for line in err.getvalue().splitlines() if line.strip()]


TAMPER = {
    "weights_byte": lambda w, j: w.write_bytes(w.read_bytes()[:-1] + b"\x00"),
    "weights_truncated": lambda w, j: w.write_bytes(w.read_bytes()[:100]),
    "json_sha": lambda w, j: j.write_text(j.read_text().replace('"sha256": "', '"sha256": "0')),
    "json_garbage": lambda w, j: j.write_text("{not json"),
    "json_future_format": lambda w, j: j.write_text(
        json.dumps({**json.loads(j.read_text()), "format": 7, "requires_covseg": "3.2.0"})
    ),
    "json_config": lambda w, j: j.write_text(
        json.dumps({**json.loads(j.read_text()), "model_config": {"encoder_channels": [1]}})
    ),
    "weights_missing": lambda w, j: w.unlink(),
}


@pytest.mark.parametrize("kind", sorted(TAMPER))
def test_segment_refuses_a_tampered_checkpoint(kind, tmp_path):
    import nibabel as nib
    import numpy as np

    from covseg.data.synthetic import make_phantom
    from segment_tiny import save_tiny_checkpoint

    weights = save_tiny_checkpoint(tmp_path / "m.safetensors")
    TAMPER[kind](weights, weights.with_suffix(".json"))
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(make_phantom(0, (32, 32, 2))[0], np.eye(4)), str(scan))
    out = tmp_path / "out"
    rc, lines = _cli(["segment", str(scan), "--out", str(out), "--checkpoint", str(weights)])
    assert rc == 2 and len(lines) == 1, lines
    assert "m.safetensors" in lines[0] or "m.json" in lines[0]
    if kind == "json_future_format":
        assert "format 7 needs covseg >= 3.2.0" in lines[0]
    assert not out.exists()


def test_a_full_disk_names_the_checkpoint_not_its_temporary_file(tmp_path, monkeypatch):
    """A refused write (full disk, a folder that takes no files) is reported on the file the
    user asked for; the hidden temporary name means nothing to them."""
    import errno
    import tempfile

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".x.tmp123"))

    monkeypatch.setattr(tempfile, "mkstemp", full)
    target = tmp_path / "run" / "best.safetensors"
    with pytest.raises(OSError) as info:
        save_checkpoint(target, build_model(TINY), CheckpointMeta(model_config=TINY))
    assert info.value.filename == str(target) and info.value.errno == errno.ENOSPC
    assert not list(tmp_path.rglob("*.json"))
