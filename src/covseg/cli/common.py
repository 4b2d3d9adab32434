"""What the command groups share: the runner type, the argument parser with one-line errors,
and the argument types (comma-separated lists, bounded numbers)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

#: The most slices per forward pass a ``--batch-size`` may ask for.
MAX_BATCH = 1024
#: Random seeds (numpy's generators take 0..2**32-1).
SEEDS = (0, 2**32 - 1)

#: What a sub-command's ``add_*`` returns: the function that runs it on the parsed arguments.
Runner = Callable[[argparse.Namespace], int]


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (an argparse ``type``)."""
    return [t.strip() for t in text.split(",") if t.strip()]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors (unknown flag, missing argument, a value out of
    range) are one stderr line and exit code 2, like covseg's own errors; ``--help`` shows the
    usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def bounded_int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``lo..hi`` (no upper bound when ``hi`` is None).

    Raises:
        argparse.ArgumentTypeError: not an integer, or out of range (argparse reports it as one
            line naming the flag, exit code 2, before any work).
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {_range(lo, hi)}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def bounded_float(
    lo: float, hi: float | None = None, *, open_lo: bool = False, open_hi: bool = False
) -> Callable[[str], float]:
    """An argparse ``type``: a finite float between ``lo`` and ``hi`` (no upper bound when
    ``hi`` is None), each end excluded when ``open_lo``/``open_hi``.

    Raises:
        argparse.ArgumentTypeError: not a finite number, or out of range.
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        low_ok = value > lo if open_lo else value >= lo
        high_ok = hi is None or (value < hi if open_hi else value <= hi)
        if not (math.isfinite(value) and low_ok and high_ok):
            left = f"({lo:g}" if open_lo else f"[{lo:g}"
            right = "inf)" if hi is None else (f"{hi:g})" if open_hi else f"{hi:g}]")
            raise argparse.ArgumentTypeError(f"must be in {left}, {right}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def _range(lo: int, hi: int | None) -> str:
    return f"in {lo}..{hi}" if hi is not None else f"at least {lo}"
