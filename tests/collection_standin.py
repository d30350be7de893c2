"""A minimal private stand-in for the collection algorithms another branch builds.

`AttentionMaps.from_query_key`, `napari_corrseg.collection.cosegment.cosegment` and
`napari_corrseg.collection.transfer.transfer_collection` land from the "coll" branch.
Until they do, `install()` puts small stand-ins with the same call shapes (CONTRACT.md) in
their place, ONLY where the real ones are missing, so that the store, the Dask driver and
the command line can be tested end to end. They are deliberately simple (no claim to
quality): per-image segmentation and a chain of argmax matches; keypoints through
`transfer_points` from the best source. Their cross-map stages are module-level
functions ``fn(maps, *args)`` run through ``mapper``, as the contract says.

`StandinPlugin` installs the same on Dask workers (they are separate processes).
"""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path

import numpy as np
from distributed import WorkerPlugin

HERE = str(Path(__file__).parent)


# -- lazy maps -------------------------------------------------------------------------


def _numpy_attention(queries, keys):
    q_all, k_all = np.asarray(queries, np.float32), np.asarray(keys, np.float32)
    if q_all.ndim == 3:
        q_all, k_all = q_all[None], k_all[None]
    total = 0
    for q, k in zip(q_all, k_all, strict=True):
        scores = (q * np.float32(q.shape[-1] ** -0.5)) @ k.transpose(0, 2, 1)
        scores -= scores.max(axis=2, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=2, keepdims=True)
        total = total + probs.mean(axis=0)
    total = (total / len(q_all)).astype(np.float32)
    return total / total.sum(axis=1, keepdims=True)


class StandinLazyMaps:
    is_lazy = True

    def __init__(self, provider, grid, geometries, settings, backend, cache_items):
        self.provider, self.grid = provider, tuple(grid)
        self.geometries, self.settings = list(geometries), dict(settings or {})
        self.backend = backend or _numpy_attention
        self.cache: dict = {}
        self.cache_items = cache_items
        self.lock = threading.Lock()

    @property
    def n_images(self):
        return len(self.geometries)

    @property
    def n_tokens(self):
        return self.grid[0] * self.grid[1]

    def has(self, i, j):
        return 0 <= i < self.n_images and 0 <= j < self.n_images

    def query_key(self, i):
        return self.provider(i)

    def cross(self, i, j):
        with self.lock:
            if (i, j) in self.cache:
                return self.cache[(i, j)]
        result = self.backend(self.provider(i)[0], self.provider(j)[1])
        with self.lock:
            if len(self.cache) >= self.cache_items:
                self.cache.pop(next(iter(self.cache)))
            self.cache[(i, j)] = result
        return result

    def self(self, i):
        return self.cross(i, i)


def _from_query_key(
    cls,
    queries,
    keys=None,
    grid=None,
    *,
    geometries=None,
    settings=None,
    backend=None,
    cache_items=16,
    n_images=None,
):
    assert callable(queries) and keys is None
    return StandinLazyMaps(queries, grid, geometries, settings, backend, cache_items)


# -- co-segmentation and transfer ------------------------------------------------------


def segment_stage(maps, i, threshold):
    from napari_corrseg.core.segmentation import segment

    return np.asarray(segment(maps.self(i), maps.grid, threshold=threshold).labels)


def match_stage(maps, i, j):
    return np.argmax(maps.cross(i, j), axis=1).astype(np.int32)


def cosegment(
    maps,
    cross_maps=None,
    grid=None,
    threshold="auto",
    *,
    anchors=None,
    neighbours=None,
    mapper=None,
    progress=None,
):
    mapper = mapper or (lambda fn, args: [fn(maps, *a) for a in args])
    n = maps.n_images
    local = mapper(segment_stage, [(i, threshold) for i in range(n)])
    forward = mapper(match_stage, [(i, i - 1) for i in range(1, n)])
    labels = [None] * n
    labels[0] = local[0] + 1 - local[0].min()
    for i in range(1, n):
        lab = np.zeros_like(local[i])
        landed = labels[i - 1].ravel()[forward[i - 1]].reshape(local[i].shape)
        for value in np.unique(local[i]):
            votes = np.bincount(landed[local[i] == value])
            lab[local[i] == value] = int(np.argmax(votes))
        labels[i] = lab
        if progress is not None:
            progress("cosegment", i / (n - 1))
    ids = sorted(set(np.concatenate([lab.ravel() for lab in labels]).tolist()))
    segments = []
    for value in ids:
        images = [k for k in range(n) if (labels[k] == value).any()]
        sizes = [int((labels[k] == value).sum()) for k in range(n)]
        segments.append(
            {
                "id": int(value),
                "images": images,
                "sizes": sizes,
                "consistency": 0.5 if len(images) > 1 else float("nan"),
                "shared": len(images) > 1,
            }
        )
    unmatched = [s["id"] for s in segments if not s["shared"]]
    return types.SimpleNamespace(
        labels=labels, segments=segments, unmatched=unmatched, threshold=0.0
    )


def transfer_stage(maps, source, target, grid_points):
    from napari_corrseg.core.correspondence import transfer_points

    grid_points = np.asarray(grid_points, dtype=np.float64)
    marked = np.isfinite(grid_points).all(axis=1)
    moved_to = np.full(grid_points.shape, np.nan)
    confidence = np.zeros(len(grid_points))
    cycle = np.full(len(grid_points), np.nan)
    if marked.any():
        moved = transfer_points(
            grid_points[marked], maps.cross(source, target), maps.cross(target, source), maps.grid
        )
        moved_to[marked] = np.asarray(moved.target)
        confidence[marked] = np.asarray(moved.confidence)
        cycle[marked] = np.asarray(moved.cycle_error)
    return moved_to, confidence, cycle


def transfer_collection(
    maps, keypoints=None, labels=None, *, targets=None, mapper=None, progress=None
):
    mapper = mapper or (lambda fn, args: [fn(maps, *a) for a in args])
    sources = sorted(keypoints)
    targets = [t for t in range(maps.n_images) if t not in sources] if targets is None else targets
    jobs = [(s, t, keypoints[s]) for t in targets for s in sources]
    results = mapper(transfer_stage, jobs)
    points = {}
    for (s, t, _), (target, confidence, cycle) in zip(jobs, results, strict=True):
        best = points.get(t)
        if best is None or confidence.mean() > best.confidence.mean():
            points[t] = types.SimpleNamespace(
                target=target,
                confidence=confidence,
                source=np.full(len(target), s),
                cycle_error=cycle,
            )
    ranking = sorted(
        ((t, float(p.confidence.mean())) for t, p in points.items()), key=lambda item: item[1]
    )
    return types.SimpleNamespace(points=points, labels={}, ranking=ranking)


# -- installing ------------------------------------------------------------------------


def install() -> list[str]:
    """Install what is missing; returns the names of the stand-ins installed."""
    from napari_corrseg.core.maps import AttentionMaps

    installed = []
    if not hasattr(AttentionMaps, "from_query_key"):
        AttentionMaps.from_query_key = classmethod(_from_query_key)
        installed.append("from_query_key")
    for name, function in (("cosegment", cosegment), ("transfer", transfer_collection)):
        module_name = f"napari_corrseg.collection.{name}"
        try:
            __import__(module_name)
        except ModuleNotFoundError:
            module = types.ModuleType(module_name)
            setattr(module, function.__name__, function)
            sys.modules[module_name] = module
            import napari_corrseg.collection as package

            setattr(package, name, module)
            installed.append(module_name)
    return installed


class StandinPlugin(WorkerPlugin):
    """Install the stand-ins on every worker (restarted ones too)."""

    name = "corrseg-test-standin"

    def setup(self, worker):
        if HERE not in sys.path:
            sys.path.insert(0, HERE)
        import collection_standin

        collection_standin.install()


class SlowWritesPlugin(WorkerPlugin):
    """Make every store write on a worker take ``seconds`` longer (so a test can kill a
    worker while it is busy)."""

    name = "corrseg-test-slow-writes"

    def __init__(self, seconds: float):
        self.seconds = seconds

    def setup(self, worker):
        import time

        from napari_corrseg.collection.store import TokenStore

        original = TokenStore.write
        seconds = self.seconds

        def slow_write(self, *args, **kwargs):
            time.sleep(seconds)
            return original(self, *args, **kwargs)

        self.original = original
        TokenStore.write = slow_write

    def teardown(self, worker):
        from napari_corrseg.collection.store import TokenStore

        if getattr(self, "original", None) is not None:
            TokenStore.write = self.original
