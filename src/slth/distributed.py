"""Dask: the cluster a run's chunks go to, and how they are handed out.

``--workers N`` starts a ``LocalCluster`` of N single-threaded worker processes on this machine;
``--scheduler tcp://HOST:PORT`` connects to a running cluster (``dask scheduler`` plus
``dask worker`` processes, or dask-jobqueue on SLURM; see docs/distributed.md). Workers need the
same slth installed: tasks name slth functions, they do not ship code. A task carries its chunk's
rows of the target and returns only the chunk's answers; the client writes them to the run folder,
so workers need no shared file system.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterable, Iterator

from .errors import SlthError

CONNECT_TIMEOUT_S = 3


@contextlib.contextmanager
def client_for(workers: int | None = None, scheduler: str | None = None,
               timeout: float = CONNECT_TIMEOUT_S):
    """A ``dask.distributed.Client``: a new LocalCluster of ``workers`` processes (one thread
    each), or the cluster at ``scheduler``. Closed (and the LocalCluster stopped) on exit."""
    from dask.distributed import Client, LocalCluster

    if (workers is None) == (scheduler is None):
        raise SlthError("give one of --workers N (a local cluster) or --scheduler tcp://HOST:PORT")
    if scheduler is not None:
        probe(scheduler, timeout)
        with Client(scheduler, timeout=timeout, set_as_default=False) as client:
            yield client
        return
    if workers < 1:
        raise SlthError(f"--workers must be >= 1, got {workers}")
    import dask

    # Dask sets MALLOC_TRIM_THRESHOLD_=65536 for its workers: glibc then gives memory back after
    # nearly every large temporary (and stops raising its mmap threshold), so temporaries are
    # page-faulted afresh each time. Measured on 2 cores: chunks 6% slower, and the gradient
    # ascent 6% slower alone, 12% with two workers side by side. Arrays over 32 MiB are still
    # mapped and returned at once; the heap is trimmed past 256 MiB free.
    env = "distributed.nanny.pre-spawn-environ"
    with dask.config.set({f"{env}.MALLOC_MMAP_THRESHOLD_": 1 << 25,
                          f"{env}.MALLOC_TRIM_THRESHOLD_": 1 << 28}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", silence_logs=logging.ERROR)
    with cluster, Client(cluster, set_as_default=False) as client:
        yield client


def probe(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ``SlthError`` within about ``timeout`` seconds unless a Dask scheduler answers at
    ``address``. Asks for its identity over Dask's own protocol before any ``Client`` exists (a
    failed ``Client`` retries until its timeout, then spends more seconds closing itself)."""
    import asyncio
    import socket

    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    async def identity():
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await asyncio.wait_for(comm.read(), timeout)
        finally:
            comm.abort()

    not_dask = "something answered, but not a Dask scheduler"
    try:
        scheme, loc = parse_address(address)
        if scheme == "tcp":   # a refused port fails here at once (Dask would retry until timeout)
            socket.create_connection(parse_host_port(loc), timeout=timeout).close()
        reply = asyncio.run(asyncio.wait_for(identity(), 2 * timeout))
        if not (isinstance(reply, dict) and reply.get("type") == "Scheduler"):
            raise ValueError(not_dask)
    except Exception as e:  # whatever went wrong, no scheduler is there to use
        lines = str(e).strip().splitlines()
        why = not_dask if isinstance(e, MemoryError) else lines[0] if lines else type(e).__name__
        raise SlthError(f"cannot reach a Dask scheduler at {address} ({why}); start one with "
                        "'dask scheduler' or check the address") from None


def n_workers(client) -> int:
    """Workers currently attached to the client's scheduler."""
    return len(client.scheduler_info(n_workers=-1)["workers"])


class Pool:
    """Where a run's tasks go: this process, one after another (``client`` None), or the Dask
    cluster behind ``client``. ``shared_fs``: the tasks see this process's files (this process,
    or local workers), so they may write their results into its files themselves."""

    def __init__(self, client=None, shared_fs: bool = True):
        self.client = client
        self.shared_fs = shared_fs

    def share(self, obj):
        """``obj`` as task arguments should carry it: itself here; on Dask, a future of one
        copy per worker (sent once, not once per task)."""
        if self.client is None:
            return obj
        import uuid
        key = f"slth-shared-{uuid.uuid4().hex}"
        return self.client.scatter({key: obj}, broadcast=True, hash=False)[key]

    def map(self, jobs: Iterable, call_of: Callable) -> Iterator[tuple[object, object]]:
        """``fn(*args)`` for ``fn, args = call_of(job)``, every job; yields ``(job, result)``
        as they finish."""
        if self.client is not None:
            yield from run_tasks(self.client, jobs, call_of)
            return
        for job in jobs:
            fn, args = call_of(job)
            yield job, fn(*args)


@contextlib.contextmanager
def pool_for(workers: int | None = None, scheduler: str | None = None,
             on_start: Callable | None = None):
    """A ``Pool``: this process when neither ``workers`` nor ``scheduler`` is given, else the
    cluster of ``client_for`` (``on_start(client)`` is called once it is up)."""
    if not (workers or scheduler):
        yield Pool()
        return
    with client_for(workers, scheduler) as client:
        if on_start is not None:
            on_start(client)
        yield Pool(client, shared_fs=bool(workers))


def run_tasks(client, jobs: Iterable, call_of: Callable) -> Iterator[tuple[object, object]]:
    """Run ``fn(*args)`` for ``fn, args = call_of(job)`` on the cluster for every job; yield
    ``(job, result)`` in the order they finish. Tasks depend on nothing but their arguments, so
    Dask reruns the task (or recomputes the result) of a lost worker elsewhere; an error raised by
    a task, or a task that killed three workers, stops the run (finished chunks stay on disk)."""
    from dask.distributed import as_completed
    from distributed.scheduler import KilledWorker

    futures = {}
    for job in jobs:
        fn, args = call_of(job)
        futures[client.submit(fn, *args, pure=False)] = job
    try:
        for fut in as_completed(futures, loop=client.loop):
            try:
                result = fut.result()
            except KilledWorker as e:
                raise SlthError(f"Dask workers kept dying on one chunk ({e}); check their memory, "
                                "then run the same command again to resume") from None
            yield futures.pop(fut), result
    finally:
        if futures:
            client.cancel(list(futures))
