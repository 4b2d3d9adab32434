#!/usr/bin/env python
"""A hostile user's probe of the ``covseg`` CLI: odd, broken, huge and tricky inputs, each run
in a fresh subprocess, classified by what a user sees.

Every scenario builds its files in a temporary folder and runs one command (``covseg segment``
with a tiny random-init checkpoint unless it says otherwise), with a wall-clock limit and the
peak RSS of the child measured (``resource.getrusage(RUSAGE_CHILDREN)``). Outcomes:

- ``ok``: exit 0 and the scenario's check of the result passed (the right masks' shape, ...);
- ``error``: exit 2 with exactly one stderr line that names the file and the problem;
- ``BAD``: anything else: a traceback, another exit code, several lines, a hang (timeout), a
  wrong result, files left behind (``.partial`` / temporary folders), more than 1 GB.

    .venv/bin/python benchmarks/hostile.py            # the table; exit 1 if any BAD
    .venv/bin/python benchmarks/hostile.py --only fifo,nifti_4gib_claim
    .venv/bin/python benchmarks/hostile.py --limit-s 300   # a loaded machine: start-up is slow

The scenarios are the examples of the reliability issues (round two, and round three: issue 39),
one module per theme: ``hostile_files`` (files, names, sizes, checkpoints), ``hostile_data``
(geometry, intensities), ``hostile_commands`` (report, train, cv) and ``hostile_inputs`` (inputs
hidden beside others, slow junk, zips, options out of range, units, EXIF orientation); the
registry and shared builders are in ``hostile_common``. The tests in
``tests/test_reliability_*.py`` cover the classes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hostile_commands  # noqa: F401  (each module registers its scenarios)
import hostile_data  # noqa: F401
import hostile_files  # noqa: F401
import hostile_inputs  # noqa: F401
from hostile_common import ROOT, SCENARIOS, Scenario

LIMIT_S = 60
LIMIT_RSS_MB = 1024


def run(sc: Scenario, ckpt: Path, limit_s: float = LIMIT_S) -> tuple[str, str, float, float]:
    """``(outcome, detail, seconds, peak RSS MB)`` of one scenario, given ``limit_s`` seconds."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        argv = sc.build(tmp, ckpt)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        code = (
            "import resource, subprocess, sys; "
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stdout.write(r.stderr); "
            "print('\\n@@', r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        t0 = time.perf_counter()
        try:
            p = subprocess.run(
                [sys.executable, "-c", code, sys.executable, "-m", "covseg", *argv],
                capture_output=True, text=True, timeout=limit_s, env=env, cwd=tmp,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return "BAD", f"no answer within {limit_s:g} s", limit_s, float("nan")
        secs = time.perf_counter() - t0
        body, _, tail = p.stdout.rpartition("\n@@ ")
        rc, rss_kb = (int(v) for v in tail.split())
        rss = rss_kb / 1024
        lines = [ln.split("\r")[-1] for ln in body.split("\n")]
        lines = [ln for ln in lines if ln.strip()]
        out = tmp / "out"
        left = []
        for folder in (tmp, out) if out.is_dir() else (tmp,):
            left += [p.name for p in folder.iterdir() if p.name.endswith(".partial")]
        if rss > LIMIT_RSS_MB:
            return "BAD", f"peak RSS {rss:.0f} MB", secs, rss
        if left:
            return "BAD", f"left {left}", secs, rss
        if sc.expect == "ok":
            if rc != 0:
                return "BAD", f"exit {rc}: {lines[-1] if lines else ''}", secs, rss
            if sc.check is not None and not sc.check(out):
                return "BAD", "exit 0 but a wrong result", secs, rss
            return "ok", "", secs, rss
        if rc == 2 and len(lines) == 1 and "error:" in lines[0]:
            return "error", lines[0], secs, rss
        return "BAD", f"exit {rc}, {len(lines)} line(s): {' | '.join(lines)[-300:]}", secs, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument(
        "--limit-s",
        type=float,
        default=LIMIT_S,
        help=f"seconds per scenario ({LIMIT_S}; more on a loaded machine)",
    )
    args = ap.parse_args()
    from segment_tiny import save_tiny_checkpoint

    chosen = SCENARIOS
    if args.only:
        names = set(args.only.split(","))
        chosen = [s for s in SCENARIOS if s.name in names]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        ckpt = save_tiny_checkpoint(Path(d) / "tiny.safetensors")
        for sc in chosen:
            outcome, detail, secs, rss = run(sc, ckpt, args.limit_s)
            rows.append({"name": sc.name, "what": sc.what, "outcome": outcome, "detail": detail,
                         "seconds": round(secs, 2), "peak_rss_mb": round(rss, 1)})  # fmt: skip
            print(f"{outcome:5s} {sc.name:22s} {secs:5.1f} s {rss:6.0f} MB  {detail[:150]}",
                  flush=True)  # fmt: skip
    bad = sum(r["outcome"] == "BAD" for r in rows)
    print(f"\n{len(rows)} scenarios: {sum(r['outcome'] == 'ok' for r in rows)} ok, "
          f"{sum(r['outcome'] == 'error' for r in rows)} clean errors, {bad} BAD")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
