"""The collection steps as Dask tasks: ``--scheduler none|local|local:N|ADDRESS``.

* ``none``: everything in this process (no Dask);
* ``local``: a `distributed.LocalCluster` on this machine, one worker process per GPU,
  else one per `LOCAL_CORES_PER_WORKER` CPU cores; ``local:N``: N workers;
* an address (``tcp://host:8786``): a running cluster whose workers see the same store
  folder (a shared file system) and the model.

The model is loaded once per worker by `EnginePlugin`
(`napari_corrseg.tasks.dask_worker`, registered with
``Client.register_plugin``, so a worker that is restarted, e.g. after being killed, loads
it again), never shipped with a task. Tasks get the store (its path and settings) and
image keys with the files to read, never arrays (arrays given to the library are
scattered once). Workers write the shared `napari_corrseg.collection.store.TokenStore`,
whose atomic, idempotent entries make a task that runs twice (a killed worker's images
are rescheduled by Dask) harmless. The cross-map stages of co-segmentation and transfer
run through `DaskMapper`: ``fn(maps, *args)`` on a worker, with ``maps`` opened there
from the store and cached per worker. Progress comes back through ``as_completed``.

This module imports neither torch nor Qt (the workers import the engine).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Cancelled, CorrsegError
from .dask_worker import (
    PLUGIN_NAME,
    EnginePlugin,
    EngineSpec,
    fill_task,
    shape_task,
    stage_task,
)

__all__ = [
    "LOCAL_CORES_PER_WORKER",
    "DaskMapper",
    "DaskScheduler",
    "EnginePlugin",
    "EngineSpec",
    "SchedulerError",
    "SchedulerSpec",
    "open_scheduler",
    "parse_scheduler",
]

#: CPU cores per worker of ``--scheduler local`` without GPUs.
LOCAL_CORES_PER_WORKER = 4
_ADDRESS = re.compile(r"(tcp|tls|inproc|ucx|ws|wss)://\S+|[A-Za-z0-9_.-]+:\d+")
_SCHEDULER_HELP = (
    "--scheduler must be 'none', 'local', 'local:N' (N workers) or the address of a "
    "running Dask scheduler such as tcp://host:8786"
)


class SchedulerError(CorrsegError):
    """A scheduler setting that cannot be used (bad string, unreachable cluster)."""


@dataclass(frozen=True)
class SchedulerSpec:
    """A parsed ``--scheduler`` value: kind ``none``, ``local`` or ``address``."""

    kind: str
    n_workers: int | None = None
    address: str | None = None


def parse_scheduler(text: str | None) -> SchedulerSpec:
    """Parse ``none``, ``local``, ``local:N`` or ``tcp://host:port``.

    Raises
    ------
    SchedulerError
        Anything else, with the accepted forms in the message.
    """
    value = "none" if text is None else str(text).strip()
    lowered = value.lower()
    if lowered in ("none", "", "in-process", "process"):
        return SchedulerSpec("none")
    if lowered == "local":
        return SchedulerSpec("local")
    if lowered.startswith("local:"):
        count = lowered.partition(":")[2]
        if count.isdigit() and int(count) >= 1:
            return SchedulerSpec("local", n_workers=int(count))
        raise SchedulerError(f"{_SCHEDULER_HELP}; got {value!r} (N must be a whole number >= 1)")
    if _ADDRESS.fullmatch(value):
        return SchedulerSpec("address", address=value if "://" in value else f"tcp://{value}")
    raise SchedulerError(f"{_SCHEDULER_HELP}; got {value!r}")


# -- the driver --------------------------------------------------------------------------


def _gather(client, futures: list, progress, cancel, stage: str) -> list:
    """Results in order, reporting each completion (``as_completed``) and polling cancel."""
    from distributed import as_completed

    position = {future.key: n for n, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    done = 0
    completed = as_completed(futures, loop=client.loop)
    try:
        while not completed.is_empty():
            batch = completed.next_batch(block=False)
            for future in batch:
                results[position[future.key]] = future.result()  # re-raises task errors
                done += 1
                if progress is not None:
                    progress(stage, done / len(futures))
            if cancel is not None and cancel():
                raise Cancelled(f"{stage} was cancelled")
            if not batch:
                time.sleep(0.05)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return results


class DaskMapper:
    """``mapper(fn, argument_tuples)`` running ``fn(maps, *args)`` as Dask tasks.

    ``maps`` are the store's lazy maps of ``keys``, opened on each worker once (the key
    list is scattered to the workers once, not sent with every task).
    """

    def __init__(
        self, scheduler: DaskScheduler, store, keys: Sequence[str], progress=None, cancel=None
    ):
        self.scheduler = scheduler
        self.store = store
        self.keys = list(keys)
        self.token = hashlib.sha256("\n".join(self.keys).encode()).hexdigest()[:16]
        self.progress = progress
        self.cancel = cancel
        self._keys_future = None

    def __call__(self, fn: Callable, arguments: Sequence[tuple]) -> list:
        client = self.scheduler.client
        if self._keys_future is None:
            self._keys_future = client.scatter([self.keys], broadcast=True, hash=False)[0]
        futures = [
            client.submit(
                stage_task,
                self.store,
                self.token,
                self._keys_future,
                fn,
                tuple(args),
                pure=False,
                retries=1,
            )
            for args in arguments
        ]
        return _gather(client, futures, self.progress, self.cancel, "cross maps")


class DaskScheduler:
    """A Dask client (and the local cluster it started, if any) with the engine plugin.

    Use `open_scheduler` (or `start`) rather than the constructor; close it (or use it
    as a context manager) to stop a local cluster.
    """

    def __init__(self, client: Any, cluster: Any = None):
        self.client = client
        self.cluster = cluster

    @classmethod
    def start(
        cls,
        spec: SchedulerSpec,
        engine_factory: Callable[[str], Any],
        *,
        device: str = "auto",
        timeout: float = 10.0,
    ) -> DaskScheduler:
        """Start (``local``) or connect to (address) a cluster and load the engine on it.

        Raises
        ------
        SchedulerError
            ``none`` given, or the address cannot be reached / has no workers.
        """
        from distributed import Client, LocalCluster

        if spec.kind == "none":
            raise SchedulerError("scheduler 'none' runs in process; there is no cluster to start")
        threads = None
        cluster = None
        if spec.kind == "local":
            gpus = _gpu_count(device)
            cores = os.cpu_count() or 1
            default = gpus or max(1, cores // LOCAL_CORES_PER_WORKER)
            n_workers = spec.n_workers or default
            threads = max(1, cores // n_workers) if not gpus else None
            with _environment_kept():  # distributed leaves OMP_NUM_THREADS=1 etc. set here
                cluster = LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
            client = Client(cluster, set_as_default=False)
        else:
            try:
                client = Client(spec.address, timeout=timeout, set_as_default=False)
            except (OSError, TimeoutError) as error:
                raise SchedulerError(
                    f"cannot reach the Dask scheduler at {spec.address} "
                    f"({type(error).__name__}); check the address, start a cluster there "
                    f"('dask scheduler', then 'dask worker {spec.address}' on each machine), "
                    "or use --scheduler local"
                ) from None
            if not client.scheduler_info().get("workers"):
                try:
                    client.wait_for_workers(1, timeout=timeout)
                except (OSError, TimeoutError):
                    client.close()
                    raise SchedulerError(
                        f"the Dask scheduler at {spec.address} has no workers; start some "
                        f"with 'dask worker {spec.address}'"
                    ) from None
        scheduler = cls(client, cluster)
        try:
            client.register_plugin(EnginePlugin(engine_factory, device, threads), name=PLUGIN_NAME)
        except BaseException:
            scheduler.close()
            raise
        return scheduler

    def __enter__(self) -> DaskScheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the client, and the local cluster if this scheduler started it."""
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                with _environment_kept():
                    self.cluster.close()

    @property
    def n_workers(self) -> int:
        """Workers the cluster has now."""
        return len(self.client.scheduler_info().get("workers", {}))

    def query_key_shape(self, layers: Any) -> tuple:
        """``(L, H, N, d)`` of one image, asked of a worker's engine."""
        return tuple(self.client.submit(shape_task, layers, pure=False).result())

    def fill(self, store, collection, items, *, batch_size=None, progress=None, cancel=None):
        """Compute ``items`` (key, image index) into the store; ``{key: status}``."""
        per_task = max(1, int(batch_size)) if batch_size else 1
        payload = []
        for key, index in items:
            source = collection.sources[index]
            if isinstance(source, str | Path):
                source = str(source)
            else:  # an array: sent to the cluster once, not inside the task graph
                source = self.client.scatter(source, hash=False)
            payload.append((key, source, collection.names[index]))
        futures = [
            self.client.submit(
                fill_task,
                store,
                payload[start : start + per_task],
                batch_size,
                pure=False,
                retries=1,
            )
            for start in range(0, len(payload), per_task)
        ]
        statuses: dict[str, str] = {}
        for result in _gather(self.client, futures, progress, cancel, "extract"):
            statuses.update(result)
        return statuses

    def mapper(self, store, keys, *, progress=None, cancel=None) -> DaskMapper:
        """The ``mapper`` that runs cross-map stages on the workers."""
        return DaskMapper(self, store, keys, progress, cancel)


#: The environment before any cluster started (workers restarted later set it again).
_ENVIRONMENT: dict[str, str] = {}


@contextlib.contextmanager
def _environment_kept():
    """Undo what starting worker processes writes into this process's environment
    (``distributed.nanny.pre-spawn-environ``: ``OMP_NUM_THREADS=1`` and the like, which
    would slow every process this one starts later)."""
    if not _ENVIRONMENT:
        _ENVIRONMENT.update(os.environ)
    try:
        yield
    finally:
        for name in [name for name in os.environ if name not in _ENVIRONMENT]:
            del os.environ[name]
        os.environ.update(_ENVIRONMENT)


def _gpu_count(device: str) -> int:
    if device == "cpu" or str(device).startswith("mps"):
        return 0
    import torch  # only to count GPUs; the driver loads no model

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def open_scheduler(
    scheduler: str | SchedulerSpec | None,
    engine_factory: Callable[[str], Any],
    *,
    device: str = "auto",
    timeout: float = 10.0,
) -> DaskScheduler | None:
    """None for ``none``; else a started `DaskScheduler` (close it when done)."""
    spec = scheduler if isinstance(scheduler, SchedulerSpec) else parse_scheduler(scheduler)
    if spec.kind == "none":
        return None
    return DaskScheduler.start(spec, engine_factory, device=device, timeout=timeout)
