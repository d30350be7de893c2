"""Co-segmentation over collections: quality that does not fall with n, linear cost."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import napari_corrseg as nc
from napari_corrseg.collection.cosegment import cosegment
from napari_corrseg.collection.linkage import apply_merges, sparse_average_linkage
from napari_corrseg.collection.neighbours import neighbour_graph, owned_edges
from napari_corrseg.collection.segments import match_stage, segment_stage
from napari_corrseg.core.evaluation import adjusted_rand_index
from napari_corrseg.core.maps import AttentionMaps
from napari_corrseg.synthetic.regions import moving_collection
from napari_corrseg.synthetic.tokens import TokenCollection

GRID = (16, 16)


def _collection(n_images, **options):
    # 4 heads keep the 256-image case fast; the benchmark runs SD2's 10 heads at 32 x 32
    settings = {"grid": GRID, "heads": 4, "dtype": np.float16, "cache_items": n_images}
    return TokenCollection(n_images, **{**settings, **options})


def _worst_ari(result, truths) -> float:
    return min(adjusted_rand_index(p, t) for p, t in zip(result.labels, truths, strict=True))


def _id_of_each_part(result, truths) -> dict[int, set[int]]:
    """For every truth part, the predicted ids that cover most of it, over all images."""
    found: dict[int, set[int]] = {}
    for pred, truth in zip(result.labels, truths, strict=True):
        for part in np.unique(truth):
            values, counts = np.unique(pred[truth == part], return_counts=True)
            found.setdefault(int(part), set()).add(int(values[np.argmax(counts)]))
    return found


@pytest.mark.parametrize("n_images", [64, 256])
def test_worst_image_quality_does_not_fall_with_the_number_of_images(n_images):
    small = _collection(4)
    reference = _worst_ari(cosegment(small.maps()), [small.labels(i) for i in range(4)])
    collection = _collection(n_images)
    truths = [collection.labels(i) for i in range(n_images)]
    result = cosegment(collection.maps())
    worst = _worst_ari(result, truths)
    assert abs(worst - reference) <= 0.02, (n_images, worst, reference)
    assert worst >= 0.95
    # one id per part over the whole collection, and different parts get different ids
    ids = _id_of_each_part(result, truths)
    assert all(len(found) == 1 for found in ids.values()), ids
    assert len({next(iter(found)) for found in ids.values()}) == len(ids)
    # the part of image 0 alone is flagged, and only it
    lone = next(iter(ids[collection.unique_ids[0]]))
    assert result.unmatched == [lone]
    record = result.segments[lone - 1]
    assert record.images == [0] and not record.shared and np.isnan(record.consistency)
    shared = [s for s in result.segments if s.shared]
    assert all(0.8 <= s.consistency <= 1.0 for s in shared)
    assert sum(len(s.images) for s in shared) == sum(len(np.unique(t)) for t in truths) - 1


def test_cross_maps_formed_grow_linearly():
    counts = {}
    for n_images in (32, 128):
        maps = _collection(n_images).maps(cache_items=0)
        formed = []
        original = maps._compute

        def counting(i, j, formed=formed, original=original):
            formed.append((i, j))
            return original(i, j)

        maps._compute = counting
        cosegment(maps)
        cross = [p for p in formed if p[0] != p[1]]
        assert len(set(cross)) == len(cross)  # no cross map is formed twice
        # two maps per link, at most k + n_random = 6 links owned per image, plus repairs
        assert len(cross) <= 2 * 7 * n_images
        counts[n_images] = len(cross)
    assert 3.0 < counts[128] / counts[32] < 5.0


def test_a_mapper_running_stages_elsewhere_gives_identical_results():
    collection = _collection(24)
    expected = cosegment(collection.maps())
    calls = []

    def mapper(fn, arguments):
        # as a Dask driver would: arguments and results cross a process boundary, and
        # each "worker" opens its own maps
        calls.append((fn.__name__, len(arguments)))
        arguments = pickle.loads(pickle.dumps(arguments))

        def run(args):
            return pickle.dumps(fn(_collection(24).maps(), *args))

        with ThreadPoolExecutor(3) as pool:
            return [pickle.loads(r) for r in pool.map(run, arguments)]

    seen = []
    found = cosegment(collection.maps(), mapper=mapper, progress=lambda s, f: seen.append(s))
    assert [name for name, _ in calls[:2]] == ["segment_stage", "match_stage"]
    assert calls[0][1] == 24 and calls[1][1] <= 24  # one task per image
    for a, b in zip(found.labels, expected.labels, strict=True):
        np.testing.assert_array_equal(a, b)
    assert found.threshold == expected.threshold
    assert {"segment", "match", "cluster"} <= set(seen)


def test_the_chosen_threshold_passed_back_reproduces_the_result():
    maps = _collection(24).maps()
    first = cosegment(maps)
    again = cosegment(maps, threshold=first.threshold)
    for a, b in zip(first.labels, again.labels, strict=True):
        np.testing.assert_array_equal(a, b)
    coarse = cosegment(maps, threshold=first.merge_distances[-1] * 2)  # above every merge
    assert coarse.n_segments < first.n_segments


def test_stage_results_are_small():
    collection = _collection(3, grid=(32, 32))
    maps = collection.maps()
    segments = {i: segment_stage(maps, i) for i in range(3)}
    evidence = match_stage(maps, 0, [1, 2], segments)
    for item in (*segments.values(), *evidence):
        assert len(pickle.dumps(item)) < 64_000  # never an (N, N) map (4 MB here)


def test_moving_collections_keep_their_quality_as_they_grow():
    worst = {}
    for n_images in (4, 16):
        scene = moving_collection(n_images, GRID, seed=2)
        result = nc.cosegment(scene.self_maps, scene.cross_maps, GRID)
        worst[n_images] = _worst_ari(result, scene.labels)
        lone = next(iter(_id_of_each_part(result, scene.labels)[scene.unique_id]))
        assert result.unmatched == [lone]
    assert worst[4] >= 0.95 and abs(worst[16] - worst[4]) <= 0.02, worst


def test_dense_maps_with_some_pairs_use_those_pairs():
    scene = moving_collection(4, GRID, seed=1)
    chain = {(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)}
    maps = {(i, i): m for i, m in enumerate(scene.self_maps)}
    maps.update({p: scene.cross_maps[p] for p in chain})
    dense = AttentionMaps(GRID, [nc.ImageGeometry(GRID, GRID)] * 4, maps)
    result = cosegment(dense)
    assert _worst_ari(result, scene.labels) >= 0.95
    ids = _id_of_each_part(result, scene.labels)
    assert all(len(found) == 1 for found in ids.values())
    del maps[(2, 3)], maps[(3, 2)]
    broken = AttentionMaps(GRID, [nc.ImageGeometry(GRID, GRID)] * 4, maps)
    with pytest.raises(ValueError, match=r"image 3 .* lacks the ordered pairs"):
        cosegment(broken)


def test_public_names_point_at_the_collection_algorithm():
    import napari_corrseg.core.cosegmentation as old_home

    assert nc.cosegment is cosegment
    assert old_home.cosegment is cosegment  # the old import path still works
    assert nc.Cosegmentation is old_home.Cosegmentation


def test_neighbour_graph_is_connected_and_has_no_repeats(monkeypatch):
    import napari_corrseg.collection.neighbours as neighbours

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 8))
    group = np.repeat(np.arange(20), 30)
    descriptors = centres[group] + 0.1 * rng.normal(size=(600, 8))
    for limit in (4096, 100):  # exact search, then NN-descent
        monkeypatch.setattr(neighbours, "EXACT_LIMIT", limit)
        graph = neighbour_graph(descriptors, k=4, n_random=2, seed=1)
        assert all(len(set(p.tolist())) == len(p) >= 6 for p in graph)
        assert all(i not in p for i, p in enumerate(graph))
        nearest = np.array([p[:4] for p in graph])
        assert np.mean(group[nearest] == group[:, None]) > 0.95
    owned = owned_edges(graph)
    links = [tuple(sorted((i, j))) for i, partners in enumerate(owned) for j in partners]
    assert len(links) == len(set(links))  # every link once
    assert set(links) == {tuple(sorted((i, int(j)))) for i, p in enumerate(graph) for j in p}
    # two far-apart groups and no random links: still one connected graph
    split = np.concatenate([np.zeros((5, 2)), np.ones((5, 2)) * 100]) + rng.normal(size=(10, 2))
    linked = neighbour_graph(split, k=2, n_random=0)
    reach, frontier = {0}, [0]
    while frontier:
        i = frontier.pop()
        for j in (*linked[i], *[a for a, p in enumerate(linked) if i in p]):
            if int(j) not in reach:
                reach.add(int(j))
                frontier.append(int(j))
    assert reach == set(range(10))


def test_sparse_average_linkage_matches_scipy_and_never_joins_unseen_pairs():
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist

    points = np.random.default_rng(3).normal(size=(30, 2))
    rows, cols = np.triu_indices(30, 1)
    _, heights = sparse_average_linkage(30, rows, cols, pdist(points))
    np.testing.assert_allclose(np.sort(heights), linkage(pdist(points), "average")[:, 2])
    # two groups with no observed pair between them stay apart
    merges, heights = sparse_average_linkage(4, np.array([0, 2]), np.array([1, 3]), [1.0, 2.0])
    assert len(heights) == 2
    np.testing.assert_array_equal(apply_merges(4, merges, 2), [0, 0, 1, 1])


def test_bad_input_is_named():
    collection = _collection(3)
    with pytest.raises(ValueError, match="at least 2 images"):
        cosegment(collection.maps().subset([0]))
    with pytest.raises(ValueError, match='threshold must be "auto"'):
        cosegment(collection.maps(), threshold="high")
    with pytest.raises(ValueError, match="neighbours has 2 entries for 3 images"):
        cosegment(collection.maps(), neighbours=[[1], [0]])


def _dense(scene, replace=None):
    maps = {(i, i): m for i, m in enumerate(scene.self_maps)}
    maps.update(scene.cross_maps)
    maps.update(replace or {})
    return AttentionMaps(GRID, [nc.ImageGeometry(GRID, GRID)] * len(scene.self_maps), maps)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda m: np.full_like(m, np.nan), r"maps\.cross\(0, 1\) contains NaN"),
        (lambda m: m * 3, r"maps\.cross\(0, 1\) is not row-stochastic"),
        (lambda m: -m, r"maps\.cross\(0, 1\) has negative entries"),
    ],
)
def test_dense_attention_maps_are_checked_where_they_enter(bad, message):
    scene = moving_collection(4, GRID, seed=0)
    with pytest.raises(ValueError, match=message):
        cosegment(_dense(scene, {(0, 1): bad(scene.cross_maps[(0, 1)])}))


def test_one_cosegment_call_checks_each_map_once(attention_checks):
    scene = moving_collection(6, GRID, seed=0)
    given = {id(m) for m in (*scene.self_maps, *scene.cross_maps.values())}
    for call in (
        lambda: cosegment(scene.self_maps, scene.cross_maps, GRID),
        lambda: cosegment(_dense(scene)),
    ):
        attention_checks.clear()
        result = call()
        assert sorted(attention_checks) == sorted(given)  # each map given, once, nothing else
        assert _worst_ari(result, scene.labels) >= 0.95
