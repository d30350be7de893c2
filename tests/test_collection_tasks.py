"""Collection tasks in process on the tiny model: fill, resume, damage, cancel, outputs."""

from __future__ import annotations

import csv
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_corrseg.errors import Cancelled, InputImageError
from napari_corrseg.tasks.collection import (
    collect_images,
    cosegment_collection,
    fill_store,
    list_image_files,
    open_store,
    transfer_over_collection,
)

pytestmark = pytest.mark.slow


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        rows, cols = np.mgrid[0 : 48 + 4 * k, 0:64]
        base = np.stack([(rows * 4 + 16 * k) % 256, (cols * 3) % 256, 128 + 0 * rows], -1)
        out.append((base + rng.integers(0, 30, base.shape)).clip(0, 255).astype(np.uint8))
    return out


@pytest.fixture
def store(tmp_path, tiny_engine):
    return open_store(tmp_path / "store", tiny_engine)


def test_fill_computes_only_what_is_missing(store, tiny_engine):
    images = _images(5)
    plans = []
    first = fill_store(store, images[:3], tiny_engine, on_plan=plans.append)
    assert (first.computed, first.reused, first.recomputed) == (3, 0, 0)
    assert plans[0].n_missing == 3 and plans[0].bytes_per_image == store.estimate_bytes(
        1, tiny_engine.query_key_shape()
    )
    assert "3 to compute" in plans[0].describe() and "MB" in plans[0].describe()
    calls = tiny_engine.encoder_calls
    again = fill_store(store, images[:3], tiny_engine)
    assert (again.computed, again.reused) == (0, 3)
    assert tiny_engine.encoder_calls == calls  # nothing went through the model
    grown = fill_store(store, images, tiny_engine)  # two images added to the collection
    assert (grown.computed, grown.reused) == (2, 3)
    assert grown.keys[:3] == first.keys and len(set(grown.keys)) == 5
    assert grown.shapes == [im.shape[:2] for im in images]
    # nothing to compute: no engine needed at all
    assert fill_store(store, images, None).reused == 5


def test_damaged_entry_is_recomputed_with_one_warning(store, tiny_engine):
    images = _images(3)
    report = fill_store(store, images, tiny_engine)
    key = report.keys[1]
    before = store.read(key)
    chunk = next(p for p in (store.root / key[:2] / key / "keys").rglob("*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0xFF
    chunk.write_bytes(bytes(data))
    fresh = open_store(store.path, tiny_engine)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        repaired = fill_store(fresh, images, tiny_engine)
    assert (repaired.computed, repaired.reused, repaired.recomputed) == (0, 2, 1)
    messages = [str(w.message) for w in caught if "damaged" in str(w.message)]
    assert len(messages) == 1 and "image_0001" in messages[0]
    after = fresh.read(key)
    np.testing.assert_array_equal(after[0], before[0])  # one image per pass: same bits
    np.testing.assert_array_equal(after[1], before[1])


def test_cancel_keeps_what_was_stored(store, tiny_engine):
    images = _images(4)
    done = []

    def progress(stage, fraction):
        if stage == "extract":
            done.append(fraction)

    with pytest.raises(Cancelled):
        fill_store(store, images, tiny_engine, progress=progress, cancel=lambda: len(done) >= 2)
    assert len(store) == 2
    resumed = fill_store(store, images, tiny_engine)
    assert (resumed.computed, resumed.reused) == (2, 2)


def test_engine_of_other_settings_is_refused(tmp_path, tiny_engine):
    from napari_corrseg.collection.store import TokenStore, store_settings
    from napari_corrseg.errors import CorrsegError

    other = TokenStore(tmp_path / "store", store_settings({"model": "another"}, 256))
    with pytest.raises(CorrsegError, match="differ"):
        fill_store(other, _images(1), tiny_engine)
    assert len(other) == 0


def test_folder_inputs_and_errors(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for k, image in enumerate(_images(3)):
        iio.imwrite(folder / f"img{k}.png", image)
    (folder / "notes.txt").write_text("not an image")
    files = list_image_files([folder, folder / "img1.png"])
    assert [p.name for p in files] == ["img0.png", "img1.png", "img2.png"]
    collection = collect_images(files)
    assert collection.names == ["img0", "img1", "img2"]
    assert collection.load(2).shape == (56, 64, 3)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputImageError, match="holds no images"):
        list_image_files([empty])
    with pytest.raises(InputImageError, match="does not exist"):
        list_image_files([tmp_path / "nope"])
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputImageError, match=r"broken\.png"):
        collect_images(list_image_files([folder]))


def test_cosegment_and_transfer_in_image_pixels(tmp_path, store, tiny_engine):
    from napari_corrseg.files.collection_export import (
        write_collection_coseg,
        write_collection_transfer,
    )

    images = _images(4)
    report = fill_store(store, images, tiny_engine, names=["a", "b", "c", "d"])
    backend = tiny_engine.attention_backend
    stages = []
    coseg = cosegment_collection(
        store,
        report.keys,
        names=report.names,
        backend=backend,
        progress=lambda s, f: stages.append(s),
    )
    assert "cross maps" in stages
    assert [lab.shape for lab in coseg.labels] == [im.shape[:2] for im in images]
    assert [lab.shape for lab in coseg.labels_grid] == [(16, 16)] * 4
    scores = [score for _, score in coseg.ranking]
    assert scores == sorted(scores) and sorted(i for i, _ in coseg.ranking) == [0, 1, 2, 3]
    points = np.array([[5.0, 5.0], [30.0, 40.0], [np.nan, np.nan]])
    moved = transfer_over_collection(
        store, report.keys, keypoints={0: points}, names=report.names, backend=backend
    )
    assert sorted(moved.points) == [1, 2, 3] and moved.sources == [0]
    for target, result in moved.points.items():
        height, width = images[target].shape[:2]
        assert result.points.shape == (3, 2)
        inside = result.points[:2]
        assert (inside >= -0.5).all() and (inside <= [height - 0.5, width - 0.5]).all()
        np.testing.assert_allclose(
            result.geometry.pixel_to_grid(result.points[:2]), result.points_grid[:2]
        )
    with pytest.raises(InputImageError, match="outside the source image"):
        transfer_over_collection(store, report.keys, keypoints={0: [[500.0, 5.0]]})
    # writers: one file per image and a summary, least confident first
    written = write_collection_coseg(tmp_path / "coseg", coseg)
    assert "labels/a.tif" in written
    assert tifffile.imread(tmp_path / "coseg" / "labels" / "c.tif").shape == images[2].shape[:2]
    rows = list(csv.DictReader(open(tmp_path / "coseg" / "summary.csv")))
    assert [float(r["score"]) for r in rows] == sorted(float(r["score"]) for r in rows)
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    write_collection_transfer(tmp_path / "transfer", moved)
    rows = list(csv.DictReader(open(tmp_path / "transfer" / "summary.csv")))
    assert sorted(r["image"] for r in rows) == ["b", "c", "d"]  # not the source
    assert [float(r["score"]) for r in rows] == sorted(float(r["score"]) for r in rows)
    table = list(csv.DictReader(open(tmp_path / "transfer" / "points" / "b.csv")))
    assert [r["keypoint_id"] for r in table] == ["0", "1", "2"]
    assert table[0]["source"] == "a"
