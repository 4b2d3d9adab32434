"""File plumbing shared by every writer: atomic files and folders with the usual permissions.

Every output of covseg is written under a temporary name in its destination folder and renamed
when complete (``os.replace`` is atomic within a file system), so a reader — or a rerun after a
kill — sees either the previous file or the new one, never half of one. ``mkstemp`` creates files
``0600``; outputs get what a plain ``open()`` would give (``0666`` less the umask).

A process holds a ``flock`` on each temporary folder (the folder itself, no lock file) while it
works in it; the kernel drops the lock when the process dies, however it dies, so a later run can
tell the leftovers of a killed run (:func:`remove_stale`) from the folders of a run still in
progress. A temporary folder is made and locked while its parent's lock is held, and
:func:`remove_stale` holds that same lock while it looks: no cleaner ever sees a new folder
before its lock, so the lock alone is the test (no age), and a rerun right after a kill removes
what the killed run left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "file_mode",
    "folder_lock",
    "remove_stale",
    "temporary_dir",
    "write_json",
    "write_text",
]

log = logging.getLogger(__name__)


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

    Raises:
        OSError: a refused write or rename, naming ``path`` where it named the temporary.
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
    except OSError as err:  # name the file asked for: the hidden temporary means nothing
        if str(err.filename) == str(tmp):
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
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
def _flock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the folder ``path`` for the block; yields whether it was
    obtained (always ``True`` when ``blocking``)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` for the short critical sections where a set of files is
    renamed into it as one unit (no lock file is left there)."""
    with _flock(Path(folder)):
        yield


@contextlib.contextmanager
def temporary_dir(parent: str | Path, prefix: str, suffix: str = ".partial") -> Iterator[Path]:
    """A private temporary folder inside ``parent`` (created), removed with what is left in it
    when the block ends, whatever happens. Its lock (module docstring) is taken under the
    parent's lock and held meanwhile, so :func:`remove_stale` leaves it alone. Never call it
    while this process holds :func:`folder_lock` on ``parent`` (it would wait for itself)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        with _flock(parent):
            tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
            try:
                held.enter_context(_flock(tmp))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale(parent: str | Path, prefix: str, suffix: str = ".partial") -> int:
    """Remove the temporary folders ``parent/<prefix>*<suffix>`` that no live process holds
    (left by a killed run, however young); returns how many were removed. The parent's lock is
    held meanwhile (see the module docstring); never call it while this process holds
    :func:`folder_lock` on ``parent``."""
    parent = Path(parent)
    removed = 0
    try:
        with _flock(parent):
            for folder in [p for p in parent.iterdir() if p.name.startswith(prefix)]:
                if not folder.name.endswith(suffix) or folder.is_symlink() or not folder.is_dir():
                    continue
                try:
                    with _flock(folder, blocking=False) as free:
                        if free:
                            shutil.rmtree(folder, ignore_errors=True)
                            removed += 1
                except OSError:  # removed meanwhile by its owner
                    continue
    except OSError:
        return removed
    if removed:
        log.info("%s: removed %d temporary folder(s) left by an interrupted run", parent, removed)
    return removed
