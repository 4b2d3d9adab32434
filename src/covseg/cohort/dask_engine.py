"""A batch's cases on a Dask distributed cluster (``covseg segment --scheduler ADDRESS``).

The engine (:data:`~covseg.cohort.engine.Engine`) submits :func:`~covseg.cohort.engine.run_cases`
once per chunk to a scheduler (``Client.submit(..., pure=False)``) and yields the outcomes as the
chunks finish (``as_completed``). Dask does the rest: it places the chunks on the workers, and
when a worker dies mid-case (killed, out of memory, its node gone) it runs the chunk again
elsewhere; the cases of that chunk that the lost worker had finished are found complete and
skipped (:func:`~covseg.cohort.status.is_done`), since every case's files are renamed into the
shared output folder as one set. A chunk that has lost :data:`ALLOWED_FAILURES` + 1 workers is
given up (``KilledWorker``): its cases become failed outcomes and the batch goes on.

Each worker gets a :class:`distributed.WorkerPlugin` (built by :func:`worker_plugin`) that
loads the model when the worker starts, quiets library warnings and sets its torch threads,
as the process engine's initializer does. A plugin rather than loading at the first chunk alone
(:func:`~covseg.cohort.engine.segmenter_for` caches it per process either way) because the
threads must be set before any case runs, on the first workers and on every worker that joins
or replaces a lost one later; the plugin is registered with the scheduler, which hands it to
each of them.

``--scheduler local:N`` starts a :class:`distributed.LocalCluster` of ``N`` worker processes,
one chunk at a time each, with ``torch threads // N`` torch threads each. Any other value is
the address of a running scheduler (``tcp://host:8786``); there the inputs, ``--out`` and the
checkpoint are passed as absolute paths (the workers do not share this process's working
folder), so the reports name absolute inputs.

``dask``/``distributed`` are the optional ``cluster`` extra, imported only here and only when
a cluster is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from covseg.cohort.engine import Engine, Outcome, failed_outcome, init_worker, run_cases
from covseg.cohort.plan import Settings, Task
from covseg.errors import DataError

__all__ = [
    "ALLOWED_FAILURES",
    "MISSING_EXTRA",
    "cluster_engine",
    "dask_engine",
    "parse_scheduler",
    "require_distributed",
    "worker_plugin",
]

log = logging.getLogger(__name__)

#: The one line when ``dask[distributed]`` is not installed.
MISSING_EXTRA = "--scheduler needs the cluster extra: pip install 'covseg[cluster]'"
#: Workers a chunk may lose before its cases are failed (``distributed.scheduler.allowed-failures``
#: of a ``local:N`` cluster; Dask's default is 3). One lost worker is an accident (a node taken
#: back, a neighbour's job eating the memory); the same chunk killing three is most likely the
#: cause, and each retry costs a worker restart and a model load.
ALLOWED_FAILURES = 2
#: How many workers ``chunk_tasks`` spreads small pictures over on a running scheduler (its
#: size is not known before connecting): chunks of at most ``n / 64`` pictures.
REMOTE_SPREAD = 16
#: Seconds to wait for a running scheduler to answer.
CONNECT_TIMEOUT = 30
#: Address schemes of ``distributed`` (``tcp://host:8786``, ``tls://...``).
SCHEMES = ("tcp", "tls", "ucx", "ws", "wss", "inproc")
#: The most worker processes ``local:N`` may ask for.
MAX_LOCAL = 256


def parse_scheduler(text: str) -> str | int:
    """``--scheduler``: ``"local:N"`` -> ``N`` (worker processes of a LocalCluster); an address
    ``"SCHEME://HOST:PORT"`` -> itself.

    Raises:
        DataError: anything else, naming the value.
    """
    text = str(text).strip()
    if text.startswith("local:"):
        count = text.removeprefix("local:")
        if count.isdigit() and 1 <= int(count) <= MAX_LOCAL:
            return int(count)
    else:
        scheme, sep, rest = text.partition("://")
        if sep and scheme in SCHEMES and rest:
            return text
    raise DataError(
        f"--scheduler {text!r}: expected local:N (1 <= N <= {MAX_LOCAL}) or a scheduler "
        "address such as tcp://HOST:8786"
    )


def require_distributed() -> None:
    """Check that the ``cluster`` extra is installed.

    Raises:
        DataError: it is not (:data:`MISSING_EXTRA`).
    """
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise DataError(MISSING_EXTRA) from None


def cluster_engine(scheduler: str) -> Engine:
    """The engine of ``--scheduler`` (checked before any work).

    Args:
        scheduler: ``"local:N"`` or a scheduler address (:func:`parse_scheduler`).

    Returns:
        :func:`dask_engine` bound to it, with ``jobs`` (what
        :func:`~covseg.cohort.engine.chunk_tasks` spreads pictures over) set to ``N`` or
        :data:`REMOTE_SPREAD`.

    Raises:
        DataError: a bad value, or the extra missing.
    """
    target = parse_scheduler(scheduler)
    require_distributed()
    jobs = target if isinstance(target, int) else REMOTE_SPREAD
    return functools.partial(dask_engine, scheduler=scheduler, jobs=jobs)


def dask_engine(
    chunks: Sequence[Sequence[Task]], settings: Settings, *, scheduler: str, jobs: int = 1
) -> Iterator[Outcome]:
    """Run the chunks on a Dask cluster (see the module docstring).

    Args:
        chunks: the cases, in chunks (:func:`~covseg.cohort.engine.chunk_tasks`).
        settings: the per-case work's settings.
        scheduler: ``"local:N"`` or a running scheduler's address.
        jobs: unused here; :func:`~covseg.cohort.run.segment_cohort` reads it to chunk.

    Returns:
        The outcomes, as the chunks finish.

    Raises:
        DataError: a bad ``scheduler``, or one that cannot be reached.
        KeyboardInterrupt: Ctrl-C or SIGTERM; the chunks not finished are cancelled.
    """
    from distributed import as_completed

    target = parse_scheduler(scheduler)
    threads = None
    if isinstance(target, int):
        import torch

        threads = max(1, torch.get_num_threads() // target)
    else:
        settings, chunks = _absolute(settings, chunks)
    with _client(target) as client:
        level = logging.getLogger().getEffectiveLevel()
        client.register_plugin(worker_plugin(settings, threads, level), name="covseg")
        futures = {
            client.submit(run_cases, list(chunk), settings, pure=False): chunk for chunk in chunks
        }
        try:
            for future in as_completed(list(futures)):
                chunk = futures.pop(future)
                try:
                    outcomes = future.result()
                except Exception as err:  # retries spent (KilledWorker), or a worker's error
                    reason = RuntimeError(f"{type(err).__name__} on the cluster: {err}")
                    outcomes = [failed_outcome(task, reason, settings) for task in chunk]
                yield from outcomes
        finally:
            if futures:  # interrupted: leave the cluster nothing to do for us
                client.cancel(list(futures))


@contextlib.contextmanager
def _client(target: str | int) -> Iterator[Any]:
    """A ``distributed.Client``: of a new LocalCluster of ``target`` workers, or connected to
    the running scheduler at ``target``; closed (and the LocalCluster stopped) on exit."""
    import dask
    from distributed import Client, LocalCluster

    if isinstance(target, int):
        config = {"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}
        with _quiet(logging.WARNING), dask.config.set(config):
            cluster = LocalCluster(
                n_workers=target, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(cluster)
            try:
                yield client
            finally:  # workers slow to stop are killed: nothing to report, the work is done
                with _quiet(logging.ERROR):
                    client.close()
                    cluster.close()
        return
    with _quiet(logging.WARNING):
        try:
            client = Client(target, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as err:
            raise DataError(f"--scheduler {target}: cannot reach the scheduler ({err})") from None
        with client:
            if not client.scheduler_info().get("workers"):
                log.warning("%s: no worker yet; the cases wait for the first to join", target)
            yield client


@contextlib.contextmanager
def _quiet(level: int) -> Iterator[None]:
    """Dask's own log messages below ``level`` hidden (all shown with ``--verbose``)."""
    logger = logging.getLogger("distributed")
    before = logger.level
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(before)


def _absolute(
    settings: Settings, chunks: Sequence[Sequence[Task]]
) -> tuple[Settings, list[list[Task]]]:
    """The settings and tasks with absolute paths (for workers started elsewhere)."""
    checkpoint = settings.checkpoint
    if checkpoint != "pretrained":
        checkpoint = os.path.abspath(checkpoint)
    settings = dataclasses.replace(
        settings, out_dir=os.path.abspath(settings.out_dir), checkpoint=checkpoint
    )
    chunks = [
        [
            dataclasses.replace(
                t,
                input=os.path.abspath(t.input),
                source=t.source and os.path.abspath(t.source),
            )
            for t in chunk
        ]
        for chunk in chunks
    ]
    return settings, chunks


def worker_plugin(settings: Settings, threads: int | None, level: int) -> Any:
    """The :class:`distributed.WorkerPlugin` that prepares each worker as it starts: its torch
    threads (``threads``; ``None``: the worker's own, one under a Dask nanny, which sets
    ``OMP_NUM_THREADS=1``), logging at ``level`` with library warnings quieted, and the model
    of ``settings`` loaded. A model that fails to load there is logged, and each of the
    worker's chunks then fails with the reason."""
    return _plugin_type()(settings, threads, level)


@functools.cache
def _plugin_type() -> type:
    """The plugin class, made on first use: it subclasses ``distributed.WorkerPlugin``, which
    is imported only when a cluster is asked for."""
    from distributed import WorkerPlugin

    class CovsegWorker(WorkerPlugin):
        def __init__(self, settings: Settings, threads: int | None, level: int) -> None:
            self.settings, self.threads, self.level = settings, threads, level

        async def setup(self, worker: Any) -> None:
            # In a thread: importing torch and loading the model would stall the worker's
            # event loop (its heartbeats to the scheduler) for seconds.
            await asyncio.get_running_loop().run_in_executor(None, self.prepare)

        def prepare(self) -> None:
            import torch

            threads = self.threads or torch.get_num_threads()
            try:
                init_worker(self.settings, threads, self.level)
            except Exception as err:
                log.warning("%s: cannot load the model (%s)", Path(self.settings.checkpoint), err)

    return CovsegWorker
