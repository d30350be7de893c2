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


# -- issue 16: entries checked over their content; weights fingerprinted by content ------


def test_hand_edited_entry_with_its_key_intact_is_recomputed(tmp_path):
    cache = MapCache(tmp_path)
    engine = _Engine(_maps())
    compute_maps(engine, IMAGES, cache=cache)
    (entry,) = cache.entries()
    edited = AttentionMaps.load(entry)  # keeps the stored key and checksum settings
    edited.maps[(0, 1)] = np.roll(edited.maps[(0, 1)], 1, axis=1)  # still row-stochastic
    edited.save(entry)
    with pytest.warns(UserWarning, match="checksum") as caught:
        maps = compute_maps(engine, IMAGES, cache=cache)
    assert len(caught) == 1 and engine.calls == 2
    np.testing.assert_array_equal(maps.cross(0, 1), _maps().cross(0, 1))
    assert compute_maps(_Engine(maps=None), IMAGES, cache=cache) is not None  # fixed entry


def test_latent_entries_are_checked_for_content_and_shape(tmp_path):
    import json

    from napari_corrseg.files.latent_cache import LatentCache, latent_key

    cache = LatentCache(tmp_path, memory_items=0)
    key = latent_key(np.zeros((16, 16, 3), np.float32), {"model": "tiny"}, 256)
    assert key["latent_shape"] == [1, 4, 32, 32]
    cache.put(key, np.ones((1, 4, 32, 32)))
    assert cache.get(key).shape == (1, 4, 32, 32)
    path = cache.path_for(key)
    stored_key = np.array(json.dumps(key, sort_keys=True))
    with open(path, "wb") as handle:  # edited by hand: content changed, checksum kept
        np.savez(handle, latent=np.zeros((1, 4, 32, 32), np.float32), key=stored_key,
                 checksum=np.array("0" * 64))  # fmt: skip
    with pytest.warns(UserWarning, match="checksum"):
        assert cache.get(key) is None
    from napari_corrseg.files.latent_cache import _checksum

    wrong = np.zeros((1, 4, 16, 16), np.float32)  # a valid-looking entry of the wrong shape
    with open(path, "wb") as handle:
        np.savez(handle, latent=wrong, key=stored_key, checksum=np.array(_checksum(wrong)))
    with pytest.warns(UserWarning, match=r"shape \(1, 4, 16, 16\)"):
        assert cache.get(key) is None
    assert not path.exists()


def test_a_wrong_latent_under_a_valid_key_is_recomputed_by_the_engine(tmp_path, two_images):
    from napari_corrseg.engine import load_engine
    from napari_corrseg.files.latent_cache import LatentCache, _checksum

    directory = tmp_path / "latents"
    first = load_engine("tiny", device="cpu", latent_cache=LatentCache(directory))
    reference = first.extract(two_images[:1] * 2, pairs="all")
    for entry in directory.glob("*.npz"):
        with np.load(entry) as data:
            key = data["key"]
        wrong = np.zeros((1, 4, 8, 8), np.float32)
        with open(entry, "wb") as handle:
            np.savez(handle, latent=wrong, key=key, checksum=np.array(_checksum(wrong)))
    second = load_engine("tiny", device="cpu", latent_cache=LatentCache(directory))
    with pytest.warns(UserWarning, match="latent cache entry"):
        again = second.extract(two_images[:1] * 2, pairs="all")
    assert second.encoder_calls == 1
    np.testing.assert_allclose(again.cross(0, 1), reference.cross(0, 1), atol=1e-6)


def _scale_tensors_in_place(path, name_part, factor):
    """Multiply every float32 tensor whose name contains ``name_part``, in the file's own
    bytes: same size; the modification time is set back to what it was."""
    import json
    import struct

    before = path.stat()
    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name_part in name and isinstance(entry, dict) and entry["dtype"] == "F32":
                start, end = entry["data_offsets"]
                handle.seek(8 + length + start)
                values = np.frombuffer(handle.read(end - start), dtype="<f4") * factor
                handle.seek(8 + length + start)
                handle.write(values.astype("<f4").tobytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.mark.slow
def test_weights_changed_in_place_with_same_size_and_mtime_give_new_maps(
    tmp_path, tiny_model_dir, two_images
):
    import shutil

    from napari_corrseg.engine import LazyEngine

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    cache = MapCache(tmp_path / "maps")
    engine = LazyEngine(str(model), device="cpu", latent_cache=False)
    before = compute_maps(engine, two_images, cache=cache)

    _scale_tensors_in_place(model / "unet" / "diffusion_pytorch_model.safetensors", "to_q", 3.0)
    changed = LazyEngine(str(model), device="cpu", latent_cache=False)
    assert changed.identity["revision"] != engine.identity["revision"]
    after = compute_maps(changed, two_images, cache=cache)
    assert changed.loaded  # a miss: the old maps were not returned
    assert not np.allclose(after.cross(0, 1), before.cross(0, 1))


def test_weights_are_hashed_once_per_version(tmp_path, monkeypatch):
    from napari_corrseg.files import fingerprint

    monkeypatch.setenv("NAPARI_CORRSEG_CACHE_DIR", str(tmp_path / "cache"))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * 1000)
    reads = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        if str(path) == str(weights):
            reads.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    first = fingerprint.file_digest(weights)
    assert fingerprint.file_digest(weights) == first and len(reads) == 1
    monkeypatch.setattr(fingerprint, "_memory", {})  # a new process: the disk memo answers
    assert fingerprint.file_digest(weights) == first and len(reads) == 1
    stamp = weights.stat()
    with real_open(weights, "r+b") as handle:  # same size, same mtime, other bytes
        handle.write(b"b")
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert fingerprint.file_digest(weights) != first and len(reads) == 2
    with fingerprint.remember_on_disk(False):  # --no-cache: the memo file is not written
        monkeypatch.setattr(fingerprint, "_memory", {})
        (tmp_path / "cache" / fingerprint.MEMO_FILE).unlink()
        fingerprint.file_digest(weights)
    assert not (tmp_path / "cache" / fingerprint.MEMO_FILE).exists()
