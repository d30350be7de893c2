"""Attention-map cache: what a hit costs against recomputing, and entry sizes.

Run: .venv/bin/python benchmarks/bench_cli_cache.py
Times the cache put/get of a two-image entry at grid 16x16 (tiny model), 32x32 (SD2.1-base
default) and 64x64, and the tiny model's extract on the sample pair for comparison. Ratios
are measured within one run; the machine is shared, so read them as rough.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_corrseg.core.maps import AttentionMaps, ImageGeometry
from napari_corrseg.files.cache import MapCache, cache_key


def _maps(side: int) -> AttentionMaps:
    rng = np.random.default_rng(0)
    n = side * side
    maps = {}
    for key in [(0, 0), (1, 1), (0, 1), (1, 0)]:
        raw = rng.random((n, n), dtype=np.float32)
        maps[key] = raw / raw.sum(axis=1, keepdims=True)
    return AttentionMaps((side, side), [ImageGeometry((512, 512), (side, side))] * 2, maps)


def _best(function, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    images = [np.zeros((64, 64), np.uint8), np.ones((64, 64), np.uint8)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        cache = MapCache(Path(folder), max_bytes=2**34)
        for side in (16, 32, 64):
            maps = _maps(side)
            key = cache_key(images, {"model": "bench"}, seed=side)
            put = _best(lambda: cache.put(key, maps), 2)  # noqa: B023
            get = _best(lambda: cache.get(key))  # noqa: B023
            size = cache.path_for(key).stat().st_size
            rows.append((f"{side}x{side}", size / 2**20, put * 1e3, get * 1e3))
    from napari_corrseg.engine import load_engine
    from napari_corrseg.files.sample_data import load_sample_pair

    engine = load_engine("tiny", device="cpu")
    pair = load_sample_pair()
    extract = _best(lambda: engine.extract(pair), 2)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}")
    print("| grid | entry (MiB) | put (ms) | hit (ms) |\n|---|---|---|---|")
    for grid, size, put, get in rows:
        print(f"| {grid} | {size:.1f} | {put:.0f} | {get:.0f} |")
    print(f"\ntiny model extract of the sample pair (16x16 grid): {extract * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
