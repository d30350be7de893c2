"""Collection tasks: fill the token store, co-segment and transfer over many images.

What the command line (``extract``, ``coseg``, ``transfer``) and the widgets call. Each
image goes through the model once, ever: `fill_store` computes only the images missing
from the `napari_corrseg.collection.store.TokenStore` (and those whose entry is damaged),
so an interrupted run resumes and adding an image costs one image's pass. The
co-segmentation (`napari_corrseg.collection.cosegment.cosegment`) and the transfer
(`napari_corrseg.collection.transfer.transfer_collection`) then read the store through
lazy `AttentionMaps`; their cross-map stages go through a ``mapper``: an in-process loop
by default, Dask tasks when a `napari_corrseg.tasks.distributed.DaskScheduler` is given.
Results are in image pixels (`napari_corrseg.tasks.collection_results`).

Callbacks as in `napari_corrseg.tasks.pipeline`: ``progress(stage, fraction)`` and
``cancel() -> bool`` (True stops with `napari_corrseg.errors.Cancelled`; what is stored
stays stored).

This module imports neither torch nor Qt: the engine is passed in as an object.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..collection.store import TokenStore, store_settings
from ..errors import CorrsegError
from .collection_inputs import (
    Cancel,
    CollectionImages,
    Progress,
    checked_progress,
    collect_images,
    list_image_files,
    unique_names,
)
from .collection_results import FillPlan, FillReport

__all__ = [
    "CollectionImages",
    "LocalMapper",
    "check_engine",
    "collect_images",
    "cosegment_collection",
    "fill_store",
    "list_image_files",
    "open_store",
    "transfer_over_collection",
    "unique_names",
]

#: Images handed to the engine at once in process (each pass's entries are written at
#: once, so an interrupted run loses at most one chunk's passes).
CHUNK_IMAGES = 8


def open_store(
    path: str | Path, engine: Any, *, layers: Any = "auto", timestep: int = 261, seed: int = 0
) -> TokenStore:
    """The token store of ``engine``'s model at these settings, in folder ``path``.

    ``engine`` may be a `napari_corrseg.engine.LazyEngine`: its identity and image size
    are known without loading the model.
    """
    settings = store_settings(
        dict(engine.identity), int(engine.image_size), layers=layers, timestep=timestep, seed=seed
    )
    return TokenStore(path, settings)


def check_engine(store: TokenStore, engine: Any) -> None:
    """Raise `CorrsegError` unless ``engine`` computes what ``store`` holds."""
    _check_engine(store, engine)


def _check_engine(store: TokenStore, engine: Any) -> None:
    wanted = store_settings(
        dict(engine.identity),
        int(engine.image_size),
        layers=store.settings["layers"],
        timestep=store.settings["timestep"],
        seed=store.settings["seed"],
    )
    if wanted != store.settings:
        raise CorrsegError(
            "the engine's model or settings differ from the token store's; open the store "
            "with napari_corrseg.tasks.collection.open_store(path, engine, ...)"
        )


def _bytes_per_image(store: TokenStore, present: Sequence[str], shape_of: Callable) -> int:
    for key in present:
        try:
            return TokenStore.estimate_bytes(1, store.shape(key))
        except Exception:  # a damaged entry says nothing; try the next
            continue
    return TokenStore.estimate_bytes(1, shape_of(store.settings["layers"]))


def fill_store(
    store: TokenStore,
    images: Sequence[np.ndarray | str | Path] | CollectionImages,
    engine: Any = None,
    *,
    names: Sequence[str] | None = None,
    batch_size: int | None = None,
    verify: bool = True,
    scheduler: Any = None,
    on_plan: Callable[[FillPlan], None] | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> FillReport:
    """Make sure every image's queries and keys are in the store; compute only the rest.

    Parameters
    ----------
    store : TokenStore
        Where the tokens go (its settings say which layers, timestep and seed).
    images : sequence of arrays or paths, or CollectionImages
        The collection.
    engine : Engine or LazyEngine, optional
        Computes the missing images in process (needed unless ``scheduler`` is given or
        nothing is missing; a `LazyEngine` is loaded only then).
    names : sequence of str, optional
        Per image (default: file stems, or ``image_0000`` ...).
    batch_size : int, optional
        Images per UNet pass (default: the engine's planner; at most `CHUNK_IMAGES`).
    verify : bool
        Check every stored entry's checksum first (reads the whole store); damaged
        entries are recomputed with one warning.
    scheduler : DaskScheduler, optional
        Compute on Dask workers instead (`napari_corrseg.tasks.distributed`).
    on_plan : callable, optional
        Called with a `FillPlan` (counts, size estimate) before anything is computed.
    progress, cancel : callable, optional
        ``progress("extract", fraction)``; ``cancel()`` polled between images.

    Returns
    -------
    FillReport
    """
    collection = collect_images(images, names, progress=progress, cancel=cancel)
    report = checked_progress(progress, cancel, "extraction")
    store.remove_stale_partials()
    first: dict[str, int] = {}
    for index, key in enumerate(collection.keys):
        first.setdefault(key, index)
    present = [key for key in first if store.has(key)]
    damaged = []
    if verify:
        for done, key in enumerate(present):
            if not store.verify(key):
                damaged.append(key)
            report("verify", (done + 1) / len(present))
    if damaged:
        shown = ", ".join(collection.names[first[key]] for key in damaged[:3])
        warnings.warn(
            f"{len(damaged)} damaged token store entr{'y' if len(damaged) == 1 else 'ies'} "
            f"({shown}{', ...' if len(damaged) > 3 else ''}) will be recomputed",
            stacklevel=2,
        )
        for key in damaged:
            store.discard(key)
    todo = [key for key in first if not store.has(key)]
    if todo and scheduler is None and engine is None:
        raise CorrsegError(f"{len(todo)} images are not in the token store; pass an engine")
    if todo and engine is not None and scheduler is None:
        _check_engine(store, engine)
    shape_of = (
        scheduler.query_key_shape
        if scheduler is not None
        else (lambda layers: engine.query_key_shape(layers))
    )
    plan = FillPlan(
        n_images=len(first),
        n_present=len(present) - len(damaged),
        n_damaged=len(damaged),
        n_missing=len(todo),
        bytes_per_image=_bytes_per_image(store, present, shape_of) if todo else 0,
        store=str(store.path),
    )
    if on_plan is not None:
        on_plan(plan)
    items = [(key, first[key]) for key in todo]
    if items and scheduler is not None:
        statuses = scheduler.fill(
            store, collection, items, batch_size=batch_size, progress=report, cancel=cancel
        )
    elif items:
        statuses = _fill_in_process(store, collection, items, engine, batch_size, report, cancel)
    else:
        statuses = {}
    computed = sum(1 for status in statuses.values() if status == "computed")
    recomputed = sum(1 for key in damaged if statuses.get(key) == "computed")
    report("extract", 1.0)
    return FillReport(
        keys=list(collection.keys),
        names=list(collection.names),
        shapes=list(collection.shapes),
        computed=computed - recomputed,
        reused=plan.n_present + (len(statuses) - computed),
        recomputed=recomputed,
        store=str(store.path),
        plan=plan,
    )


def store_tokens(engine: Any, store: TokenStore, arrays, *, batch_size=None, cancel=None):
    """The engine's queries and keys of ``arrays`` at the store's settings (layers,
    timestep, seed), one image at a time: ``(position, queries, keys, geometry)``."""
    settings = store.settings
    return engine.iter_query_key(
        arrays,
        layers=settings["layers"],
        timestep=settings["timestep"],
        seed=settings["seed"],
        batch_size=batch_size,
        cancel=cancel,
    )


def _fill_in_process(store, collection, items, engine, batch_size, report, cancel):
    statuses: dict[str, str] = {}
    chunk = max(1, min(CHUNK_IMAGES, int(batch_size) if batch_size else CHUNK_IMAGES))
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        arrays = [collection.load(index) for _, index in part]
        for position, queries, keys, geometry in store_tokens(
            engine, store, arrays, batch_size=batch_size, cancel=cancel
        ):
            key, index = part[position]
            created = store.write(key, queries, keys, geometry, name=collection.names[index])
            statuses[key] = "computed" if created else "reused"
            report("extract", len(statuses) / len(items))
    return statuses


# the collection tasks that read the store live beside this module; one import for callers
from .collection_maps import (  # noqa: E402
    LocalMapper,
    cosegment_collection,
    transfer_over_collection,
)
