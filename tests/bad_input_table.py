"""The bad-input table: every kind of wrong input a user can give, and what happens.

Run it as a script (``python tests/bad_input_table.py``) to print one line per case and
the counts of clear errors, working runs and tracebacks; ``tests/test_bad_inputs.py``
runs the same table and requires 0 tracebacks and every case's expected outcome.

A case is *clear* when the command exits non-zero with one line ``napari-corrseg:
error: ...`` (or argparse's usage error, which names the option) and no traceback; an
API case is clear when it raises a `napari_corrseg.errors.CorrsegError` (or a
``ValueError`` naming the argument). *Works* means exit 0 (plus the case's own check of
the result, e.g. that a 16-bit PNG was read at 16 bits). Anything else that escapes is a
*traceback*. Runs in-process on the tiny random model, offline, in a temporary folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ERROR, WORKS = "clear error", "works"


@dataclass
class Case:
    """One row: its class, a name, how to run it in a folder, the expected outcome."""

    kind: str
    name: str
    run: Callable[[Path], object]  # returns argv (CLI) or runs an API call itself
    expected: str
    check: Callable[[Path, str], None] | None = None  # (folder, stderr) of a run that worked


@dataclass
class Outcome:
    case: Case
    result: str  # ERROR, WORKS, "traceback" or "unclear"
    detail: str


# -- files the cases use -------------------------------------------------------------------


def _good(folder: Path, name: str = "good.png") -> Path:
    import imageio.v3 as iio

    path = folder / name
    if not path.exists():
        rows, cols = np.mgrid[0:64, 0:80]
        image = np.stack([rows * 4, cols * 3, 255 - rows * 4], axis=-1).astype(np.uint8)
        iio.imwrite(path, image)
    return path


def _write(name: str, make: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        make(path)
        return path

    return build


def _tiff(array, **options) -> Callable[[Path], None]:
    import tifffile

    return lambda path: tifffile.imwrite(path, array, **options)


def _png(array, **options) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        sys.path.insert(0, str(Path(__file__).parent))
        from png_writer import png_bytes

        path.write_bytes(png_bytes(np.asarray(array), **options))

    return make


def _pillow(mode: str, size=(48, 40), fmt: str = "PNG", **options) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        from PIL import Image

        Image.new(mode, size, **options).save(path, format=fmt)

    return make


def _gif(path: Path) -> None:
    from PIL import Image

    frames = [Image.new("RGB", (40, 40), (v, v, v)) for v in (0, 120, 240)]
    frames[0].save(path, save_all=True, append_images=frames[1:], format="GIF")


def _huge_png(path: Path) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def _float_image(value=None, scale=1.0) -> np.ndarray:
    image = np.linspace(0, scale, 40 * 48, dtype=np.float32).reshape(40, 48)
    if value is not None:
        image[3, 4] = value
    return image


def _image_case(name, make, expected, check=None) -> Case:
    """``transfer good.png points.csv BAD``: the image is read, then the model runs."""

    def argv(folder: Path):
        bad = make(folder) if callable(make) else folder / make
        points = folder / "one_point.csv"
        points.write_text("row,col\n10,10\n")
        return ["transfer", _good(folder), points, bad, "--out", folder / "out"]

    return Case("image", name, argv, expected, check)


def _csv_case(name, data: bytes | str, expected, check=None) -> Case:
    def argv(folder: Path):
        path = folder / "points.csv"
        if isinstance(data, str) and data == "<folder>":
            path.mkdir()
        elif data != "<missing>":
            path.write_bytes(data.encode() if isinstance(data, str) else data)
        # the target is another file: a collection transfer skips its own source
        target = _good(folder, "target.png")
        return ["transfer", _good(folder), path, target, "--out", folder / "out"]

    return Case("keypoints", name, argv, expected, check)


def _option_case(name, options, expected=ERROR, command="match") -> Case:
    def argv(folder: Path):
        images = [_good(folder), _good(folder)]
        return [command, *images, "--out", folder / "out", *options]

    return Case("option", name, argv, expected)


def _output_case(name, prepare, expected, check=None) -> Case:
    def argv(folder: Path):
        out = prepare(folder)
        return ["match", _good(folder), _good(folder), "--out", out, "--max-matches", "5"]

    return Case("output", name, argv, expected, check)


# -- checks on what "works" produced ----------------------------------------------------------


def _read_as(dtype, shape_tail) -> Callable[[Path, str], None]:
    def check(folder: Path, stderr: str) -> None:
        from napari_corrseg.files.io import read_image

        bad = next(p for p in folder.iterdir() if p.name.startswith("case"))
        image = read_image(bad)
        assert image.dtype == dtype, image.dtype
        assert image.shape[2:] == shape_tail, image.shape

    return check


def _transferred(points, name=None) -> Callable[[Path, str], None]:
    def check(folder: Path, stderr: str) -> None:
        import csv

        # one keypoint file per image: the source's as read, the target's as carried
        with open(folder / "out" / "points" / "good.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        got = [(float(r["axis-0"]), float(r["axis-1"])) for r in rows]
        assert got == points, got
        if name is not None:
            with open(folder / "out" / "points" / "target.csv", newline="") as f:
                assert next(r["name"] for r in csv.DictReader(f)) == name

    return check


def _recomputed(folder: Path, stderr: str) -> None:
    assert "recomputing it" in stderr, stderr


def _one_tiny_line(folder: Path, stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "TINY RANDOM" in lines[0], lines


def _complete(folder: Path, stderr: str) -> None:
    from napari_corrseg.files.io import check_output_folder

    check = check_output_folder(folder / "out")
    assert check.ok, (check.status, check.problems)


# -- the table ---------------------------------------------------------------------------------


def _cases() -> list[Case]:
    zeros = np.zeros
    cases = [
        _image_case("missing file", "nope.png", ERROR),
        _image_case("a folder", _write("case_dir", lambda p: p.mkdir()), ERROR),
        _image_case("empty file", _write("case.png", lambda p: p.write_bytes(b"")), ERROR),
        _image_case("text named .png", _write("case.png", lambda p: p.write_text("hi")), ERROR),
        _image_case(
            "truncated PNG",
            _write(
                "case.png",
                lambda p: (
                    _png(zeros((40, 40, 3), np.uint8))(p),
                    p.write_bytes(p.read_bytes()[:60]),
                ),
            ),
            ERROR,
        ),
        *[
            _image_case(
                f"{n}-page grey TIFF",
                _write("case.tif", _tiff(zeros((n, 40, 48), np.uint8), photometric="minisblack")),
                ERROR,
            )
            for n in (2, 3, 4)
        ],
        _image_case(
            "ImageJ z-stack",
            _write("case.tif", _tiff(zeros((5, 40, 48), np.uint8), imagej=True)),
            ERROR,
        ),
        _image_case(
            "5-channel TIFF",
            _write(
                "case.tif",
                _tiff(
                    zeros((40, 48, 5), np.uint8), photometric="minisblack", planarconfig="contig"
                ),
            ),
            ERROR,
        ),
        _image_case(
            "CMYK TIFF",
            _write("case.tif", _tiff(zeros((40, 48, 4), np.uint8), photometric="separated")),
            ERROR,
        ),
        _image_case("animated GIF", _write("case.gif", _gif), ERROR),
        _image_case("1x1 RGB", _write("case.png", _png(zeros((1, 1, 3), np.uint8))), ERROR),
        _image_case("8x8 grey", _write("case.png", _png(zeros((8, 8), np.uint8))), ERROR),
        _image_case("40000x40000 header", _write("case.png", _huge_png), ERROR),
        _image_case("NaN pixel", _write("case.tif", _tiff(_float_image(np.nan))), ERROR),
        _image_case("inf pixel", _write("case.tif", _tiff(_float_image(np.inf))), ERROR),
        _image_case(
            "complex TIFF", _write("case.tif", _tiff(zeros((40, 48), np.complex64))), ERROR
        ),
        _image_case(
            "constant image", _write("case.png", _png(np.full((40, 48), 7, np.uint8))), WORKS
        ),
        _image_case(
            "16-bit RGB PNG",
            _write(
                "case.png",
                _png((np.random.default_rng(0).random((40, 48, 3)) * 65535).astype(np.uint16)),
            ),
            WORKS,
            _read_as(np.uint16, (3,)),
        ),
        _image_case(
            "16-bit RGBA PNG",
            _write("case.png", _png(np.full((40, 48, 4), 40000, np.uint16))),
            WORKS,
            _read_as(np.uint16, (4,)),
        ),
        _image_case(
            "grey+alpha PNG", _write("case.png", _pillow("LA")), WORKS, _read_as(np.uint8, (4,))
        ),
        _image_case(
            "16-bit grey+alpha PNG",
            _write("case.png", _png(np.full((40, 48, 2), 999, np.uint16))),
            WORKS,
            _read_as(np.uint16, (4,)),
        ),
        _image_case(
            "palette PNG",
            _write("case.png", _pillow("P", color=3)),
            WORKS,
            _read_as(np.uint8, (3,)),
        ),
        _image_case(
            "CMYK JPEG",
            _write("case.jpg", _pillow("CMYK", fmt="JPEG")),
            WORKS,
            _read_as(np.uint8, (3,)),
        ),
        _image_case("1-bit PNG", _write("case.png", _pillow("1")), WORKS),
        _image_case(
            "planar RGB TIFF",
            _write(
                "case.tif",
                _tiff(zeros((3, 40, 48), np.uint8), photometric="rgb", planarconfig="separate"),
            ),
            WORKS,
            _read_as(np.uint8, (3,)),
        ),
        _image_case(
            "min-is-white TIFF",
            _write("case.tif", _tiff(zeros((40, 48), np.uint8), photometric="miniswhite")),
            WORKS,
        ),
        _image_case(
            "float TIFF 0..1000", _write("case.tif", _tiff(_float_image(scale=1000.0))), WORKS
        ),
        # keypoint tables
        _csv_case(
            "Windows-1252 names",
            "row,col,name\n10,20,Öhr\n".encode("cp1252"),
            WORKS,
            _transferred([(10, 20)], "Öhr"),
        ),
        _csv_case(
            "UTF-8 with BOM (Excel)",
            b"\xef\xbb\xbfrow,col\n10,20\n",
            WORKS,
            _transferred([(10, 20)]),
        ),
        _csv_case(
            "UTF-16 with BOM", "row,col\n10,20\n".encode("utf-16"), WORKS, _transferred([(10, 20)])
        ),
        _csv_case(
            "headerless index,row,col",
            b"0,10,20\n1,30,40\n",
            WORKS,
            _transferred([(10, 20), (30, 40)]),
        ),
        _csv_case(
            "semicolons, decimal commas", b"row;col\n10,5;20\n", WORKS, _transferred([(10.5, 20)])
        ),
        _csv_case("tab separated", b"y\tx\n10\t20\n", WORKS, _transferred([(10, 20)])),
        _csv_case(
            "napari 3-D layer",
            b"index,axis-0,axis-1,axis-2\n0,5,10,20\n",
            WORKS,
            _transferred([(10, 20)]),
        ),
        _csv_case("headerless 3 columns, no index", b"10,20,5\n30,40,6\n", ERROR),
        _csv_case("empty file", b"", ERROR),
        _csv_case("header only", b"row,col\n", ERROR),
        _csv_case("binary file", b"\x89PNG\r\n\x1a\n\x00\x00\x00", ERROR),
        _csv_case("missing coordinate", b"row,col\n10,\n", ERROR),
        _csv_case("point outside the image", b"row,col\n500,5\n", ERROR),
        _csv_case("no coordinate columns", b"a,b\n1,2\n", ERROR),
        _csv_case("ragged row", b"row,col\n1,2,3\n", ERROR),
        _csv_case("duplicate column", b"row,col,row\n1,2,3\n", ERROR),
        _csv_case("a word as coordinate", b"row,col\n1,x\n", ERROR),
        _csv_case("missing file", "<missing>", ERROR),
        _csv_case("a folder", "<folder>", ERROR),
        # options
        _option_case("--min-confidence 2", ["--min-confidence", "2"]),
        _option_case("--min-confidence -1", ["--min-confidence", "-1"]),
        _option_case("--min-confidence nan", ["--min-confidence", "nan"]),
        _option_case("--min-confidence word", ["--min-confidence", "high"]),
        _option_case("--max-matches -3", ["--max-matches", "-3"]),
        _option_case("--timestep 5000", ["--timestep", "5000"]),
        _option_case("--timestep -1", ["--timestep", "-1"]),
        _option_case("--timestep word", ["--timestep", "late"]),
        _option_case("--seed 2**70", ["--seed", str(2**70)]),
        _option_case("--seed -1", ["--seed", "-1"]),
        _option_case("--layers 99", ["--layers", "99"]),
        _option_case("--layers empty", ["--layers", ","]),
        _option_case("--layers unknown name", ["--layers", "down_blocks.9"]),
        _option_case("--device quantum", ["--device", "quantum"]),
        _option_case("--device cuda without GPU", ["--device", "cuda"]),
        _option_case("--model unknown", ["--model", "sd3-turbo"]),
        _option_case("--model missing folder", ["--model", "/no/such/model/"]),
        Case("option", "--model pickled .ckpt", lambda f: _ckpt(f), ERROR),
        Case("option", "--model empty folder", lambda f: _empty_model(f), ERROR),
        _option_case("coseg --threshold high", ["--threshold", "high"], command="coseg"),
        _option_case("coseg --threshold -1", ["--threshold", "-1"], command="coseg"),
        Case("option", "coseg one image", lambda f: ["coseg", _good(f), "--out", f / "o"], ERROR),
        Case("option", "--model auto offline", lambda f: _auto(f), WORKS, _one_tiny_line),
        # output folders
        _output_case("--out is a file", lambda f: _touch(f / "file"), ERROR),
        _output_case("--out holds other files", lambda f: _foreign(f), ERROR),
        _output_case("--out below a file", lambda f: _touch(f / "file") / "below", ERROR),
        _output_case("--out holds an earlier run", lambda f: _earlier(f), WORKS, _complete),
        _output_case(
            "--out holds an interrupted run", lambda f: _interrupted(f), WORKS, _complete
        ),
        # caches
        Case(
            "cache",
            "truncated map cache entry",
            lambda f: _damaged_cache(f, "truncate"),
            WORKS,
            _recomputed,
        ),
        Case(
            "cache",
            "hand-edited map cache entry",
            lambda f: _damaged_cache(f, "edit"),
            WORKS,
            _recomputed,
        ),
        Case(
            "cache",
            "latent of the wrong shape",
            lambda f: _damaged_cache(f, "latent"),
            WORKS,
            _recomputed,
        ),
        Case("cache", "--no-cache writes nothing", lambda f: _no_cache(f), WORKS, _no_cache_left),
        # the Python API
        Case("api", "load_engine dtype=int8", lambda f: _api_load(dtype="int8"), ERROR),
        Case("api", "load_engine device=cuda", lambda f: _api_load(device="cuda"), ERROR),
        Case("api", "extract a 3-D stack", lambda f: _api_extract(zeros((4, 64, 64))), ERROR),
        Case("api", "extract NaN image", lambda f: _api_extract(_float_image(np.nan)), ERROR),
        Case("api", "read_image of a 3-page TIFF", lambda f: _api_read_stack(f), ERROR),
    ]
    return cases


def _touch(path: Path) -> Path:
    path.write_text("x")
    return path


def _foreign(folder: Path) -> Path:
    out = folder / "thesis"
    out.mkdir()
    (out / "chapter1.docx").write_text("precious")
    return out


def _earlier(folder: Path) -> Path:
    from napari_corrseg.cli import main

    out = folder / "out"
    with contextlib.redirect_stderr(io.StringIO()):
        main(
            [
                "match",
                str(_good(folder)),
                str(_good(folder)),
                "--out",
                str(out),
                "--model",
                "tiny",
                "-q",
                "--max-matches",
                "5",
                "--seed",
                "3",
            ]
        )
    return out


def _interrupted(folder: Path) -> Path:
    import json

    out = _earlier(folder)
    record = json.loads((out / "run.json").read_text())
    record["status"] = "in progress"
    (out / "run.json").write_text(json.dumps(record))
    return out


def _auto(folder: Path):
    return [
        "match",
        _good(folder),
        _good(folder),
        "--out",
        folder / "out",
        "--model",
        "auto",
        "--max-matches",
        "5",
        "-q",
    ]


def _ckpt(folder: Path):
    path = folder / "v2-1_512-ema-pruned.ckpt"
    path.write_bytes(b"\x80\x04 pickle")
    return ["match", _good(folder), _good(folder), "--out", folder / "o", "--model", path]


def _empty_model(folder: Path):
    (folder / "model").mkdir()
    return [
        "match",
        _good(folder),
        _good(folder),
        "--out",
        folder / "o",
        "--model",
        folder / "model",
    ]


def _damaged_cache(folder: Path, how: str):
    from napari_corrseg.cli import main
    from napari_corrseg.core.maps import AttentionMaps
    from napari_corrseg.files.cache import MapCache
    from napari_corrseg.files.latent_cache import _checksum, default_latent_dir

    argv = [
        "match",
        str(_good(folder)),
        str(_good(folder)),
        "--out",
        str(folder / "first"),
        "--model",
        "tiny",
        "-q",
        "--max-matches",
        "5",
        "--seed",
        "11",
    ]
    with contextlib.redirect_stderr(io.StringIO()):
        main(argv)
    entries = MapCache().entries()
    newest = entries[-1]
    if how == "truncate":
        newest.write_bytes(newest.read_bytes()[:100])
    elif how == "edit":
        maps = AttentionMaps.load(newest)
        maps.maps[(0, 0)] = np.roll(maps.maps[(0, 0)], 1, axis=1)
        maps.save(newest)
    else:
        newest.unlink()
        from napari_corrseg.engine import load_engine

        load_engine("tiny", device="cpu").latent_cache._memory.clear()  # read from disk
        for entry in default_latent_dir().glob("*.npz"):
            with np.load(entry) as data:
                key = data["key"]
            wrong = np.zeros((1, 4, 3, 3), np.float32)
            with open(entry, "wb") as handle:
                np.savez(handle, latent=wrong, key=key, checksum=np.array(_checksum(wrong)))
    return [*argv[:4], str(folder / "out"), *argv[5:]]


def _no_cache(folder: Path):
    os.environ["NAPARI_CORRSEG_CACHE_DIR"] = str(folder / "private-cache")
    return [
        "match",
        _good(folder),
        _good(folder),
        "--out",
        folder / "out",
        "--no-cache",
        "--model",
        "tiny",
        "--max-matches",
        "5",
    ]


def _no_cache_left(folder: Path, stderr: str) -> None:
    cache = folder / "private-cache"
    assert not cache.exists() or not any(cache.rglob("*")), list(cache.rglob("*"))


def _api_load(**options):
    from napari_corrseg.engine import load_engine

    return load_engine("tiny", **{"device": "cpu", **options})


def _api_extract(array):
    from napari_corrseg.tasks.pipeline import compute_maps

    return compute_maps("tiny", [array, array], cache=False)


def _api_read_stack(folder: Path):
    import tifffile

    from napari_corrseg.files.io import read_image

    tifffile.imwrite(folder / "s.tif", np.zeros((3, 40, 40), np.uint8), photometric="minisblack")
    return read_image(folder / "s.tif")


# -- running it ------------------------------------------------------------------------------


def _run_one(case: Case, folder: Path) -> Outcome:
    from napari_corrseg.cli import main
    from napari_corrseg.errors import CorrsegError

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            argv = case.run(folder)
            if case.kind == "api":
                code = 0
            else:
                argv = [str(a) for a in argv]
                if "--model" not in argv:
                    argv += ["--model", "tiny"]
                argv += [] if "-q" in argv else ["-q"]
                try:
                    code = main(argv)
                except SystemExit as stop:  # argparse: usage and one error line, exit 2
                    code = stop.code
    except (CorrsegError, ValueError) as error:
        return Outcome(case, ERROR, f"{type(error).__name__}: {error}")
    except BaseException:
        return Outcome(case, "traceback", traceback.format_exc(limit=-3))
    text = stderr.getvalue()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if "Traceback" in text:
        return Outcome(case, "traceback", text)
    if code == 0:
        if case.check is not None:
            try:
                case.check(folder, text)
            except Exception as error:
                return Outcome(case, "unclear", f"exit 0 but wrong: {error!r}")
        return Outcome(case, WORKS, lines[-1] if lines else "")
    errors = [line for line in lines if ": error: " in line]
    if len(errors) == 1 and errors[0] == lines[-1]:
        return Outcome(case, ERROR, f"exit {code}: {errors[0]}")
    return Outcome(case, "unclear", f"exit {code}: {text[-300:]}")


def run_table(cases: list[Case] | None = None, *, verbose: bool = True) -> list[Outcome]:
    """Run every case in its own empty folder, offline, on one shared tiny engine."""
    import huggingface_hub.constants

    import napari_corrseg.engine as engine_module

    cases = _cases() if cases is None else cases
    root = Path(tempfile.mkdtemp(prefix="corrseg-bad-inputs-"))
    saved = {k: os.environ.get(k) for k in ("NAPARI_CORRSEG_CACHE_DIR", "NAPARI_CORRSEG_MODEL")}
    real_load, offline = engine_module.load_engine, huggingface_hub.constants.HF_HUB_OFFLINE
    os.environ["NAPARI_CORRSEG_CACHE_DIR"] = str(root / "cache")
    tiny = real_load("tiny", device="cpu")

    def load_engine(model="auto", device="auto", dtype=None, **options):
        """The one tiny engine, unless the call asks for anything else."""
        plain = dtype is None and str(device) in ("auto", "cpu") and not options
        return tiny if model == "tiny" and plain else real_load(model, device, dtype, **options)

    engine_module.load_engine = load_engine
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    os.environ.pop("NAPARI_CORRSEG_MODEL", None)
    outcomes = []
    try:
        for number, case in enumerate(cases):
            folder = root / f"case{number:03d}"
            folder.mkdir()
            os.environ["NAPARI_CORRSEG_CACHE_DIR"] = str(root / "cache")
            outcome = _run_one(case, folder)
            outcomes.append(outcome)
            if verbose:
                mark = "ok " if outcome.result == case.expected else "BAD"
                detail = " ".join(outcome.detail.split())[:150]
                print(f"{mark} {case.kind:9} {case.name:34} {outcome.result:11} {detail}")
    finally:
        engine_module.load_engine = real_load
        huggingface_hub.constants.HF_HUB_OFFLINE = offline
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)
    return outcomes


def counts(outcomes: list[Outcome]) -> Counter:
    """How many cases ended in each result."""
    return Counter(outcome.result for outcome in outcomes)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    found = run_table()
    tally = counts(found)
    wrong = [o for o in found if o.result != o.case.expected]
    print(
        f"\n{len(found)} cases: {tally[ERROR]} clear errors, {tally[WORKS]} work, "
        f"{tally['traceback']} tracebacks, {tally['unclear']} unclear; "
        f"{len(wrong)} not as expected"
    )
    sys.exit(1 if tally["traceback"] or wrong else 0)
