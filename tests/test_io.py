"""Reading images and keypoints exactly; atomic, napari-readable writing with the umask.

Result-folder transactions (and SIGKILLs during them) are in ``test_output_folder.py``.
"""

from __future__ import annotations

import json
import os
import stat
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
    read_points_table,
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
    with pytest.raises(InputImageError, match="5 pages"):
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


# -- images: what the file says, never a shape guess -----------------------------------


def test_three_and_four_page_grey_tiffs_are_stacks_not_colour(tmp_path):
    for pages in (2, 3, 4):
        stack = np.arange(pages * 20 * 30, dtype=np.uint16).reshape(pages, 20, 30)
        path = tmp_path / f"stack{pages}.tif"
        tifffile.imwrite(path, stack, photometric="minisblack")
        with pytest.raises(InputImageError, match=f"holds {pages} pages"):
            read_image(path)
    # the same numbers as one RGB page (what the old reader guessed) are colour
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((20, 30, 3), np.uint8), photometric="rgb")
    assert read_image(tmp_path / "rgb.tif").shape == (20, 30, 3)


def test_imagej_hyperstack_and_multichannel_pages_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "ij.tif", np.zeros((3, 20, 30), np.uint8), imagej=True)
    with pytest.raises(InputImageError, match="3 pages"):
        read_image(tmp_path / "ij.tif")
    five = np.zeros((20, 30, 5), np.uint8)
    tifffile.imwrite(tmp_path / "five.tif", five, photometric="minisblack", planarconfig="contig")
    with pytest.raises(InputImageError, match="5 grey samples"):
        read_image(tmp_path / "five.tif")


def test_tiff_photometric_variants(tmp_path):
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "white.tif", grey, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(tmp_path / "white.tif"), 255 - grey)
    alpha = np.stack([grey, np.full_like(grey, 7)], axis=-1)
    tifffile.imwrite(
        tmp_path / "ga.tif", alpha, photometric="minisblack", extrasamples=["unassalpha"]
    )
    rgba = read_image(tmp_path / "ga.tif")
    assert rgba.shape == (20, 30, 4)
    np.testing.assert_array_equal(rgba[..., 1], grey)
    np.testing.assert_array_equal(rgba[..., 3], 7)
    indices = rng.integers(0, 4, (20, 30), dtype=np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :4] = [[0, 65535, 0, 0], [0, 0, 65535, 0], [0, 0, 0, 65535]]
    tifffile.imwrite(tmp_path / "palette.tif", indices, photometric="palette", colormap=colormap)
    shown = read_image(tmp_path / "palette.tif")
    assert shown.shape == (20, 30, 3)
    np.testing.assert_array_equal(shown[indices == 1], [[65535, 0, 0]] * int((indices == 1).sum()))
    cmyk = np.zeros((20, 30, 4), np.uint8)
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated")
    with pytest.raises(InputImageError, match="CMYK"):
        read_image(tmp_path / "cmyk.tif")


def test_sixteen_bit_colour_png_is_read_at_sixteen_bits(tmp_path):
    from png_writer import png_bytes

    rng = np.random.default_rng(4)
    rgb = (rng.random((21, 33, 3)) * 65535).astype(np.uint16)
    for interlace in (False, True):
        path = tmp_path / f"deep{int(interlace)}.png"
        path.write_bytes(png_bytes(rgb, interlace=interlace))  # every filter type
        loaded = read_image(path)
        assert loaded.dtype == np.uint16
        np.testing.assert_array_equal(loaded, rgb)
    rgba = (rng.random((18, 19, 4)) * 65535).astype(np.uint16)
    (tmp_path / "rgba.png").write_bytes(png_bytes(rgba))
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba)
    grey = (rng.random((17, 20)) * 65535).astype(np.uint16)
    (tmp_path / "grey.png").write_bytes(png_bytes(grey, transparent=(int(grey[0, 0]),)))
    keyed = read_image(tmp_path / "grey.png")  # a tRNS colour becomes alpha
    np.testing.assert_array_equal(keyed[..., 0], grey)
    assert keyed[0, 0, 3] == 0 and (keyed[..., 3] == 0).sum() == (grey == grey[0, 0]).sum()


def test_grey_plus_alpha_png_is_read_as_rgba(tmp_path):
    from png_writer import png_bytes

    grey = np.arange(16 * 20, dtype=np.uint8).reshape(16, 20)
    alpha = np.full_like(grey, 128)
    for depth, data in (("8", np.stack([grey, alpha], -1)), ("16", np.stack([grey, alpha], -1))):
        data = data.astype(np.uint16) * 257 if depth == "16" else data
        path = tmp_path / f"ga{depth}.png"
        path.write_bytes(png_bytes(data))
        rgba = read_image(path)
        assert rgba.shape == (16, 20, 4)
        np.testing.assert_array_equal(rgba[..., 0], rgba[..., 2])
        np.testing.assert_array_equal(rgba[..., 3], data[..., 1])


def test_unreadable_kinds_of_file_name_the_problem(tmp_path):
    with pytest.raises(InputImageError, match="is a folder"):
        read_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputImageError, match="empty file"):
        read_image(tmp_path / "empty.png")
    frames = [np.full((20, 20, 3), v, np.uint8) for v in (0, 120, 240)]
    iio.imwrite(tmp_path / "anim.gif", np.stack(frames), extension=".gif")
    with pytest.raises(InputImageError, match="3 frames"):
        read_image(tmp_path / "anim.gif")
    iio.imwrite(tmp_path / "dot.png", np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(InputImageError, match="is 1x1 pixels"):
        read_image(tmp_path / "dot.png")
    png = (tmp_path / "dot.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(InputImageError, match=r"cut\.png"):
        read_image(tmp_path / "cut.png")
    complex_tiff = tmp_path / "complex.tif"
    tifffile.imwrite(complex_tiff, np.zeros((20, 20), np.complex64))
    with pytest.raises(InputImageError, match="complex"):
        read_image(complex_tiff)


# -- keypoint tables -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "layout"),
    [
        (b"0,10,20\n1,30,40\n2,50,60\n", "index,row,col"),  # headerless napari layout
        (b"1,10,20\n2,30,40\n3,50,60\n", "index,row,col"),  # 1-based index
        (b"\xef\xbb\xbfrow,col\n10,20\n30,40\n50,60\n", "row,col"),  # Excel CSV UTF-8
        ("row,col\n10,20\n30,40\n50,60\n".encode("utf-16"), "row,col"),
        (b"row;col\n10,0;20\n30;40\n50;60,0\n", "row,col"),  # European Excel
        (b"row\tcol\n10\t20\n30\t40\n50\t60\n", "row,col"),
        (b"# from my notebook\n10 20\n30 40\n\n50 60\n", "two columns"),
        (b"index,axis-0,axis-1\n0,10,20\n1,30,40\n2,50,60\n", "napari"),
    ],
)
def test_keypoint_tables_in_every_common_form(tmp_path, data, layout):
    path = tmp_path / "points.csv"
    path.write_bytes(data)
    table = read_points_table(path)
    assert table.layout == layout
    np.testing.assert_array_equal(table.points, [[10, 20], [30, 40], [50, 60]])
    np.testing.assert_array_equal(read_points_csv(path), table.points)


def test_extra_columns_and_encodings_are_kept(tmp_path):
    path = tmp_path / "named.csv"
    path.write_bytes("index,axis-0,axis-1,name,size\n0,1,2,Schwanzspitze ä,3\n".encode("cp1252"))
    table = read_points_table(path)
    assert table.encoding == "cp1252"
    assert list(table.columns) == ["name", "size"] and table.names[0] == "Schwanzspitze ä"
    np.testing.assert_array_equal(table.index, [0])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"10,20,5\n30,40,6\n", "no header"),  # three columns, first is not an index
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not a text CSV"),
        (b"row,col\n", "no points"),
        (b"row,col,row\n1,2,3\n", "twice"),
        (b"row,col\n1,2,3\n", "line 2 has 3 values"),
        (b"row,col\n1,\n", "line 2 has no col"),
        (b"row,col\n1,inf\n", "infinite"),
        (b"a,b\n1,2\n", "axis-0"),
    ],
)
def test_keypoint_tables_that_cannot_be_read_exactly(tmp_path, data, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(data)
    with pytest.raises(InputImageError, match=message):
        read_points_table(path)


def test_missing_points_may_be_allowed(tmp_path):
    path = tmp_path / "partial.csv"
    path.write_text("index,axis-0,axis-1,name\n0,1,2,nose\n1,,,tail\n")
    table = read_points_table(path, allow_missing=True)
    assert np.isnan(table.points[1]).all() and list(table.names) == ["nose", "tail"]


# -- written files follow the umask --------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = write_json(tmp_path / f"r{umask:o}.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
