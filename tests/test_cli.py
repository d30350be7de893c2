"""The command line end to end on the tiny model, and every user error's exit code."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_corrseg import cli
from napari_corrseg.files.export import MATCH_COLUMNS

pytestmark = pytest.mark.slow


@pytest.fixture
def images(tmp_path):
    """An 8-bit PNG, a 16-bit grey TIFF and a JPEG of different sizes."""
    rng = np.random.default_rng(5)
    rows, cols = np.mgrid[0:72, 0:96]
    first = np.stack([rows * 3, cols * 2, 255 - rows * 3], axis=-1).astype(np.uint8)
    second = (rng.random((64, 48)) * 60000).astype(np.uint16)
    third = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    paths = [tmp_path / "a.png", tmp_path / "b.tif", tmp_path / "c.jpg"]
    iio.imwrite(paths[0], first)
    tifffile.imwrite(paths[1], second)
    iio.imwrite(paths[2], third)
    return paths


@pytest.fixture
def run(tmp_path, monkeypatch, capsys, tiny_engine):
    """Run the CLI in-process; ``--model tiny`` reuses the session's tiny engine."""
    import napari_corrseg.engine as engine_module

    real_load = engine_module.load_engine
    monkeypatch.setattr(
        engine_module,
        "load_engine",
        lambda model="auto", *args, **kw: (
            # the session's engine has a disk latent cache: --no-cache must get its own
            tiny_engine
            if model == "tiny" and "latent_cache" not in kw
            else real_load(model, *args, **kw)
        ),
    )
    monkeypatch.setenv("NAPARI_CORRSEG_CACHE_DIR", str(tmp_path / "cache"))

    def invoke(*args):
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_match_writes_every_output(run, images, tmp_path):
    from napari_builtins.io._read import csv_to_layer_data

    out = tmp_path / "out"
    code, _, err = run("match", *images, "--out", out, "--model", "tiny", "--timestep", 200)
    assert code == 0, err
    assert "TINY RANDOM" in err  # loud about the model
    shapes = [(72, 96), (64, 48), (40, 56)]
    for j in (1, 2):
        pair = out / f"pair_0_{j}"
        rows = _csv(pair / "matches.csv")
        assert tuple(rows[0]) == MATCH_COLUMNS
        table = np.array([[float(r[c]) for c in MATCH_COLUMNS] for r in rows])
        assert len(table) > 0
        # coordinates are pixels of each image (tiny model grid is 16x16)
        assert table[:, 1].max() <= shapes[0][0] and table[:, 2].max() <= shapes[0][1]
        assert table[:, 3].max() <= shapes[j][0] and table[:, 4].max() <= shapes[j][1]
        assert ((table[:, 5] >= 0) & (table[:, 5] <= 1)).all()
        for side, columns in (("source", [1, 2]), ("target", [3, 4])):
            data, _, kind = csv_to_layer_data(str(pair / f"{side}_points.csv"), "points")
            assert kind == "points"
            np.testing.assert_allclose(data, table[:, columns], rtol=1e-5)
        with np.load(pair / "metrics.npz", allow_pickle=False) as metrics:
            assert metrics["entropy"].shape == (16, 16)
            np.testing.assert_allclose(metrics["entropy_scale"], np.divide(shapes[j], 16))
            np.testing.assert_allclose(metrics["cycle_error_scale"], np.divide(shapes[0], 16))
        for name in ("matches", "cycle_error", "entropy", "density", "nims"):
            assert (pair / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((out / "run.json").read_text())
    assert record["tool"] == "napari-corrseg" and record["command"] == "match"
    assert record["argv"][0] == "match" and record["argv"][-1] == "200"
    assert record["model"]["model"] == "tiny" and record["tiny_model"] is True
    assert record["settings"]["timestep"] == 200
    assert record["extraction"]["timestep"] == 200
    assert [i["sha256"] for i in record["images"]] == [_sha256(p) for p in images]
    assert [i["shape"] for i in record["images"]] == [list(s) for s in shapes]
    assert record["outputs"] == ["pair_0_1", "pair_0_2"]
    assert "numpy" in record["versions"] and "napari-corrseg" in record["versions"]


def test_coseg_writes_labels_of_each_image_shape(run, images, tmp_path):
    out = tmp_path / "coseg"
    store = tmp_path / "store"
    code, _, err = run(
        "coseg", *images[:2], "--out", out, "--store", store, "--model", "tiny", "-q"
    )
    assert code == 0, err
    labels = [tifffile.imread(out / "labels" / f"{name}.tif") for name in ("a", "b")]
    assert [lab.shape for lab in labels] == [(72, 96), (64, 48)]
    table = json.loads((out / "segments.json").read_text())
    ids = {segment["id"] for segment in table["segments"]}
    assert set(np.unique(np.concatenate([lab.ravel() for lab in labels]))) <= ids | {0}
    assert [r["image"] for r in _csv(out / "summary.csv")] in (["a", "b"], ["b", "a"])
    assert json.loads((out / "run.json").read_text())["command"] == "coseg"


def test_transfer_writes_one_row_per_keypoint(run, images, tmp_path):
    points = tmp_path / "points.csv"
    points.write_text("index,axis-0,axis-1\n0,10,20\n1,50.5,80\n2,0,0\n")
    out = tmp_path / "transfer"
    code, _, err = run(
        "transfer",
        images[0],
        points,
        images[1],
        "--out",
        out,
        "--store",
        tmp_path / "store",
        "--model",
        "tiny",
    )
    assert code == 0, err
    rows = _csv(out / "points" / "b.csv")
    assert [r["keypoint_id"] for r in rows] == ["0", "1", "2"]
    moved = np.array([[float(r["axis-0"]), float(r["axis-1"])] for r in rows])
    assert (moved >= -0.5).all() and (moved[:, 0] <= 63.5).all() and (moved[:, 1] <= 47.5).all()
    assert all(0 <= float(r["confidence"]) <= 1 and r["source"] == "a" for r in rows)
    assert [r["image"] for r in _csv(out / "summary.csv")] == ["b"]
    annotations = json.loads((out / "run.json").read_text())["annotations"]
    assert annotations == [{"image": str(images[0]), "file": str(points)}]


def test_transfer_from_several_sources_picks_a_marked_source_per_point(run, images, tmp_path):
    """Row k of every table is keypoint k; a row left empty on one source means that
    keypoint is not visible there, so its proposal must come from another source."""
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text("row,col,name\n10,20,nose\n30,40,ear\n,,tail\n")
    second.write_text("row,col\n5,5\n,\n20,30\n")
    out = tmp_path / "transfer"
    code, _, err = run(
        "transfer", images[0], first, images[1], "--source", images[2], second,
        "--out", out, "--store", tmp_path / "store", "--model", "tiny",
    )  # fmt: skip
    assert code == 0, err
    rows = _csv(out / "points" / "b.csv")
    assert [r["name"] for r in rows] == ["nose", "ear", "tail"]
    assert rows[1]["source"] == "a", "keypoint 1 is marked on a only"
    assert rows[2]["source"] == "c", "keypoint 2 is marked on c only"
    assert [r["keypoint_id"] for r in _csv(out / "points" / "c.csv")] == ["0", "2"]
    assert [r["image"] for r in _csv(out / "summary.csv")] == ["b"]


def test_transfer_carries_painted_labels(run, images, tmp_path):
    labels = np.zeros((72, 96), np.uint16)  # a.png is 72 x 96
    labels[10:40, 20:60] = 3
    painted = tmp_path / "a_labels.tif"
    tifffile.imwrite(painted, labels)
    out = tmp_path / "transfer"
    code, _, err = run(
        "transfer", images[0], painted, images[1], images[2],
        "--out", out, "--store", tmp_path / "store", "--model", "tiny", "-q",
    )  # fmt: skip
    assert code == 0, err
    for name, shape in (("b", (64, 48)), ("c", (40, 56))):
        carried = tifffile.imread(out / "labels" / f"{name}.tif")
        assert carried.shape == shape and set(np.unique(carried)) <= {0, 3}
        confidence = tifffile.imread(out / "labels" / f"{name}_confidence.tif")
        assert confidence.shape == shape and (0 <= confidence).all() and (confidence <= 1).all()
    assert sorted(r["image"] for r in _csv(out / "summary.csv")) == ["b", "c"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: tifffile.imwrite(p, np.zeros((10, 10), np.uint8)), "paint them on that"),
        (lambda p: tifffile.imwrite(p, np.zeros((72, 96), np.float32)), "integer ids"),
        (lambda p: tifffile.imwrite(p, np.zeros((2, 72, 96), np.uint8)), "2 pages"),
    ],
)
def test_unusable_label_images_are_named_before_the_model_loads(
    run, images, tmp_path, make, message
):
    painted = tmp_path / "labels.tif"
    make(painted)
    code, _, err = run(
        "transfer", images[0], painted, images[1], "--out", tmp_path / "o", "--model", "tiny",
    )  # fmt: skip
    assert code == 3 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cache_hit_does_not_touch_the_model(run, images, tmp_path, monkeypatch, tiny_engine):
    code, _, _ = run("match", *images[:2], "--out", tmp_path / "first", "--model", "tiny", "-q")
    assert code == 0

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded although the maps were cached")

    import napari_corrseg.engine as engine_module

    # A hit must not even load the weights: the cache key's model identity is resolved
    # from disk (engine.LazyEngine), so loading would be wasted seconds.
    monkeypatch.setattr(engine_module, "load_engine", must_not_load)
    code, _, err = run("match", *images[:2], "--out", tmp_path / "second", "--model", "tiny")
    assert code == 0, err
    first, second = (tmp_path / d / "pair_0_1" / "matches.csv" for d in ("first", "second"))
    assert first.read_text() == second.read_text()
    code, out, _ = run("cache", "info")
    assert code == 0 and "entries:   1" in out
    from napari_corrseg.files.latent_cache import LatentCache, default_latent_dir

    LatentCache(default_latent_dir()).put({"image": "any"}, np.zeros((4, 8, 8)))
    code, out, _ = run("cache", "clear")
    assert code == 0 and "removed 1 cached attention-map file(s) and 1 cached latent(s)" in out
    assert not list(default_latent_dir().glob("*.npz"))


def test_demo_without_picture(run, tmp_path):
    out = tmp_path / "demo"
    code, _, err = run("demo", "--out", out, "--model", "tiny", "--no-picture")
    assert code == 0, err
    assert "NOT semantic" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiny_model"] is True
    assert len(summary["keypoint_error_px"]) == 8
    assert (out / "pair_0_1" / "matches.csv").is_file()
    assert tifffile.imread(out / "coseg" / "labels_1.tif").shape == (256, 256)
    assert (out / "transfer_0_1" / "target_points.csv").is_file()
    assert not (out / "napari.png").exists()


def _one_error_line(err: str) -> str:
    # with --quiet only one-line warnings (e.g. the tiny-model one) may precede the error
    lines = [line for line in err.strip().splitlines() if "warning: TINY" not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("napari-corrseg: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("missing_image", 3, "does not exist"),
        ("broken_image", 3, "cannot read image"),
        ("unknown_model", 4, "unknown model"),
        ("out_is_file", 5, "not a folder"),
        ("out_not_empty", 5, "--overwrite"),
        ("points_outside", 3, "outside the source image"),
        ("bad_threshold", 1, "--threshold"),
        ("negative_threshold", 1, "--threshold"),
        ("negative_max_matches", 1, "--max-matches"),
        ("nan_min_confidence", 1, "--min-confidence"),
        ("bad_layers", 2, "--layers"),
    ],
)
def test_user_errors_give_one_line_and_an_exit_code(run, images, tmp_path, case, code, message):
    out = tmp_path / "out"
    args = ["match", images[0], images[1], "--out", out, "--model", "tiny", "-q"]
    if case == "missing_image":
        args[2] = tmp_path / "nope.png"
    elif case == "broken_image":
        (tmp_path / "broken.png").write_bytes(b"not a png")
        args[2] = tmp_path / "broken.png"
    elif case == "unknown_model":
        args[6] = "no-such-model"
    elif case == "out_is_file":
        out.write_text("x")
    elif case == "out_not_empty":
        out.mkdir()
        (out / "thesis.docx").write_text("precious")
    elif case == "points_outside":
        (tmp_path / "p.csv").write_text("row,col\n5,5\n500,5\n")
        args = [
            "transfer",
            images[0],
            tmp_path / "p.csv",
            images[1],
            "--out",
            out,
            "-q",
            "--model",
            "tiny",
        ]
    elif case == "bad_layers":
        args += ["--layers", "99"]
    elif case == "bad_threshold":
        args = ["coseg", images[0], images[1], "--out", out, "--threshold", "high", "-q"]
    elif case == "negative_threshold":
        args = ["coseg", images[0], images[1], "--out", out, "--threshold", "-1", "-q"]
    elif case == "negative_max_matches":
        args += ["--max-matches", "-3"]
    elif case == "nan_min_confidence":
        args += ["--min-confidence", "nan"]
    exit_code, _, err = run(*args)
    assert exit_code == code
    assert message in _one_error_line(err)
    checked_first = ("negative_threshold", "negative_max_matches", "nan_min_confidence")
    if case in ("missing_image", "broken_image", "points_outside", *checked_first):
        assert not out.exists()  # input is checked before anything is created
    if case == "out_not_empty":
        assert (out / "thesis.docx").read_text() == "precious"
        assert sorted(p.name for p in out.iterdir()) == ["thesis.docx"]


def test_console_entry_point_exit_codes(tmp_path):
    """The real process: no traceback, the exit code reaches the shell."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_corrseg.cli",
            "match",
            str(tmp_path / "x.png"),
            str(tmp_path / "y.png"),
            "--out",
            str(tmp_path / "o"),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3
    assert "does not exist" in _one_error_line(done.stderr)
    usage = subprocess.run(
        [sys.executable, "-m", "napari_corrseg.cli", "match"], capture_output=True, text=True
    )
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_registry_accepts_a_new_subcommand(capsys, monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMANDS", list(cli.SUBCOMMANDS))
    seen = {}

    def add(parser):
        parser.add_argument("--alpha", type=float, default=0.1)

    def run_it(args, context):
        seen["alpha"] = args.alpha
        return 0

    cli.register(cli.Subcommand("hello", "a subcommand added by another module", add, run_it))
    assert cli.main(["hello", "--alpha", "0.05", "--model", "tiny"]) == 0
    assert seen == {"alpha": 0.05}


def test_cache_info_and_clear_cover_the_token_store(run, images, tmp_path, capsys):
    """One place to see and clear what napari-corrseg keeps: maps, latents and tokens;
    the token store (hours of compute on a big collection) goes only when asked."""
    assert run("extract", *images, "--model", "tiny", "-q")[0] == 0  # the default store
    tokens = tmp_path / "cache" / "tokens"
    code, out, _ = run("cache", "info")
    assert code == 0 and "tokens:    3 image(s)" in out and str(tokens) in out
    code, out, _ = run("cache", "clear")
    assert code == 0 and "kept the token store" in out and tokens.is_dir()
    code, out, _ = run("cache", "clear", "--tokens")
    assert code == 0 and "removed 3 image(s) of the token store" in out
    assert not tokens.exists()
    assert "tokens:    0 image(s)" in run("cache", "info")[1]
