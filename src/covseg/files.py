"""File plumbing shared by every writer: atomic files and folders with the usual permissions.

Every output of covseg is written under a temporary name in its destination folder and renamed
when complete (``os.replace`` is atomic within a file system), so a reader — or a rerun after a
kill — sees either the previous file or the new one, never half of one. ``mkstemp`` creates files
``0600``; outputs get what a plain ``open()`` would give (``0666`` less the umask).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "file_mode", "temporary_dir", "write_json", "write_text"]


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would, for every thread at
    once); ``0o022`` where ``/proc`` cannot tell."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def file_mode() -> int:
    """``0o666`` less the umask: the mode ``open()`` gives a new file."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary file next to ``path``; renamed to ``path`` when the block succeeds.

    Args:
        path: the destination (its folder is created).
        suffix: suffix of the temporary name (writers that pick the format by suffix need it,
            e.g. ``".nii.gz"``).

    Yields:
        The temporary path to write. On an exception it is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    """Write ``data`` as JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=indent))


@contextlib.contextmanager
def temporary_dir(parent: str | Path, prefix: str, suffix: str = ".partial") -> Iterator[Path]:
    """A private temporary folder inside ``parent`` (created), removed with what is left in it
    when the block ends, whatever happens."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
