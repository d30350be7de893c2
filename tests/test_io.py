"""Reading images and keypoints; atomic, napari-readable writing; output folder rules."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_corrseg.errors import InputImageError, OutputError
from napari_corrseg.files.io import (
    atomic_path,
    display_rgb,
    prepare_output_dir,
    read_image,
    read_points_csv,
    write_bytes,
    write_json,
    write_points_csv,
)


def test_interrupted_write_leaves_no_complete_looking_file(tmp_path):
    target = tmp_path / "matches.csv"
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("match_id,source_row\n0,")
        raise RuntimeError("interrupted half way")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone too


def test_interrupted_write_keeps_the_previous_version(tmp_path):
    target = tmp_path / "run.json"
    write_bytes(target, b'{"old": true}')
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as temporary:
        temporary.write_text('{"new": ')
        raise KeyboardInterrupt
    assert target.read_bytes() == b'{"old": true}'


def test_killed_process_leaves_only_a_hidden_partial_file(tmp_path):
    target = tmp_path / "labels_0.tif"
    script = textwrap.dedent(f"""
        import sys, time
        from napari_corrseg.files.io import atomic_path
        with atomic_path({str(target)!r}) as temporary:
            temporary.write_bytes(b"II*\\x00" + b"\\x00" * 1000)
            print("written", flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "written"
    finally:
        child.kill()  # SIGKILL: no cleanup code runs
        child.wait(timeout=30)
    assert not target.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1
    assert leftovers[0].startswith(".labels_0.tif.") and leftovers[0].endswith(".partial")


def test_points_csv_opens_as_napari_points(tmp_path):
    from napari_builtins.io._read import csv_to_layer_data

    points = np.array([[1.5, 2.0], [10.0, 20.25], [3.0, 4.0]])
    path = write_points_csv(
        tmp_path / "p.csv", points, {"match_id": np.arange(3), "confidence": [0.1, 0.5, 0.9]}
    )
    data, meta, layer_type = csv_to_layer_data(str(path), require_type="points")
    assert layer_type == "points"
    np.testing.assert_allclose(data, points)
    np.testing.assert_allclose(
        np.asarray(meta["properties"]["confidence"], float), [0.1, 0.5, 0.9]
    )
    np.testing.assert_allclose(read_points_csv(path), points)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("index,axis-0,axis-1\n0,1,2\n1,3,4\n", [[1, 2], [3, 4]]),
        ("index,axis-0,axis-1,axis-2\n0,9,1,2\n", [[1, 2]]),  # a 3-D layer: last two axes
        ("row,col\n5,6\n", [[5, 6]]),
        ("x,y\n6,5\n", [[5, 6]]),  # (x, y) columns are swapped into (row, col)
        ("5,6\n7.5,8\n", [[5, 6], [7.5, 8]]),
    ],
)
def test_read_points_csv_layouts(tmp_path, text, expected):
    path = tmp_path / "points.csv"
    path.write_text(text)
    np.testing.assert_allclose(read_points_csv(path), expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty"), ("a,b\n1,2\n", "axis-0"), ("row,col\n1,x\n", "cannot read points")],
)
def test_read_points_csv_errors(tmp_path, text, message):
    path = tmp_path / "points.csv"
    path.write_text(text)
    with pytest.raises(InputImageError, match=message):
        read_points_csv(path)
    with pytest.raises(InputImageError, match="cannot read points file"):
        read_points_csv(tmp_path / "missing.csv")


def test_read_image_formats(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    deep = rng.integers(0, 65535, (20, 30), dtype=np.uint16)
    iio.imwrite(tmp_path / "a.png", rgb)
    iio.imwrite(tmp_path / "a.jpg", rgb)
    tifffile.imwrite(tmp_path / "deep.tif", deep)
    tifffile.imwrite(tmp_path / "planar.tiff", np.moveaxis(rgb, -1, 0))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    assert read_image(tmp_path / "a.jpg").shape == (20, 30, 3)
    loaded = read_image(tmp_path / "deep.tif")
    assert loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, deep)
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tiff"), rgb)


def test_read_image_errors(tmp_path):
    with pytest.raises(InputImageError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputImageError, match="cannot read image"):
        read_image(tmp_path / "broken.png")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 20, 30), np.uint8))
    with pytest.raises(InputImageError, match="one plane"):
        read_image(tmp_path / "stack.tif")
    with_nan = np.ones((32, 32), np.float32)
    with_nan[4, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", with_nan)
    with pytest.raises(InputImageError, match=r"nan\.tif contains NaN"):
        read_image(tmp_path / "nan.tif")
    iio.imwrite(tmp_path / "tiny.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputImageError, match=r"tiny\.png"):
        read_image(tmp_path / "tiny.png")


def test_display_rgb_stretches_16_bit():
    image = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    shown = display_rgb(image)
    assert shown.shape == (2, 2, 3) and shown.dtype == np.uint8
    assert shown[0, 0, 0] < 10 and shown[1, 1, 0] > 245


def test_write_json_is_strict(tmp_path):
    path = write_json(tmp_path / "x.json", {"a": float("nan"), "b": np.float32(2.5), "c": (1,)})
    assert json.loads(path.read_text()) == {"a": None, "b": 2.5, "c": [1]}


def test_prepare_output_dir_rules(tmp_path):
    fresh, reused = prepare_output_dir(tmp_path / "new" / "deep")
    assert fresh.is_dir() and not reused
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="--overwrite"):
        prepare_output_dir(mine)
    assert prepare_output_dir(mine, overwrite=True) == (mine, True)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    write_json(earlier / "run.json", {"tool": "napari-corrseg"})
    assert prepare_output_dir(earlier) == (earlier, True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        prepare_output_dir(tmp_path / "file")
    with pytest.raises(OutputError, match="cannot create"):
        prepare_output_dir(tmp_path / "file" / "below")
