"""AttentionMaps.from_query_key: maps formed on demand equal the dense computation."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from napari_corrseg.core.lazy_maps import numpy_attention
from napari_corrseg.core.maps import AttentionMaps, ImageGeometry

GRID = (8, 8)


def _tokens(n_images, layers=None, heads=3, dim=16, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    shape = (heads, GRID[0] * GRID[1], dim) if layers is None else (layers, heads, 64, dim)
    queries = [scale * rng.normal(size=shape).astype(np.float32) for _ in range(n_images)]
    keys = [scale * rng.normal(size=shape).astype(np.float32) for _ in range(n_images)]
    return queries, keys


def _reference(queries, keys):
    """Plain float64 numpy: softmax per head and layer, then the mean."""
    q = np.asarray(queries, dtype=np.float64)
    k = np.asarray(keys, dtype=np.float64)
    if q.ndim == 3:
        q, k = q[None], k[None]
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs.mean(axis=(0, 1))


@pytest.mark.parametrize("layers", [None, 3])
def test_lazy_maps_equal_the_dense_formula(layers):
    queries, keys = _tokens(3, layers=layers)
    maps = AttentionMaps.from_query_key(queries, keys, GRID)
    assert maps.is_lazy and maps.n_images == 3 and maps.grid == GRID
    for i in range(3):
        for j in range(3):
            found = maps.cross(i, j)
            assert found.dtype == np.float32 and found.shape == (64, 64)
            np.testing.assert_allclose(found, _reference(queries[i], keys[j]), atol=1e-5)
            np.testing.assert_allclose(found.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(maps.self(1), maps.cross(1, 1))


def test_lazy_maps_equal_the_engine_arithmetic():
    torch = pytest.importorskip("torch")
    from napari_corrseg.engine.capture import accumulate_attention, finish_sums

    queries, keys = _tokens(3, layers=2, heads=4)
    sums: dict = {}
    targets = {0: [0, 1, 2], 1: [1, 0], 2: [2, 1]}
    for layer in range(2):
        # the engine's stored queries are already scaled by 1 / sqrt(d)
        scaled = [torch.from_numpy(q[layer] / np.float32(np.sqrt(q.shape[-1]))) for q in queries]
        accumulate_attention(sums, scaled, [torch.from_numpy(k[layer]) for k in keys], targets)
    engine = finish_sums({8: sums}, {8: 2})[8]
    maps = AttentionMaps.from_query_key(queries, keys, GRID)
    for pair, expected in engine.items():
        np.testing.assert_allclose(maps.cross(*pair), expected, atol=1e-5)


def test_float16_tokens_are_computed_in_float32():
    queries, keys = _tokens(2, layers=2)
    half_q = [q.astype(np.float16) for q in queries]
    half_k = [k.astype(np.float16) for k in keys]
    maps = AttentionMaps.from_query_key(half_q, half_k, GRID)
    expected = _reference(half_q[0].astype(np.float64), half_k[1].astype(np.float64))
    np.testing.assert_allclose(maps.cross(0, 1), expected, atol=1e-5)
    assert maps.query_key(0)[0].dtype == np.float16  # served as given


def test_small_chunks_give_the_same_maps():
    queries, keys = _tokens(2)
    whole = numpy_attention(queries[0], keys[1])
    # 5 score elements per chunk: one row at a time
    np.testing.assert_allclose(numpy_attention(queries[0], keys[1], chunk_elements=5), whole)


def test_cache_stays_bounded_and_each_map_is_computed_once():
    queries, keys = _tokens(6)
    calls = []
    lock = threading.Lock()

    def backend(q, k):
        with lock:
            calls.append(1)
        return numpy_attention(q, k)

    maps = AttentionMaps.from_query_key(queries, keys, GRID, backend=backend, cache_items=3)
    for i in range(6):
        for j in range(6):
            maps.cross(i, j)
            assert maps.cache_info()["maps"] <= 3
    assert len(calls) == 36
    maps.cross(5, 5)  # the last one asked for is still there
    assert len(calls) == 36 and maps.cache_info()["hits"] == 1
    # eight threads asking for the same two maps at once: each is computed once
    calls.clear()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda k: maps.cross(k % 2, 3), range(32)))
    assert len(calls) == 2
    np.testing.assert_array_equal(results[0], results[2])
    with pytest.raises(ValueError, match="read-only"):
        results[0][0, 0] = 1.0  # cached maps are shared: nobody may change them


def test_a_callable_serves_tokens_on_demand_and_pairs_are_not_built():
    queries, keys = _tokens(4)
    asked = []

    def provider(i):
        asked.append(i)
        return queries[i], keys[i]

    maps = AttentionMaps.from_query_key(provider, grid=GRID, n_images=4)
    assert asked == []  # nothing read at construction
    maps.cross(2, 3)
    assert sorted(set(asked)) == [2, 3]
    assert maps.has(0, 3) and not maps.has(0, 4)
    assert len(maps.pairs) == 12 and (3, 1) in maps.pairs and (1, 1) not in maps.pairs
    assert list(maps.pairs)[:3] == [(0, 1), (0, 2), (0, 3)]
    np.testing.assert_array_equal(maps.query_key(1)[1], keys[1])
    big = AttentionMaps.from_query_key(provider, grid=GRID, n_images=10**6)
    assert len(big.pairs) == 10**6 * (10**6 - 1)  # counted, never listed
    part = maps.subset([3, 1])
    np.testing.assert_array_equal(part.cross(0, 1), maps.cross(3, 1))
    dense = maps.to_dense([(0, 1)])
    assert not dense.is_lazy and dense.pairs == [(0, 1)]
    np.testing.assert_array_equal(dense.cross(0, 1), maps.cross(0, 1))


def test_task_functions_work_on_the_lazy_form():
    from napari_corrseg.synthetic.tokens import TokenCollection
    from napari_corrseg.tasks.pipeline import match_images, segment_image

    collection = TokenCollection(3, grid=(12, 12), heads=4)
    lazy = collection.maps()
    dense = lazy.to_dense()
    for a, b in ((lazy, dense),):
        found, expected = match_images(a, 0, 2), match_images(b, 0, 2)
        np.testing.assert_array_equal(found.target_grid_points, expected.target_grid_points)
        np.testing.assert_array_equal(
            segment_image(a, 1).labels_grid, segment_image(b, 1).labels_grid
        )


def test_bad_tokens_are_named():
    queries, keys = _tokens(2)
    with pytest.raises(ValueError, match="needs the token grid"):
        AttentionMaps.from_query_key(queries, keys)
    with pytest.raises(ValueError, match="hold 64 tokens but the grid holds 63"):
        AttentionMaps.from_query_key(queries, keys, (7, 9))
    with pytest.raises(ValueError, match="equal length"):
        AttentionMaps.from_query_key(queries, keys[:1], GRID)
    with pytest.raises(ValueError, match=r"expected \(heads, tokens, dim\)"):
        AttentionMaps.from_query_key([q[0] for q in queries], [k[0] for k in keys], GRID)
    with pytest.raises(ValueError, match="differ in shape"):
        AttentionMaps.from_query_key(queries, [k[:2] for k in keys], GRID)
    with pytest.raises(ValueError, match="floating point"):
        AttentionMaps.from_query_key([q.astype(int) for q in queries], keys, GRID)
    with pytest.raises(ValueError, match="pass n_images"):
        AttentionMaps.from_query_key(lambda i: (queries[i], keys[i]), grid=GRID)
    maps = AttentionMaps.from_query_key(queries, keys, GRID)
    with pytest.raises(KeyError, match="no image 2"):
        maps.cross(0, 2)
    with pytest.raises(ValueError, match="token store"):
        maps.save("never.npz")
    wrong = AttentionMaps.from_query_key(queries, keys, GRID, backend=lambda q, k: np.eye(3))
    with pytest.raises(ValueError, match="backend returned shape"):
        wrong.cross(0, 1)
    dense = AttentionMaps(GRID, [ImageGeometry(GRID, GRID)], {})
    with pytest.raises(ValueError, match="from_query_key"):
        dense.query_key(0)
