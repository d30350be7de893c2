"""Benchmark readers on tiny folders written in the published layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_corrseg.errors import CorrsegError
from napari_corrseg.harness import synthetic_data
from napari_corrseg.harness.datasets import (
    DatasetError,
    load_image,
    read_dataset,
    read_pf_pascal,
    read_pf_willow,
    read_spair,
)


@pytest.fixture
def spair(tmp_path):
    return tmp_path, synthetic_data.write_spair(tmp_path, n_pairs=3)


def test_spair_reader_swaps_xy_to_row_col_and_uses_target_bbox(spair):
    root, written = spair
    pairs = read_spair(root)
    assert [p.pair_id for p in pairs] == sorted(written)
    for pair in pairs:
        truth = written[pair.pair_id]
        np.testing.assert_allclose(pair.source_points, truth.source_points)
        np.testing.assert_allclose(pair.target_points, truth.target_points)
        # the file holds (x, y); annotated target points follow the warp in (row, col)
        np.testing.assert_allclose(truth.warp(pair.source_points), pair.target_points)
        extent = truth.target_points.max(0) - truth.target_points.min(0) + 8
        assert pair.threshold_size == pytest.approx(extent.max())
        assert pair.threshold_kind == "target bbox"
        assert pair.source_path.parent.name == pair.category
        assert load_image(pair.target_path).shape == truth.target.shape
    assert {p.category for p in pairs} == {"cat", "dog"}
    assert len(read_dataset("spair", root, limit=2)) == 2


def test_spair_missing_keypoints_are_dropped(spair):
    root, _ = spair
    path = sorted((root / "PairAnnotation" / "test").glob("*.json"))[0]
    data = json.loads(path.read_text())
    data["trg_kps"][1] = [-1, -1]
    path.write_text(json.dumps(data))
    pair = read_spair(root)[0]
    assert pair.n_points == len(data["src_kps"]) - 1


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: d.pop("trg_kps"), "no field 'trg_kps'"),
        (lambda d: d.update(src_kps=[[1, 2, 3]]), "malformed"),
        (lambda d: d.update(trg_imname="nowhere.jpg"), "nowhere.jpg"),
    ],
)
def test_spair_malformed_pair_file_names_the_file(spair, damage, expected):
    root, _ = spair
    path = sorted((root / "PairAnnotation" / "test").glob("*.json"))[0]
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=expected) as info:
        read_spair(root)
    assert path.name in str(info.value)


def test_spair_broken_json_and_missing_folder(tmp_path, spair):
    root, _ = spair
    path = sorted((root / "PairAnnotation" / "test").glob("*.json"))[0]
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON") as info:
        read_spair(root)
    assert str(path) in str(info.value)
    with pytest.raises(DatasetError, match="PairAnnotation"):
        read_spair(tmp_path / "elsewhere")
    assert issubclass(DatasetError, CorrsegError)


def test_pf_willow_reader_resolves_published_paths_and_keypoint_bbox(tmp_path):
    written = synthetic_data.write_pf_willow(tmp_path, n_pairs=3, n_points=10)
    pairs = read_pf_willow(tmp_path)
    assert len(pairs) == 3
    for pair, truth in zip(pairs, written, strict=True):
        np.testing.assert_allclose(pair.source_points, truth.source_points)
        np.testing.assert_allclose(pair.target_points, truth.target_points)
        extent = truth.target_points.max(0) - truth.target_points.min(0)
        assert pair.threshold_size == pytest.approx(extent.max())
        assert pair.threshold_kind == "target keypoint bbox"
        assert pair.source_path.is_file()
    assert [p.category for p in pairs] == ["car(G)", "duck(S)", "car(G)"]


def test_pf_willow_malformed_csv_names_line_and_file(tmp_path):
    synthetic_data.write_pf_willow(tmp_path, n_pairs=2)
    path = tmp_path / "test_pairs.csv"
    lines = path.read_text().splitlines()
    lines[2] = ",".join(lines[2].split(",")[:-1])  # drop one column
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="line 3") as info:
        read_pf_willow(tmp_path)
    assert str(path) in str(info.value)
    with pytest.raises(DatasetError, match="does not exist"):
        read_pf_willow(tmp_path / "missing")


def test_pf_willow_missing_image_is_named(tmp_path):
    synthetic_data.write_pf_willow(tmp_path, n_pairs=1)
    next(tmp_path.glob("car(G)/*_b.png")).unlink()
    with pytest.raises(DatasetError, match=r"000_b\.png"):
        read_pf_willow(tmp_path)


def test_pf_pascal_reader_class_names_and_image_side(tmp_path):
    written = synthetic_data.write_pf_pascal(tmp_path, n_pairs=2)
    pairs = read_pf_pascal(tmp_path)
    assert [p.category for p in pairs] == ["aeroplane", "bicycle"]
    for pair, truth in zip(pairs, written, strict=True):
        np.testing.assert_allclose(pair.target_points, truth.target_points)
        assert pair.threshold_size == max(truth.target.shape[:2])
        assert pair.threshold_kind == "target image"


def test_pf_pascal_missing_column_and_unknown_dataset(tmp_path):
    synthetic_data.write_pf_pascal(tmp_path, n_pairs=1)
    path = tmp_path / "test_pairs_pf_pascal.csv"
    path.write_text(path.read_text().replace("XB", "XQ", 1))
    with pytest.raises(DatasetError, match="XB"):
        read_pf_pascal(tmp_path)
    with pytest.raises(DatasetError, match="spair, pf-willow, pf-pascal"):
        read_dataset("caltech", tmp_path)


def test_load_image_rejects_unreadable_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"broken\.png"):
        load_image(path)
