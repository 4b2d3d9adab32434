"""The ``cohort`` section: ``covseg segment`` over many cases, in fresh processes.

- ``slices_vs_volume``: the per-slice time of a folder of PNG slices (``covseg synth --layout
  slices``: one case per picture) against that of one volume with the same slice count and
  side, measured alternately in the same run; issue 36 asks for a ratio of at most 2.
- ``jobs``: a cohort of synthetic volumes (``covseg synth``) with ``--jobs 1`` and ``--jobs 2``:
  total and per-case wall time. (Peak RSS and CPU times are those of the main process and its
  direct children: ``--jobs`` workers come from the forkserver and are not counted.)
- ``kill_rerun``: the same cohort with ``--jobs 2``, SIGKILLed (the whole process group, workers
  included) once some cases are written, then run again: every case must be written exactly
  once (the reports of the killed run untouched, the rest new), the cohort table complete, and
  nothing hidden left in the output folder.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_common import log
from bench_segment import _child_env, benchmark_checkpoint, measured_run


def cohort_settings(quick: bool) -> dict[str, Any]:
    """Sizes of the section (``quick``: a sanity run of a few seconds of work)."""
    if quick:
        return {"slices": 12, "side": 64, "cases": 6, "case_slices": 4, "case_side": 32}
    return {"slices": 300, "side": 512, "cases": 50, "case_slices": 16, "case_side": 128}


def _synth(out: Path, layout: str, cases: int, slices: int, side: int) -> Path:
    cmd = [sys.executable, "-m", "covseg", "synth", str(out), "--layout", layout]
    cmd += ["--cases", str(cases), "--slices", str(slices), "--size", str(side)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def _segment_cmd(inputs: Path, out: Path, ckpt: Path | str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "covseg", "segment", str(inputs), "--out", str(out),
            "--checkpoint", str(ckpt), "--device", "cpu", *flags]  # fmt: skip


def slices_vs_volume(cfg: dict, tmp: Path, ckpt: Path | str, env: dict) -> dict[str, Any]:
    """Per-slice wall time of a PNG slice folder and of a volume of as many slices."""
    from bench_segment import write_volume

    n, side = cfg["slices"], cfg["side"]
    pngs = _synth(tmp / "png_slices", "slices", 1, n, side) / "images"
    vol = tmp / "cohort_volume.nii.gz"
    write_volume((side, side, n), vol)
    runs: dict[str, list[dict[str, Any]]] = {"png_folder": [], "volume": []}
    for _ in range(2):  # alternate: both see the same machine
        for key, src in (("png_folder", pngs), ("volume", vol)):
            out = tmp / f"out_{key}"
            shutil.rmtree(out, ignore_errors=True)
            runs[key].append(measured_run(_segment_cmd(src, out, ckpt), tmp, env=env))
            log(f"cohort {key}: {runs[key][-1]}")
    best = {k: min(r["wall_s"] for r in v) for k, v in runs.items()}
    per_slice = {k: round(v / n, 4) for k, v in best.items()}
    return {
        "slices": n,
        "side": side,
        "rc": max(r["rc"] for v in runs.values() for r in v),
        "wall_s": best,
        "per_slice_s": per_slice,
        "ratio_png_to_volume": round(per_slice["png_folder"] / per_slice["volume"], 2),
        "target_ratio": 2.0,
    }


def jobs_runs(cfg: dict, cases: Path, tmp: Path, ckpt: Path | str, env: dict) -> dict[str, Any]:
    """Total and per-case wall time of the cohort with ``--jobs 1``, ``--jobs 2`` and
    ``--scheduler local:2`` (a Dask ``LocalCluster`` of two workers)."""
    res = {}
    for key, flags in (
        ("--jobs 1", ["--jobs", "1"]),
        ("--jobs 2", ["--jobs", "2"]),
        ("--scheduler local:2", ["--scheduler", "local:2"]),
    ):
        out = tmp / f"out_{key.strip('-').replace(' ', '_').replace(':', '')}"
        shutil.rmtree(out, ignore_errors=True)
        r = measured_run(_segment_cmd(cases, out, ckpt, *flags), tmp, env=env)
        r["per_case_s"] = round(r["wall_s"] / cfg["cases"], 3)
        res[key] = r
        log(f"cohort {key}: {r}")
    return res


def kill_rerun(cfg: dict, cases: Path, tmp: Path, ckpt: Path | str, env: dict) -> dict[str, Any]:
    """SIGKILL a ``--jobs 2`` batch in the middle, rerun it; check every case done once."""
    out = tmp / "out_kill"
    cmd = _segment_cmd(cases, out, ckpt, "--jobs", "2")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    want = max(1, cfg["cases"] // 3)
    while len(list(out.glob("*_report.json"))) < want and proc.poll() is None:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):  # finished before: measured all the same
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*_report.json")}
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    rerun = measured_run(cmd, tmp, env=env)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*_report.json")}
    with open(out / "cohort.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ok = (
        rerun["rc"] == 0
        and len(after) == cfg["cases"]
        and all(after[k] == v for k, v in before.items())
        and len(rows) == cfg["cases"]
        and sum(r["status"] == "skipped" for r in rows) == len(before)
        and all(r["status"] in ("done", "skipped") for r in rows)
        and not [p for p in out.iterdir() if p.name.startswith(".")]
    )
    res = {
        "killed_after_cases": len(before),
        "hidden_left_by_kill": len(leftovers),
        "rerun_wall_s": rerun["wall_s"],
        "every_case_once": ok,
    }
    log(f"cohort kill + rerun: {res}")
    return res


def section_cohort(quick: bool, tmp: Path, threads: int) -> dict[str, Any]:
    """The three measurements of the module docstring."""
    cfg = cohort_settings(quick)
    ckpt, ckpt_desc = benchmark_checkpoint(tmp)
    env = _child_env(threads)
    res: dict[str, Any] = {**cfg, "checkpoint": ckpt_desc, "threads": threads}
    res["slices_vs_volume"] = slices_vs_volume(cfg, tmp, ckpt, env)
    cases = _synth(tmp / "cohort", "zenodo20", cfg["cases"], cfg["case_slices"], cfg["case_side"])
    cases = cases / "COVID-19-CT-Seg_20cases"
    res["jobs"] = jobs_runs(cfg, cases, tmp, ckpt, env)
    res["kill_rerun"] = kill_rerun(cfg, cases, tmp, ckpt, env)
    return res


def cohort_markdown(c: dict[str, Any]) -> list[str]:
    """The section's lines of the Markdown report."""
    sv, jobs, kr = c["slices_vs_volume"], c["jobs"], c["kill_rerun"]
    lines = [
        f"`covseg segment` over many cases ({c['checkpoint']}): a folder of {sv['slices']} PNG "
        f"slices {sv['side']}² {sv['per_slice_s']['png_folder']:.3f} s/slice vs a "
        f"{sv['side']}²×{sv['slices']} volume {sv['per_slice_s']['volume']:.3f} s/slice: "
        f"**{sv['ratio_png_to_volume']:.2f}×** (best of 2 each, alternating).",
        "",
        "| cohort of synthetic volumes | cases | wall s | s/case | peak RSS MB (main process) |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, r in jobs.items():
        lines.append(
            f"| `{key}` | {c['cases']} | {r['wall_s']:.1f} | "
            f"{r['per_case_s']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        f"Kill (SIGKILL, `--jobs 2`) after {kr['killed_after_cases']} of {c['cases']} cases, "
        f"rerun {kr['rerun_wall_s']:.1f} s: every case written once, table complete, nothing "
        f"left: **{'yes' if kr['every_case_once'] else 'NO'}**.",
        "",
    ]
    return lines


def cohort_targets(c: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """Issue 36's targets: PNG slices at most 2x a volume's per-slice time; kill + rerun."""
    sv = c["slices_vs_volume"]
    return [
        {
            "target": "PNG slice folder ≤ 2× the per-slice time of a volume",
            "measured": f"{sv['ratio_png_to_volume']:.2f}×{' (quick)' if quick else ''}",
            "ok": None if quick else sv["rc"] == 0 and sv["ratio_png_to_volume"] <= 2.0,
        },
        {
            "target": "cohort killed mid-run + rerun: every case once, table complete",
            "measured": "yes" if c["kill_rerun"]["every_case_once"] else "no",
            "ok": c["kill_rerun"]["every_case_once"],
        },
    ]
