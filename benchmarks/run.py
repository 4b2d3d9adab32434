#!/usr/bin/env python
"""covseg benchmarks: every figure of BENCHMARKS.md from one command, on one machine.

    python benchmarks/run.py --json benchmarks/results.json          # full (make bench)
    python benchmarks/run.py --json /tmp/quick.json --quick           # sanity run, < 2 min idle

Measured in one run (each section can be picked with ``--sections``):

- ``peak``: fp32 matmul GFLOP/s (the achievable peak) and the theoretical peak from lscpu flags;
- ``models``: FLOPs per slice (FlopCounterMode), training throughput (forward + backward + Adam
  step) and inference throughput (eval, ``torch.inference_mode``) of the ``fast`` (when
  ``PRESETS`` has it), ``small`` and ``paper`` presets and of two MONAI peers (``BasicUNet``;
  ``UNet`` of about the small preset's size), each with its ratio to BasicUNet: BasicUNet is
  measured before and after every other model (interleaved) and the ratio uses the mean of the
  two;
- ``segment``: ``covseg segment`` end to end on a synthetic 512x512x300 HU NIfTI, wall time and
  peak RSS of the subprocess (``getrusage`` of the child, exact), alternating with its
  reference, MONAI BasicUNet's bare forward passes over the same 300 slices at 256² (fresh
  process, only the forward loop timed); ratio segment wall / reference; ``--tta`` too
  (``--no-segment-tta`` skips it);
- ``cohort``: ``covseg segment`` over many cases (:mod:`bench_cohort`): the per-slice time of a
  folder of PNG slices vs a volume of as many slices (issue 36: at most 2x), a cohort of
  synthetic volumes with ``--jobs 1`` and ``--jobs 2``, and a SIGKILL mid-run + rerun check;
- ``prepare``: ``covseg prepare`` on a synthetic zenodo20 dataset, seconds per case;
- ``profile``: top ops of one small-preset training step (torch.profiler) -> a text file.

Throughputs are the median of several timed iterations after warm-up. The load average is
recorded before and after every section: figures taken on a busy machine are not comparable.
Writes ``--json`` (all figures + machine info), ``<json stem>.md`` (the Markdown tables, also
printed) and ``<json stem>_profile.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench_cohort import section_cohort
from bench_common import loadavg, log, machine_info, settings
from bench_models import section_models, section_peak
from bench_profile import section_profile
from bench_report import markdown, targets
from bench_segment import section_prepare, section_segment

# This file parses the options and runs the sections; each section lives in its own module:
# bench_models (peak, models), bench_segment (segment, prepare), bench_profile (profile),
# bench_report (the Markdown tables and the targets); bench_common holds what they share.
SECTIONS = ("peak", "models", "segment", "cohort", "prepare", "profile")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--json", required=True, type=Path, help="output JSON (all figures)")
    p.add_argument("--quick", action="store_true", help="small sizes, few iterations (sanity)")
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="cpu: CPU only; cuda: CPU plus CUDA columns; auto (default): cuda when available",
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch threads (default: all CPUs); also OMP_NUM_THREADS of the segment and "
        "reference processes",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="times the interleaved model sequence is repeated; rows are medians (default: 3, "
        "--quick 1)",
    )
    p.add_argument(
        "--segment-tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time `covseg segment --tta` (default on; --no-segment-tta skips it)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    args.threads = max(1, args.threads)
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    devices = ["cpu", "cuda", "cuda-bf16"] if cuda else ["cpu"]
    cfg = settings(args.quick)
    if args.rounds is not None:
        if args.rounds < 1:
            raise SystemExit(f"--rounds {args.rounds}: must be at least 1")
        cfg["rounds"] = args.rounds
    res: dict[str, Any] = {
        "quick": args.quick,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "machine": machine_info(),
        "loadavg": {"start": loadavg()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if res["loadavg"]["start"] and res["loadavg"]["start"] > 0.5 * res["machine"]["cpu_count"]:
        log(f"WARNING: load average {res['loadavg']['start']} — timings will be distorted")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    # Results are written after every section, so a section that dies keeps the earlier ones.
    run_sections = [
        ("peak", lambda tmp: section_peak(cfg, devices)),
        ("models", lambda tmp: section_models(cfg, devices, res.get("peak") or {})),
        (
            "segment",
            lambda tmp: section_segment(cfg, devices, tmp, args.threads, args.segment_tta),
        ),
        ("cohort", lambda tmp: section_cohort(args.quick, tmp, args.threads)),
        ("prepare", lambda tmp: section_prepare(cfg, tmp)),
        (
            "profile",
            lambda tmp: section_profile(cfg, torch.device("cpu"), _side(args.json, "_profile.txt")),
        ),
    ]
    if cuda:
        run_sections.append(
            (
                "profile_cuda",
                lambda tmp: section_profile(
                    cfg, torch.device("cuda"), _side(args.json, "_profile_cuda.txt")
                ),
            )
        )
    wanted = set(sections) | ({"peak"} if "models" in sections else set())
    wanted |= {"profile_cuda"} if "profile" in sections else set()
    with tempfile.TemporaryDirectory(prefix="covseg-bench-") as tmp_name:
        for name, run in run_sections:
            if name not in wanted:
                continue
            log(f"section {name} ...")
            res[name] = run(Path(tmp_name))
            res["loadavg"][name] = loadavg()
            write_results(res, args.json)
    write_results(res, args.json)
    print(res["markdown"])
    return 0


def _side(json_path: Path, suffix: str) -> Path:
    return json_path.with_name(json_path.stem + suffix)


def write_results(res: dict[str, Any], json_path: Path) -> None:
    """The JSON and the Markdown tables of what has been measured so far."""
    res["targets"] = targets(res)
    res["markdown"] = markdown(res)
    json_path.write_text(json.dumps(res, indent=1))
    json_path.with_suffix(".md").write_text(res["markdown"])


if __name__ == "__main__":
    sys.exit(main())
