"""The collection steps as Dask tasks: ``--scheduler none|local|local:N|ADDRESS``.

* ``none``: everything in this process (no Dask);
* ``local``: a `distributed.LocalCluster` on this machine, one worker process per GPU,
  else one per `LOCAL_CORES_PER_WORKER` CPU cores; ``local:N``: N workers;
* an address (``tcp://host:8786``): a running cluster whose workers see the same store
  folder (a shared file system) and the model.

The model is loaded once per worker by `EnginePlugin` (registered with
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
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

from ..errors import Cancelled, CorrsegError

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
PLUGIN_NAME = "napari-corrseg-engine"
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


@dataclass(frozen=True)
class EngineSpec:
    """How a worker loads the engine: ``load_engine(model, device, dtype, **options)``.

    Picklable and small: this, not the model, is what travels to the workers.
    """

    model: str = "auto"
    device: str = "auto"
    dtype: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __call__(self, device: str | None = None):
        from ..engine import load_engine

        return load_engine(self.model, device or self.device, self.dtype, **self.options)


def _worker_device(requested: str, worker: Any) -> str:
    """``cuda:k`` for the k-th worker when several GPUs are visible; else as requested."""
    import torch

    if requested not in ("auto", "cuda") or not torch.cuda.is_available():
        return requested
    count = torch.cuda.device_count()
    name = str(getattr(worker, "name", "0"))
    index = int(name) if name.isdigit() else int(hashlib.sha256(name.encode()).hexdigest(), 16)
    return f"cuda:{index % count}"


class EnginePlugin(WorkerPlugin):
    """Loads the engine once when a worker starts; tasks find it with `worker_engine`.

    Parameters
    ----------
    factory : callable
        ``factory(device) -> Engine`` (e.g. an `EngineSpec`); called on the worker.
    device : str
        Requested device; with several GPUs each worker takes its own.
    threads : int, optional
        torch threads of the worker (Dask starts workers with one).
    """

    name = PLUGIN_NAME

    def __init__(
        self, factory: Callable[[str], Any], device: str = "auto", threads: int | None = None
    ):
        self.factory = factory
        self.device = device
        self.threads = threads
        self.engine = None
        self.maps_cache: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def setup(self, worker: Any) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(int(self.threads))
        self.engine = self.factory(_worker_device(self.device, worker))

    def teardown(self, worker: Any) -> None:
        self.engine = None
        self.maps_cache.clear()

    def __getstate__(self) -> dict[str, Any]:  # never ship a loaded model or maps
        return {"factory": self.factory, "device": self.device, "threads": self.threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["factory"], state["device"], state["threads"])


def _plugin() -> EnginePlugin:
    from distributed import get_worker

    plugin = get_worker().plugins.get(PLUGIN_NAME)
    if plugin is None or plugin.engine is None:
        raise RuntimeError("this Dask worker has no napari-corrseg engine (plugin missing)")
    return plugin


def worker_engine():
    """The engine `EnginePlugin` loaded on the current worker."""
    return _plugin().engine


# -- task functions (run on workers) -----------------------------------------------------


def _fill_task(store, items: Sequence[tuple[str, Any, str]], batch_size: int | None) -> dict:
    """Compute and store the images of ``items`` (key, file or array, name) not stored."""
    import numpy as np

    from ..files.io import read_image

    statuses = {key: "reused" for key, _, _ in items if store.has(key)}
    todo = [item for item in items if item[0] not in statuses]
    if not todo:
        return statuses
    from .collection import check_engine

    engine = worker_engine()
    check_engine(store, engine)  # a worker with another model must not fill this store
    arrays = [read_image(src) if isinstance(src, str) else np.asarray(src) for _, src, _ in todo]
    settings = store.settings
    for position, queries, keys, geometry in engine.iter_query_key(
        arrays,
        layers=settings["layers"],
        timestep=settings["timestep"],
        seed=settings["seed"],
        batch_size=batch_size,
    ):
        key, _, name = todo[position]
        created = store.write(key, queries, keys, geometry, name=name)
        statuses[key] = "computed" if created else "reused"
    return statuses


def _shape_task(layers: Any) -> tuple:
    return tuple(worker_engine().query_key_shape(layers))


def _stage_task(store, token: str, keys: list[str], fn: Callable, args: tuple) -> Any:
    """``fn(maps, *args)`` with the store's lazy maps of ``keys``, opened once per worker."""
    plugin = _plugin()
    ident = (str(store.path), store.settings_digest, token)
    with plugin.lock:
        maps = plugin.maps_cache.get(ident)
        if maps is None:
            maps = store.maps(keys, backend=plugin.engine.attention_backend)
            plugin.maps_cache[ident] = maps
            while len(plugin.maps_cache) > 2:
                plugin.maps_cache.popitem(last=False)
        plugin.maps_cache.move_to_end(ident)
    return fn(maps, *args)


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
                _stage_task,
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
        return tuple(self.client.submit(_shape_task, layers, pure=False).result())

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
                _fill_task,
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
