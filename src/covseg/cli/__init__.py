"""The ``covseg`` command line.

Each sub-command only parses arguments and calls one typed function of the library (the nnU-Net
habit), so everything the CLI does is also an API. A :class:`~covseg.errors.CovsegError` becomes
one line on stderr and exit code 2; no traceback reaches the user.

argparse (stdlib) rather than typer/click: no extra dependency, and full control over the one-line
error + exit-code contract.

The commands are grouped by job, one module each: ``demo`` (model-info, demo), ``data`` (prepare,
synth), ``train`` (train, cv, report, ensemble), ``calibrate``, ``segment`` (evaluate, segment,
export-onnx), ``compare`` (compare-scans) and ``serve``; this module assembles the parser and runs
a command under the error contract.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from covseg._version import __version__
from covseg.cli.calibrate import add_calibrate
from covseg.cli.common import Parser, Runner
from covseg.cli.compare import add_compare_scans
from covseg.cli.data import add_prepare, add_synth
from covseg.cli.demo import add_demo, add_model_info
from covseg.cli.segment import add_evaluate, add_export_onnx, add_segment
from covseg.cli.serve import add_serve
from covseg.cli.train import add_average, add_cv, add_ensemble, add_report, add_train
from covseg.errors import CovsegError

__all__ = ["main"]


# Sub-commands in the order `covseg --help` lists them.
COMMANDS: list[Callable[[argparse._SubParsersAction], Runner]] = [
    add_model_info,
    add_demo,
    add_prepare,
    add_synth,
    add_train,
    add_cv,
    add_report,
    add_evaluate,
    add_segment,
    add_export_onnx,
    add_ensemble,
    add_average,
    add_calibrate,
    add_compare_scans,
    add_serve,
]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Runner]]:
    parser = Parser(  # one-line errors, as every covseg error (subparsers inherit the class)
        prog="covseg", description="Lung and COVID-19 infection segmentation in chest CT."
    )
    parser.add_argument("--version", action="version", version=f"covseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runners: dict[str, Runner] = {}
    for add in COMMANDS:
        before = set(sub.choices)
        runner = add(sub)
        for name in set(sub.choices) - before:
            runners[name] = runner
    return parser, runners


#: Commands that only run inference, where transparent huge pages pay (see :func:`main`).
HUGE_PAGE_COMMANDS = frozenset({"segment", "evaluate"})


def main(argv: Sequence[str] | None = None) -> int:
    parser, runners = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a one-line usage error (exit code 2)
        return done.code if isinstance(done.code, int) else 2
    if args.command in HUGE_PAGE_COMMANDS and "torch" not in sys.modules:
        # PyTorch reads this once, at its first CPU allocation. Inference re-allocates its
        # full-resolution activations layer after layer; with 4 KiB pages the page faults took
        # ~55 s of system time in a ~78 s `segment` of 512x512x300 (huge pages: ~55 s wall;
        # BENCHMARKS.md). Training is slower with them (benchmarks/train_step.py), so only here.
        # THP_MEM_ALLOC_ENABLE=0 opts out.
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    # Library warnings (numpy overflow, PIL, pydicom, ...) go to the log at debug level, never
    # around the one-line error: shown with --verbose only.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return runners[args.command](args)
    except CovsegError as err:
        # One line, whatever a wrapped library message contained.
        print(f"covseg {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno is None:
            raise
        # A file system refusal (full disk, read-only folder, ...) met after the checks.
        where = f"{err.filename}: " if err.filename else ""
        print(f"covseg {args.command}: error: {where}{err.strerror}", file=sys.stderr)
        return 2
    except Terminated:
        print("covseg: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("covseg: interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` removes its temporary files."""


def _terminated(signum: int, frame: Any) -> None:
    # An exception raised inside a finaliser (``__del__``, run by the garbage collector at any
    # bytecode) is printed and swallowed, and the process would go on: deliver the signal
    # again a moment later, outside it.
    f = frame
    while f is not None:
        if f.f_code.co_name == "__del__":
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
            return
        f = f.f_back
    raise Terminated
