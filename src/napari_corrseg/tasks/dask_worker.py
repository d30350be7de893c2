"""What runs on a Dask worker: the engine plugin and the collection task functions.

`EnginePlugin` (registered by `napari_corrseg.tasks.distributed.DaskScheduler`) loads
the engine once when a worker starts, from a small picklable factory such as
`EngineSpec`, never from a shipped model. The task functions (`fill_task`, `shape_task`,
`stage_task`) take the store (pickled as its path and settings) and small arguments;
they find the engine with `worker_engine`.

This module imports neither torch nor Qt at import time (the workers import the engine).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import WorkerPlugin

__all__ = [
    "PLUGIN_NAME",
    "EnginePlugin",
    "EngineSpec",
    "fill_task",
    "shape_task",
    "stage_task",
    "worker_engine",
]

PLUGIN_NAME = "napari-corrseg-engine"


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


def fill_task(store, items: Sequence[tuple[str, Any, str]], batch_size: int | None) -> dict:
    """Compute and store the images of ``items`` (key, file or array, name) not stored."""
    import numpy as np

    from ..files.io import read_image

    statuses = {key: "reused" for key, _, _ in items if store.has(key)}
    todo = [item for item in items if item[0] not in statuses]
    if not todo:
        return statuses
    from .collection import check_engine, store_tokens

    engine = worker_engine()
    check_engine(store, engine)  # a worker with another model must not fill this store
    arrays = [read_image(src) if isinstance(src, str) else np.asarray(src) for _, src, _ in todo]
    for position, queries, keys, geometry in store_tokens(
        engine, store, arrays, batch_size=batch_size
    ):
        key, _, name = todo[position]
        created = store.write(key, queries, keys, geometry, name=name)
        statuses[key] = "computed" if created else "reused"
    return statuses


def shape_task(layers: Any) -> tuple:
    return tuple(worker_engine().query_key_shape(layers))


def stage_task(store, token: str, keys: list[str], fn: Callable, args: tuple) -> Any:
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
