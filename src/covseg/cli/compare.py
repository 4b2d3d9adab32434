"""``covseg compare-scans``: the follow-up of one patient, from two ``covseg segment`` results."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from covseg.cli.common import Runner
from covseg.errors import CovsegError

#: What ``--out`` may end with.
FORMATS = (".json", ".csv")


def add_compare_scans(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser(
        "compare-scans",
        help="the change in infection between two scans of one patient (JSON or CSV)",
        description="Compare two `covseg segment` results of one patient: the change in lung "
        "and infected volume (mL) and in the percentage of lung infected, both lungs, left and "
        "right. Where both infection masks are beside the reports, also the infection that is "
        "new, resolved and persisting, the second mask put on the first scan's voxels by the "
        "scans' physical coordinates (with --register, after a rigid registration of the scans: "
        "SimpleITK, pip install 'covseg[followup]').",
    )
    p.add_argument("before", help="the earlier case: its *_report.json, output prefix or folder")
    p.add_argument("after", help="the later case, named the same way")
    p.add_argument("--out", help="FILE.json or FILE.csv (default: JSON on stdout)")
    p.add_argument(
        "--register",
        action="store_true",
        help="align the scans rigidly first (the patient lay differently)",
    )
    p.add_argument(
        "--scans",
        nargs=2,
        metavar=("BEFORE_SCAN", "AFTER_SCAN"),
        help="the scans that were segmented, for --register (default: the reports' inputs)",
    )
    return _run_compare_scans


def _run_compare_scans(args: argparse.Namespace) -> int:
    from covseg.files import write_text
    from covseg.followup import compare_cases, find_case

    if args.out is not None and Path(args.out).suffix.lower() not in FORMATS:
        raise CovsegError(f"{args.out}: --out must end with .json or .csv")
    if args.scans is not None and not args.register:
        raise CovsegError("--scans is for --register")
    scans = args.scans or (None, None)
    before, after = (find_case(c, s) for c, s in zip((args.before, args.after), scans, strict=True))
    change = compare_cases(before, after, register=args.register)
    for note in change.notes:
        print(f"covseg compare-scans: warning: {note}", file=sys.stderr)
    if args.out is None:
        print(json.dumps(change.to_dict(), indent=1))
        return 0
    if Path(args.out).suffix.lower() == ".csv":
        text = io.StringIO()
        rows = [row | {"notes": "; ".join(change.notes)} for row in change.to_rows()]
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(args.out, text.getvalue())
    else:
        write_text(args.out, json.dumps(change.to_dict(), indent=1) + "\n")
    print(f"{args.out}: {change.before} -> {change.after}")
    return 0
