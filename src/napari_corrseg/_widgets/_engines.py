"""The model and the attention maps kept between runs, shared by every dock widget.

Loading a model cannot be interrupted inside torch. So the load runs in a background
thread of its own and a run *waits* for it, checking Cancel every 50 ms: Cancel returns
the run at once, the load goes on in the background, and the engine it produces is kept
for the next run (one model at a time; asking for another replaces it). A second run for
the same model joins the load in progress instead of starting another.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ..errors import Cancelled

ProgressCallback = Callable[[str, float], None]
CancelCallback = Callable[[], bool]

_LOCK = threading.Lock()
_LOAD_LOCK = threading.Lock()  # one load at a time: two SD2 models may not fit in memory
_ENGINE: dict[tuple[str, str], Any] = {}
_LOADS: dict[tuple[str, str], Future] = {}
POLL_SECONDS = 0.05


def _default_loader(model: str, device: str):
    from ..engine import load_engine  # torch is imported only when a model is needed

    return load_engine(model=model, device=device)


#: ``loader(model, device) -> Engine``; tests replace it.
loader: Callable[[str, str], Any] = _default_loader


def _load_in_background(key: tuple[str, str], future: Future) -> None:
    try:
        with _LOAD_LOCK:
            engine = loader(*key)
    except BaseException as error:
        with _LOCK:
            _LOADS.pop(key, None)
        future.set_exception(error)
        return
    with _LOCK:
        _ENGINE.clear()  # one model in memory
        _ENGINE[key] = engine
        _LOADS.pop(key, None)
    future.set_result(engine)


def get_engine(
    model: str,
    device: str,
    progress: ProgressCallback | None = None,
    cancel: CancelCallback | None = None,
):
    """The engine for ``(model, device)``: kept, loading, or loaded now.

    Raises
    ------
    Cancelled
        As soon as ``cancel()`` is true while waiting for the load (which goes on).
    """
    key = (str(model), str(device))
    with _LOCK:
        engine = _ENGINE.get(key)
        future = _LOADS.get(key) if engine is None else None
        if engine is None and future is None:
            future = Future()
            _LOADS[key] = future
            threading.Thread(
                target=_load_in_background,
                args=(key, future),
                name=f"napari-corrseg load {model}",
                daemon=True,
            ).start()
    if engine is not None:
        if progress is not None:
            progress("load model", 1.0)
        return engine
    if progress is not None:
        progress("load model", 0.0)
    while True:
        try:
            engine = future.result(timeout=POLL_SECONDS)
            break
        except FutureTimeout:
            if cancel is not None and cancel():
                raise Cancelled(
                    f"cancelled while {model!r} was loading; the load finishes in the "
                    "background and the next run uses it"
                ) from None
    if progress is not None:
        progress("load model", 1.0)
    return engine


def loaded_engine_keys() -> list[tuple[str, str]]:
    """``(model, device)`` of the engine held in memory."""
    with _LOCK:
        return list(_ENGINE)


def loading_engine_keys() -> list[tuple[str, str]]:
    """``(model, device)`` of loads in progress."""
    with _LOCK:
        return list(_LOADS)


class MapsCache:
    """Small in-memory LRU of `AttentionMaps`, keyed by image hashes and settings.

    Changing a display setting (number of matches, threshold, confidence) reuses the
    maps; only a new image, model or extraction setting runs the model again.
    """

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


#: Maps computed by any widget in this session, shared so both widgets reuse them.
MAPS_CACHE = MapsCache()


def maps_for_images(
    images: list,
    settings: dict[str, Any],
    progress: ProgressCallback,
    cancel: CancelCallback,
):
    """Attention maps of ``images`` (all pairs): memory cache, then disk cache, then model.

    Runs in a worker thread. ``settings`` holds ``model``, ``device``, ``layers``,
    ``timestep`` and ``seed`` (from the model settings form).
    """
    from ..tasks import pipeline
    from ._layers import image_hash

    key = (
        tuple(image_hash(image) for image in images),
        settings["model"],
        settings["device"],
        repr(settings["layers"]),
        settings["timestep"],
        settings["seed"],
    )
    maps = MAPS_CACHE.get(key)
    if maps is not None:
        progress("cache", 1.0)
        return maps
    engine = get_engine(settings["model"], settings["device"], progress, cancel)
    if cancel():
        raise Cancelled("cancelled before the forward pass")
    maps = pipeline.compute_maps(
        engine,
        images,
        layers=settings["layers"],
        timestep=settings["timestep"],
        seed=settings["seed"],
        pairs="all",
        cache=True,
        progress=progress,
        cancel=cancel,
    )
    if cancel():
        raise Cancelled("cancelled after the forward pass")
    if getattr(engine, "is_tiny", False):
        maps.settings.setdefault("tiny_model", True)
    MAPS_CACHE.put(key, maps)
    return maps


# -- the Dask scheduler of the Collection dock, kept between runs like the engine --------

_SCHEDULER: dict[tuple[str, str, str], Any] = {}


def get_scheduler(text: str, model: str, device: str):
    """The Dask scheduler for ``--scheduler``-style ``text`` with ``model`` loaded once
    per worker: kept, or started now (None for ``none``). Only one is kept; asking for
    another closes the old one.

    Raises
    ------
    napari_corrseg.tasks.distributed.SchedulerError
        A malformed ``text`` or a cluster that cannot be reached, with the fix.
    """
    from ..tasks.distributed import EngineSpec, open_scheduler, parse_scheduler

    spec = parse_scheduler(text)
    if spec.kind == "none":
        return None
    key = (str(text).strip(), str(model), str(device))
    with _LOCK:
        scheduler = _SCHEDULER.get(key)
        if scheduler is not None:
            return scheduler
        old = list(_SCHEDULER.values())
        _SCHEDULER.clear()
    for running in old:
        running.close()
    scheduler = open_scheduler(spec, EngineSpec(model=model, device=device), device=device)
    with _LOCK:
        _SCHEDULER[key] = scheduler
    return scheduler


def close_scheduler() -> None:
    """Close the kept Dask scheduler, if any (its workers and their models go)."""
    with _LOCK:
        old = list(_SCHEDULER.values())
        _SCHEDULER.clear()
    for running in old:
        running.close()
