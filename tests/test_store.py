"""The token store on real zarr on disk: round trip, atomicity, damage, size, concurrency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_corrseg.collection.store import (
    DamagedEntryError,
    StoreError,
    TokenStore,
    image_key,
    store_settings,
)
from napari_corrseg.core.maps import ImageGeometry

SETTINGS = store_settings({"model": "test", "dtype": "float32"}, 256, layers="auto")
GEOMETRY = ImageGeometry((40, 60), (4, 4))


def _tokens(seed: int, shape=(2, 3, 16, 8)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(np.float32) * 3, rng.standard_normal(shape)


def _key(n: int) -> str:
    return f"{n:064x}"


def _entry_files(store: TokenStore, key: str) -> list[Path]:
    folder = store.root / key[:2] / key
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_round_trip_is_float16_and_verified(tmp_path):
    store = TokenStore(tmp_path / "store", SETTINGS)
    queries, keys = _tokens(0)
    assert store.write(_key(1), queries, keys, GEOMETRY, name="a.png") is True
    assert store.write(_key(1), queries, keys, GEOMETRY) is False  # already there
    got_q, got_k, geometry = store.read(_key(1))
    assert got_q.dtype == np.float16 and got_q.shape == (2, 3, 16, 8)
    np.testing.assert_array_equal(got_q, queries.astype(np.float16))
    np.testing.assert_array_equal(got_k, keys.astype(np.float16))
    assert geometry == GEOMETRY and store.name(_key(1)) == "a.png"
    assert not got_q.flags.writeable  # cached arrays cannot be changed by a caller
    # one layer (H, N, d) is stored as L = 1
    store.write(_key(2), queries[0], keys[0], GEOMETRY)
    assert store.read(_key(2))[0].shape == (1, 3, 16, 8)
    assert store.missing([_key(3), _key(1), _key(3), _key(2)]) == [_key(3)]
    assert sorted(store.keys()) == [_key(1), _key(2)] and len(store) == 2


def test_write_checks_shapes_and_float16_range(tmp_path):
    store = TokenStore(tmp_path / "store", SETTINGS)
    queries, keys = _tokens(0)
    with pytest.raises(ValueError, match=r"both be"):
        store.write(_key(1), queries, keys[:1], GEOMETRY)
    with pytest.raises(ValueError, match="grid"):
        store.write(_key(1), queries, keys, ImageGeometry((40, 60), (5, 5)))
    with pytest.raises(ValueError, match="65504"):
        store.write(_key(1), queries * 1e5, keys, GEOMETRY)
    with pytest.raises(ValueError, match="key"):
        store.write("../../etc", queries, keys, GEOMETRY)
    assert len(store) == 0


def test_settings_keep_entries_apart_and_a_foreign_folder_is_refused(tmp_path):
    queries, keys = _tokens(0)
    first = TokenStore(tmp_path / "store", SETTINGS)
    first.write(_key(1), queries, keys, GEOMETRY)
    other = TokenStore(tmp_path / "store", {**SETTINGS, "timestep": 100})
    assert not other.has(_key(1)) and first.has(_key(1))
    again = TokenStore(tmp_path / "store", json.loads(json.dumps(SETTINGS)))
    assert again.has(_key(1))  # same settings, same namespace
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.docx").write_text("precious")
    with pytest.raises(StoreError, match="not a napari-corrseg token store"):
        TokenStore(tmp_path / "thesis", SETTINGS)
    assert sorted(p.name for p in (tmp_path / "thesis").iterdir()) == ["chapter1.docx"]


def test_a_killed_writer_leaves_nothing_a_reader_sees(tmp_path):
    store = TokenStore(tmp_path / "store", SETTINGS)
    key = _key(7)
    shard = store.root / key[:2]
    shard.mkdir(parents=True)
    # what a writer SIGKILLed mid-write leaves: a hidden, half-written sibling
    from napari_corrseg.collection.store_entries import HOST

    partial = shard / f".{key}.{HOST}.{2**22 + 12345}.abcd1234.partial"
    (partial / "queries").mkdir(parents=True)
    (partial / "zarr.json").write_text("{")
    assert not store.has(key) and store.missing([key]) == [key] and len(store) == 0
    with pytest.raises(KeyError):
        store.read(key)
    assert store.remove_stale_partials() == 1  # its writer (that pid) is gone
    assert not partial.exists()
    # a live writer's folder is left alone
    live = shard / f".{key}.{HOST}.{os.getpid()}.abcd1234.partial"
    live.mkdir()
    assert store.remove_stale_partials() == 0 and live.exists()


@pytest.mark.parametrize("damage", ["flip_chunk", "truncate_chunk", "drop_chunk", "bad_json"])
def test_damaged_entry_is_detected(tmp_path, damage):
    store = TokenStore(tmp_path / "store", SETTINGS)
    queries, keys = _tokens(1)
    store.write(_key(1), queries, keys, GEOMETRY)
    chunks = [p for p in _entry_files(store, _key(1)) if p.name != "zarr.json"]
    chunk = chunks[0]
    if damage == "flip_chunk":
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0x40
        chunk.write_bytes(bytes(data))
    elif damage == "truncate_chunk":
        chunk.write_bytes(chunk.read_bytes()[:10])
    elif damage == "drop_chunk":
        chunk.unlink()
    else:
        (store.root / _key(1)[:2] / _key(1) / "zarr.json").write_text('{"attributes": ')
    fresh = TokenStore(tmp_path / "store", SETTINGS)  # no in-memory copy
    assert fresh.has(_key(1))
    assert fresh.verify(_key(1)) is False
    with pytest.raises(DamagedEntryError, match="damaged"):
        fresh.read(_key(1))
    fresh.discard(_key(1))
    assert not fresh.has(_key(1))


def test_estimate_matches_the_real_entry_size(tmp_path):
    """At 512 px the three 32x32 decoder layers: 10 heads x 1024 tokens x 64, Q and K."""
    store = TokenStore(tmp_path / "store", SETTINGS)
    shape = (3, 10, 1024, 64)
    rng = np.random.default_rng(0)
    queries = rng.standard_normal(shape, dtype=np.float32)
    store.write(_key(1), queries, queries, ImageGeometry((512, 512), (32, 32)))
    actual = store.size_bytes()
    estimate = TokenStore.estimate_bytes(1, shape)
    assert 2 * np.prod(shape) * 2 == 7_864_320  # the ~7.9 MB of the design notes
    assert abs(actual - estimate) < 1000, (actual, estimate)
    assert TokenStore.estimate_bytes(5000, shape) == 5000 * estimate


def test_image_key_follows_content():
    image = np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    changed = image.copy()
    changed[5, 5, 0] ^= 1
    assert image_key(image) == image_key(image.copy())
    assert image_key(image) != image_key(changed)
    assert len(image_key(image)) == 64


_WRITER = r"""
import sys, time
from pathlib import Path
import numpy as np
from napari_corrseg.collection.store import TokenStore
from napari_corrseg.core.maps import ImageGeometry
root, settings_json, go, who = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
import json
store = TokenStore(root, json.loads(settings_json))
while not go.exists():
    time.sleep(0.005)
created = []
shared = list(range(6))
order = shared if who % 2 == 0 else shared[::-1]
for n in order + [100 + who]:
    rng = np.random.default_rng(n)
    q = rng.standard_normal((2, 3, 16, 8)).astype(np.float32)
    if store.write(f"{n:064x}", q, -q, ImageGeometry((40, 60), (4, 4)), name=str(who)):
        created.append(n)
print(json.dumps(created))
"""


def test_concurrent_writers_to_one_store(tmp_path):
    """Four processes write the same six images (and one each) at once."""
    root = tmp_path / "store"
    TokenStore(root, SETTINGS)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(root), json.dumps(SETTINGS), str(go), str(w)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for w in range(4)
    ]
    time.sleep(1.0)
    go.write_text("go")
    outputs = [writer.communicate(timeout=120) for writer in writers]
    assert all(writer.returncode == 0 for writer in writers), [err for _, err in outputs]
    created = [json.loads(out) for out, _ in outputs]
    for n in range(6):  # each shared image was created by exactly one writer
        assert sum(n in c for c in created) == 1
    assert all(100 + w in created[w] for w in range(4))
    store = TokenStore(root, SETTINGS)
    assert len(store) == 10
    for n in [*range(6), *range(100, 104)]:
        queries, keys, _ = store.read(f"{n:064x}")
        expected = np.random.default_rng(n).standard_normal((2, 3, 16, 8)).astype(np.float16)
        np.testing.assert_array_equal(queries, expected)
        np.testing.assert_array_equal(keys, -expected)
    leftovers = [p for p in store.root.rglob(".*") if p.name.endswith((".partial", ".removed"))]
    assert leftovers == []
