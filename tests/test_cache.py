"""The attention-map disk cache: keys, hits, corrupt entries, LRU eviction, clearing."""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_corrseg.core.maps import AttentionMaps, ImageGeometry
from napari_corrseg.files.cache import MapCache, cache_key, default_cache_dir, image_hash
from napari_corrseg.tasks.pipeline import compute_maps

GRID = (4, 4)


def _maps(value: float = 0.0) -> AttentionMaps:
    rng = np.random.default_rng(int(value * 100))
    raw = rng.random((16, 16)).astype(np.float32) + value
    attention = raw / raw.sum(axis=1, keepdims=True)
    maps = {(0, 0): attention, (1, 1): attention.T.copy() / attention.T.sum(1, keepdims=True)}
    maps[(0, 1)] = maps[(1, 0)] = attention
    return AttentionMaps(GRID, [ImageGeometry((8, 8), GRID)] * 2, maps, {"model": "x"})


IMAGES = [np.zeros((8, 8), np.uint8), np.full((8, 8), 3, np.uint8)]
IDENTITY = {"model": "tiny", "revision": "builtin"}


class _Engine:
    """An engine whose extract either returns fixed maps or raises (model not touched)."""

    image_size = 64
    is_tiny = True

    def __init__(self, maps=None):
        self.identity = dict(IDENTITY)
        self.maps, self.calls = maps, 0

    def extract(self, images, **settings):
        self.calls += 1
        if self.maps is None:
            raise AssertionError("the model was touched although the cache holds the maps")
        return self.maps


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_CORRSEG_CACHE_DIR", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    assert MapCache().directory == tmp_path / "here"


def test_key_changes_with_every_input():
    base = cache_key(IMAGES, IDENTITY)
    assert cache_key(IMAGES, dict(IDENTITY)) == base
    variants = [
        cache_key(IMAGES[::-1], IDENTITY),
        cache_key([IMAGES[0], IMAGES[1] + 1], IDENTITY),
        cache_key(IMAGES, {**IDENTITY, "revision": "other"}),
        cache_key(IMAGES, IDENTITY, layers=[16]),
        cache_key(IMAGES, IDENTITY, timestep=100),
        cache_key(IMAGES, IDENTITY, seed=1),
        cache_key(IMAGES, IDENTITY, pairs=[(0, 1)]),
    ]
    digests = {MapCache("/nowhere").path_for(k).name for k in [base, *variants]}
    assert len(digests) == len(variants) + 1
    # pairs given as tuples or lists, in any order, are the same key
    assert cache_key(IMAGES, IDENTITY, pairs=[(1, 0), (0, 1)]) == cache_key(
        IMAGES, IDENTITY, pairs=[[0, 1], [1, 0]]
    )
    assert image_hash(IMAGES[0]) != image_hash(IMAGES[0].astype(np.uint16))


def test_hit_does_not_touch_the_model(tmp_path):
    cache = MapCache(tmp_path)
    computed = compute_maps(_Engine(_maps()), IMAGES, cache=cache)
    untouchable = _Engine(maps=None)
    cached = compute_maps(untouchable, IMAGES, cache=cache)
    assert untouchable.calls == 0
    np.testing.assert_array_equal(cached.cross(0, 1), computed.cross(0, 1))
    assert cached.geometries == computed.geometries
    assert "cache_key" not in cached.settings


def test_corrupt_entry_is_recomputed(tmp_path):
    cache = MapCache(tmp_path)
    engine = _Engine(_maps())
    compute_maps(engine, IMAGES, cache=cache)
    (entry,) = cache.entries()
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # truncated file
    with pytest.warns(UserWarning, match="unreadable"):
        maps = compute_maps(engine, IMAGES, cache=cache)
    assert engine.calls == 2
    np.testing.assert_array_equal(maps.cross(0, 1), _maps().cross(0, 1))
    assert cache.get(cache_key(IMAGES, {**IDENTITY, "image_size": 64})) is not None


def test_mismatched_entry_is_recomputed(tmp_path):
    cache = MapCache(tmp_path)
    key, other = cache_key(IMAGES, IDENTITY), cache_key(IMAGES, IDENTITY, seed=7)
    cache.put(other, _maps())
    os.replace(cache.path_for(other), cache.path_for(key))  # right name, wrong content
    with pytest.warns(UserWarning, match="other settings"):
        assert cache.get(key) is None
    assert not cache.path_for(key).exists()


def test_lru_eviction_keeps_the_recently_used(tmp_path):
    cache = MapCache(tmp_path)
    keys = [cache_key(IMAGES, IDENTITY, seed=s) for s in range(3)]
    for step, key in enumerate(keys):
        path = cache.put(key, _maps())
        os.utime(path, (1000 + step, 1000 + step))  # distinct, ordered times
    size = cache.path_for(keys[0]).stat().st_size
    assert cache.get(keys[0]) is not None  # use the oldest: now the most recent
    cache.max_bytes = int(2.5 * size)
    cache.put(cache_key(IMAGES, IDENTITY, seed=3), _maps())
    survivors = {p.name for p in cache.entries()}
    assert cache.path_for(keys[0]).name in survivors
    assert cache.path_for(keys[1]).name not in survivors  # least recently used went first
    assert cache.info().total_bytes <= cache.max_bytes


def test_entry_larger_than_the_limit_is_kept(tmp_path):
    cache = MapCache(tmp_path, max_bytes=10)
    key = cache_key(IMAGES, IDENTITY)
    cache.put(key, _maps())
    assert cache.get(key) is not None


def test_clear_and_info(tmp_path):
    cache = MapCache(tmp_path)
    for seed in range(2):
        cache.put(cache_key(IMAGES, IDENTITY, seed=seed), _maps())
    (tmp_path / ".x.npz.abc.partial").write_bytes(b"half")
    info = cache.info()
    assert info.entries == 2 and info.total_bytes > 0
    assert cache.clear() == 2
    assert cache.info().entries == 0
    assert list(tmp_path.iterdir()) == []


def test_unwritable_cache_only_warns(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = MapCache(blocker / "cache")
    with pytest.warns(UserWarning, match="NAPARI_CORRSEG_CACHE_DIR"):
        maps = compute_maps(_Engine(_maps()), IMAGES, cache=cache)
    assert maps.n_images == 2
