"""What the command groups share: the runner type and the comma-separated list type."""

from __future__ import annotations

import argparse
from collections.abc import Callable

#: What a sub-command's ``add_*`` returns: the function that runs it on the parsed arguments.
Runner = Callable[[argparse.Namespace], int]


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (an argparse ``type``)."""
    return [t.strip() for t in text.split(",") if t.strip()]
