"""Reliability of what covseg writes and of runs that meet other runs: output sets written as
one unit, stale temporaries of killed runs, ``--out`` checked before the work, SIGTERM, odd case
names, intensity ranges that no rule fits, tampered weights, and resumed or re-run training with
other settings. A tiny random-init checkpoint is used: the assertions are about files, exit codes
and messages, not accuracy."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from covseg.cli import main
from covseg.data.synthetic import make_phantom
from covseg.errors import DataError
from covseg.files import folder_lock, remove_stale, temporary_dir
from covseg.inference.outputs import MAX_CASE_BYTES, case_name

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def _cli(*argv: str) -> tuple[int, list[str], str]:
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        rc = main(list(argv))
    # A progress bar redraws with "\r"; what stays on a terminal is each line's last part.
    lines = [ln.split("\r")[-1] for ln in err.getvalue().split("\n")]
    return rc, [ln for ln in lines if ln.strip()], out.getvalue()


def _segment(inputs, out: Path, ckpt: Path, *flags: str) -> tuple[int, list[str], str]:
    return _cli("segment", *map(str, inputs), "--out", str(out), "--checkpoint", str(ckpt),
                "--device", "cpu", *flags)  # fmt: skip


def _scan(path: Path, shape=(32, 32, 3), offset: float = 0.0, scale: float = 1.0) -> Path:
    vol = (make_phantom(0, shape)[0].astype(np.float32) + offset) * scale
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
    return path


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------ case names
@pytest.mark.parametrize(
    ("name", "case"),
    [
        ("scan.nii.gz", "scan"),
        ("..nii.gz", "case"),
        (".hidden.nii.gz", "_hidden"),
        ("a\nb\tc.nii.gz", "a_b_c"),
        ("é l\u200bv.png", "é l_v"),
    ],
)
def test_case_names_are_visible_single_line_file_names(name, case):
    assert case_name(name) == case


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=260))
def test_any_file_name_gives_a_safe_case_name_or_a_data_error(name):
    try:
        case = case_name(name.replace("/", "") + ".nii.gz")
    except DataError as err:
        assert "longer than" in str(err)
        return
    assert case and not case.startswith(".") and "/" not in case
    assert all(c.isprintable() for c in case)
    assert len(case.encode("utf-8", "surrogateescape")) <= MAX_CASE_BYTES


def test_too_long_case_name_is_refused_before_any_work(checkpoint, tmp_path):
    long = tmp_path / ("x" * (MAX_CASE_BYTES + 1) + ".nii.gz")
    _scan(long)
    out = tmp_path / "out"
    rc, lines, _ = _segment([long], out, checkpoint)
    assert rc == 2 and len(lines) == 1 and "longer than" in lines[0], lines
    assert not out.exists()
    ok = tmp_path / ("y" * MAX_CASE_BYTES + ".nii.gz")  # the longest name still works
    _scan(ok)
    rc, lines, _ = _segment([ok], out, checkpoint)
    assert rc == 0, lines
    assert (out / f"{'y' * MAX_CASE_BYTES}_infection.nii.gz").exists()


def test_odd_names_give_visible_outputs_and_a_one_row_per_case_table(checkpoint, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _scan(src / "a\nb.nii.gz")
    out = tmp_path / "out"
    rc, lines, table = _segment([src / "a\nb.nii.gz"], out, checkpoint)
    assert rc == 0, lines
    assert (out / "a_b_report.json").exists() and _hidden(out) == []
    assert len(table.strip().splitlines()) == 2  # header + one case


# ------------------------------------------------------------------------------ --out checks
def test_out_that_is_a_file_is_refused_before_any_work(checkpoint, tmp_path):
    scan = _scan(tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    out.write_text("not a folder")
    rc, lines, _ = _segment([scan], out, checkpoint)
    assert rc == 2 and len(lines) == 1 and "not a folder" in lines[0], lines


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_refused_before_any_work(checkpoint, tmp_path):
    scan = _scan(tmp_path / "scan.nii.gz")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        rc, lines, _ = _segment([scan], out, checkpoint)
    finally:
        out.chmod(0o700)
    assert rc == 2 and len(lines) == 1 and "cannot write" in lines[0], lines
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("where", [".", "sub"])
def test_out_inside_an_input_folder_is_refused(checkpoint, tmp_path, where):
    src = tmp_path / "scans"
    src.mkdir()
    _scan(src / "scan.nii.gz")
    rc, lines, _ = _segment([src], src / where, checkpoint)
    assert rc == 2 and len(lines) == 1 and "inside the input folder" in lines[0], lines
    assert sorted(p.name for p in src.iterdir()) == ["scan.nii.gz"]


def test_write_error_mid_case_is_one_line_and_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    import covseg.inference.outputs as outputs

    scan = _scan(tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    calls = []

    def full_disk(mask, ref, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(mask, ref, path)

    real = outputs.write_mask
    monkeypatch.setattr(outputs, "write_mask", full_disk)
    rc, lines, _ = _segment([scan], out, checkpoint)
    assert rc == 2 and len(lines) == 1 and "No space left" in lines[0], lines
    # Nothing of the case; the run created --out and segmented nothing: no folder left.
    assert not out.exists()
    # Into an existing folder: the table's row and the record of the failure, nothing else.
    out.mkdir()
    calls.clear()
    rc, lines, _ = _segment([scan], out, checkpoint)
    assert rc == 2 and len(lines) == 1 and "No space left" in lines[0], lines
    assert sorted(p.name for p in out.iterdir()) == [".covseg-failed", "cohort.csv"]
    assert "No space left" in (out / "cohort.csv").read_text()


# --------------------------------------------------------------- output sets as one unit
def test_kill_between_renames_leaves_no_report_beside_new_masks(checkpoint, tmp_path, monkeypatch):
    """The report marks a complete case: a rerun that dies after renaming one mask must not
    leave the old report describing the new mask."""
    import covseg.inference.outputs as outputs

    scan = _scan(tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    assert _segment([scan], out, checkpoint)[0] == 0
    assert (out / "scan_report.json").exists()
    renames = []

    def dying_replace(src, dst):
        if Path(dst).parent == out:  # the renames into the output folder, not the writers'
            renames.append(dst)
        if len(renames) == 2:
            raise KeyboardInterrupt  # what SIGTERM/Ctrl-C raise in the middle of the renames
        os.rename(src, dst)

    monkeypatch.setattr(outputs.os, "replace", dying_replace)
    rc, _, _ = _segment([scan], out, checkpoint, "--redo")  # else the finished case is skipped
    assert rc == 130
    assert not (out / "scan_report.json").exists()  # the case reads as incomplete
    assert _hidden(out) == []  # and no temporary folder is left
    monkeypatch.undo()
    assert _segment([scan], out, checkpoint)[0] == 0
    assert (out / "scan_report.json").exists()


def test_renames_wait_for_the_output_folder_lock(checkpoint, tmp_path):
    """While another run holds the output folder's lock, a case is complete in its temporary
    folder but nothing of it is in the output folder; it lands when the lock is released. (The
    temporary folder is itself made under that lock: the lock is taken once it exists.)"""
    scan = _scan(tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "covseg", "segment", str(scan), "--out", str(out),
           "--checkpoint", str(checkpoint), "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(out.glob(".scan.*.partial")) and proc.poll() is None:
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)
    with folder_lock(out):
        while time.time() < deadline:
            staged = list(out.glob(".scan.*.partial/scan_report.json"))
            if staged or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert staged, proc.stderr.read().decode() if proc.poll() is not None else "timed out"
        time.sleep(0.5)
        assert not (out / "scan_lungs.nii.gz").exists() and proc.poll() is None
    assert proc.wait(timeout=60) == 0
    assert (out / "scan_report.json").exists() and _hidden(out) == []


# ----------------------------------------------------------------- stale temporaries, SIGTERM
def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    with temporary_dir(tmp_path, prefix=".live.") as live:
        stale = tmp_path / ".dead.abc123.partial"
        (stale / "sub").mkdir(parents=True)
        (stale / "sub" / "scan_lungs.nii.gz").write_bytes(b"x")
        young = tmp_path / ".young.abc.partial"  # just left by a kill: no lock, no age test
        young.mkdir()
        other = tmp_path / "keep.partial"  # not ours: no prefix
        other.mkdir()
        assert remove_stale(tmp_path, ".", ".partial") == 2
        assert not stale.exists() and not young.exists() and live.exists() and other.exists()
    assert not live.exists()


def test_segment_removes_what_a_killed_run_left(checkpoint, tmp_path):
    scan = _scan(tmp_path / "scan.nii.gz")
    out = tmp_path / "out"
    left = out / ".scan.k1ll3d.partial"
    left.mkdir(parents=True)
    (left / "scan_lungs.nii.gz").write_bytes(b"half")
    assert _segment([scan], out, checkpoint)[0] == 0
    assert _hidden(out) == []


def test_prepare_removes_what_a_killed_run_left(tmp_path):
    from covseg.data.synthetic import write_synthetic_dataset

    raw = write_synthetic_dataset(tmp_path / "raw", "zenodo20", 2, seed=0, slices=2, size=32)
    left = [tmp_path / ".prep.tmp-k1ll3d", tmp_path / ".prep.old-k1ll3d"]
    for p in left:
        p.mkdir()
    rc, lines, _ = _cli("prepare", str(raw), str(tmp_path / "prep"), "--size", "32")
    assert rc == 0, lines
    assert not any(p.exists() for p in left)
    assert (tmp_path / "prep" / "manifest.json").exists()


@pytest.mark.parametrize("when", ["segmenting", "writing"])
def test_sigterm_during_segment_leaves_no_partial_files(checkpoint, tmp_path, when):
    scan = _scan(tmp_path / "scan.nii.gz", shape=(160, 160, 150))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "covseg", "segment", str(scan), "--out", str(out),
           "--checkpoint", str(checkpoint), "--device", "cpu", "--batch-size", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def reached() -> bool:
        if when == "segmenting":  # past its checks: --out made, nothing written yet
            return out.exists()
        return any(out.glob(".scan.*.partial/*")) if out.exists() else False

    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not reached():
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    assert rc == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "covseg: terminated"
    assert not out.exists() or [p.name for p in out.iterdir()] == []


# ----------------------------------------------------------------- intensities no rule fits
def test_stored_values_without_intercept_are_refused_then_read_with_the_rule(checkpoint, tmp_path):
    hu = _scan(tmp_path / "hu.nii.gz")
    raw = _scan(tmp_path / "raw.nii.gz", offset=1024.0)  # DICOM stored values: HU + 1024
    rc, lines, _ = _segment([raw], tmp_path / "a", checkpoint)
    assert rc == 2 and len(lines) == 1 and "--intensity hu1024" in lines[0], lines
    assert _segment([raw], tmp_path / "a", checkpoint, "--intensity", "hu1024")[0] == 0
    assert _segment([hu], tmp_path / "b", checkpoint)[0] == 0
    for part in ("lungs", "infection"):
        a = np.asarray(nib.load(str(tmp_path / "a" / f"raw_{part}.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(tmp_path / "b" / f"hu_{part}.nii.gz")).dataobj)
        np.testing.assert_array_equal(a, b)


def test_floats_in_unit_range_are_refused_unless_told(checkpoint, tmp_path):
    scan = _scan(tmp_path / "unit.nii.gz", offset=1250.0, scale=1 / 1500)  # window -> [0, 1]
    rc, lines, _ = _segment([scan], tmp_path / "o", checkpoint)
    assert rc == 2 and len(lines) == 1 and "--intensity unit" in lines[0], lines
    assert _segment([scan], tmp_path / "o", checkpoint, "--intensity", "unit")[0] == 0


# ----------------------------------------------------------------------- tampered weights
def _retag(weights: Path, **changes) -> None:
    """Rewrite the sidecar JSON so that its sha256 matches the (changed) weights file."""
    import hashlib

    side = weights.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta.update(changes)
    meta["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    side.write_text(json.dumps(meta))


def _int8_weights(w: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_file({k: v.to(__import__("torch").int8) for k, v in load_file(str(w)).items()}, str(w))
    _retag(w)


def _pickled_weights(w: Path) -> None:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(w)), str(w))
    _retag(w)


def _widened_config(w: Path) -> None:
    meta = json.loads(w.with_suffix(".json").read_text())
    meta["model_config"]["encoder_channels"] = [4096, 8192, 8192, 8192, 8192]
    _retag(w, model_config=meta["model_config"])


@pytest.mark.parametrize(
    ("tamper", "words"),
    [
        (_int8_weights, "needs F32"),
        (_pickled_weights, "not a readable safetensors"),
        (_widened_config, "needs F32 ["),
    ],
)
def test_weights_that_do_not_fit_are_refused_before_the_model_is_built(tamper, words, tmp_path):
    from segment_tiny import save_tiny_checkpoint

    weights = save_tiny_checkpoint(tmp_path / "m.safetensors")
    tamper(weights)
    scan = _scan(tmp_path / "scan.nii.gz")
    t0 = time.perf_counter()
    rc, lines, _ = _segment([scan], tmp_path / "out", weights)
    assert rc == 2 and len(lines) == 1 and words in lines[0], lines
    assert time.perf_counter() - t0 < 10  # the widened network was never materialised


# ------------------------------------------------------------- resumed / re-run training
@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from _train_helpers import prepared_phantoms

    return prepared_phantoms(tmp_path_factory.mktemp("data"), cases=3, slices=2, size=32)


def test_resume_with_other_settings_is_refused_unless_forced(phantoms, tmp_path):
    from _train_helpers import FAST, TINY
    from covseg.training.loop import train
    from covseg.training.state import read_log

    run = tmp_path / "run"
    cfg = FAST.replace(epochs=1, batch_size=2, schedule="none")
    train(TINY, cfg, phantoms, run)
    with pytest.raises(DataError, match=r"other settings.*lr: 0\.002 -> 0\.0005.*--force"):
        train(TINY, cfg.replace(epochs=2, lr=5e-4), phantoms, run, resume=True)
    with pytest.raises(DataError, match=r"other settings.*model\."):
        wider = TINY.replace(fusion_channels=(8, 8, 8))
        train(wider, cfg.replace(epochs=2), phantoms, run, resume=True, force=True)
    train(TINY, cfg.replace(epochs=2, lr=5e-4), phantoms, run, resume=True, force=True)
    rows = read_log(run / "log.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["lr"] == pytest.approx(2e-3) and rows[1]["lr"] == pytest.approx(5e-4)


def test_cv_rerun_with_other_settings_is_refused_unless_forced(phantoms, tmp_path, monkeypatch):
    from _train_helpers import TINY
    from covseg import config

    monkeypatch.setitem(config.PRESETS, "small", TINY)
    common = ["cv", "--data", str(phantoms), "--out", str(tmp_path / "cv"), "--folds", "3",
              "--repeats", "1", "--fold", "0", "--repeat", "0", "--preset", "small",
              "--epochs", "1", "--batch-size", "2", "--device", "cpu", "--threads", "1"]  # fmt: skip
    assert _cli(*common)[0] == 0
    metrics = tmp_path / "cv" / "fold0_rep0" / "test_metrics.json"
    first = metrics.stat().st_mtime_ns
    rc, lines, _ = _cli(*common, "--lr", "1e-3")
    assert rc == 2 and len(lines) == 1 and "lr:" in lines[0] and "--force" in lines[0], lines
    assert metrics.stat().st_mtime_ns == first
    assert _cli(*common, "--lr", "1e-3", "--force")[0] == 0
    meta = json.loads((tmp_path / "cv" / "fold0_rep0" / "last.json").read_text())
    assert meta["train_config"]["lr"] == pytest.approx(1e-3)
    second = metrics.stat().st_mtime_ns
    assert _cli(*common, "--lr", "1e-3", "--threads", "2")[0] == 0  # same settings: reused
    assert metrics.stat().st_mtime_ns == second


# ----------------------------------------------------------------------- warnings, stderr
NOISY = """
import sys, warnings
import covseg.inference.outputs as outputs
from covseg.cli import main
real = outputs.write_mask
def noisy(*args, **kwargs):
    warnings.warn("overflow encountered in cast", RuntimeWarning, stacklevel=1)
    return real(*args, **kwargs)
outputs.write_mask = noisy
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_library_warnings_never_reach_stderr(checkpoint, tmp_path, verbose):
    """A warning raised inside a CLI run stays off stderr (in the debug log with -v)."""
    scan = _scan(tmp_path / "scan.nii.gz")
    argv = ["segment", str(scan), "--out", str(tmp_path / "out"), "--checkpoint",
            str(checkpoint), "--device", "cpu"]  # fmt: skip
    if verbose:
        argv.insert(0, "-v")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(
        [sys.executable, "-c", NOISY, *argv], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert ("overflow encountered" in r.stderr) == verbose, r.stderr


# --------------------------------------------------------------- settings out of range
@pytest.mark.parametrize(
    "flags",
    [
        ["train", "--lr", "-1"],
        ["train", "--batch-size", "0"],
        ["train", "--threads", "-3"],
        ["train", "--dice-loss", "-2"],
        ["train", "--dice-mode", "slice"],
        ["train", "--patience", "-1"],
        ["train", "--pseudo-weight", "-1"],
        ["train", "--fold", "7", "--folds", "5"],
        ["cv", "--repeats", "0"],
        ["cv", "--fold", "9"],
        ["cv", "--repeat", "4", "--repeats", "3"],
    ],
)
def test_settings_out_of_range_are_one_line_before_any_work(flags, tmp_path):
    cmd, *rest = flags
    out = tmp_path / "run"
    rc, lines, _ = _cli(cmd, "--data", str(tmp_path / "none"), "--out", str(out), *rest)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"covseg {cmd}: error:"), lines
    assert not out.exists()


def test_serve_refuses_a_non_positive_upload_limit():
    rc, lines, _ = _cli("serve", "--max-upload-mb", "0")
    assert rc == 2 and lines == [
        "covseg serve: error: argument --max-upload-mb: must be at least 1, got 0 "
        "(see covseg serve --help)"
    ]
