"""The collection commands (extract, coseg, transfer) over folders, on the tiny model."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from napari_corrseg import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "images"
    root.mkdir()
    rng = np.random.default_rng(11)
    for k in range(8):
        rows, cols = np.mgrid[0 : 48 + 6 * (k % 4), 0:64]
        image = np.stack([(rows * 4 + 25 * k) % 256, (cols * 3) % 256, 60 + 0 * rows], -1)
        image = (image + rng.integers(0, 50, image.shape)).clip(0, 255).astype(np.uint8)
        iio.imwrite(root / f"img_{k}.png", image)
    return root


def _cli(*args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return code, err.getvalue()


def _entries(store: Path) -> int:
    """Complete entries: not the hidden folders a writer is still filling."""
    found = store.glob("s-*/??/*/zarr.json")
    return sum(1 for path in found if not path.parent.name.startswith("."))


_SLOW_CLI = """
import sys, time
from napari_corrseg.collection.store import TokenStore
original = TokenStore.write
def slow_write(self, *args, **kwargs):
    created = original(self, *args, **kwargs)
    time.sleep(0.5)  # so the test can kill the run between images
    return created
TokenStore.write = slow_write
from napari_corrseg import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_extract_killed_halfway_resumes_with_only_the_missing_images(
    folder, tmp_path, tiny_model_dir
):
    store = tmp_path / "store"
    model = ["--model", str(tiny_model_dir), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLI, "extract", str(folder), "--store", str(store), *model],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while _entries(store) < 3 and run.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    assert run.returncode == -signal.SIGKILL, run.stderr.read().decode()[-2000:]
    stored = _entries(store)
    assert 3 <= stored < 8, stored  # killed halfway
    code, err = _cli("extract", folder, "--store", store, *model)
    assert code == 0, err
    assert f"{stored} stored, {8 - stored} to compute" in err
    assert f"computed {8 - stored}, reused {stored}, damaged and recomputed 0" in err
    assert _entries(store) == 8
    # identical to an uninterrupted run: the same bits in the store (so the same labels
    # and points: those are a function of the stored tokens, test_collection_dask.py)
    code, err = _cli("extract", folder, "--store", tmp_path / "whole", *model)
    assert code == 0 and "computed 8, reused 0" in err, err
    from napari_corrseg.collection.store import TokenStore

    settings = json.loads(next(store.glob("s-*/settings.json")).read_text())
    first, second = TokenStore(store, settings), TokenStore(tmp_path / "whole", settings)
    assert sorted(first.keys()) == sorted(second.keys())
    for key in first.keys():
        for a, b in zip(first.read(key)[:2], second.read(key)[:2], strict=True):
            np.testing.assert_array_equal(a, b)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "warning: TINY" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-corrseg: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("empty_folder", 3, "holds no images"),
        ("missing_folder", 3, "does not exist"),
        ("unreadable_image", 3, "bad.png"),
        ("bad_scheduler", 2, "--scheduler must be"),
        ("bad_workers", 2, "N must be a whole number"),
        ("unreachable", 1, "cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
        ("one_image", 1, "at least two images"),
        ("points_outside", 3, "outside the source image"),
        ("bad_batch", 2, "--batch-size"),
        ("foreign_store", 1, "not a napari-corrseg token store"),
    ],
)
def test_user_errors_give_one_line(folder, tmp_path, tiny_model_dir, case, code, message):
    model = ["--model", str(tiny_model_dir), "--device", "cpu", "-q"]
    out = tmp_path / "out"
    args = ["coseg", folder, "--store", tmp_path / "store", "--out", out, *model]
    if case == "empty_folder":
        (tmp_path / "empty").mkdir()
        args[1] = tmp_path / "empty"
    elif case == "missing_folder":
        args[1] = tmp_path / "nope"
    elif case == "unreadable_image":
        broken = tmp_path / "broken"
        broken.mkdir()
        iio.imwrite(broken / "good.png", np.zeros((40, 40, 3), np.uint8))
        (broken / "bad.png").write_bytes(b"not a png at all")
        args[1] = broken
    elif case == "bad_scheduler":
        args += ["--scheduler", "lokal"]
    elif case == "bad_workers":
        args += ["--scheduler", "local:zero"]
    elif case == "unreachable":
        args += ["--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout", "1"]
    elif case == "one_image":
        args[1] = folder / "img_0.png"
    elif case == "points_outside":
        (tmp_path / "p.csv").write_text("row,col\n5,5\n500,5\n")
        args = [
            "transfer",
            folder / "img_0.png",
            tmp_path / "p.csv",
            folder,
            "--out",
            out,
            "--store",
            tmp_path / "store",
            *model,
        ]
    elif case == "bad_batch":
        args += ["--batch-size", "0"]
    elif case == "foreign_store":
        (tmp_path / "store").mkdir()
        (tmp_path / "store" / "mine.txt").write_text("keep")
    exit_code, err = _cli(*args)
    assert exit_code == code, err
    line = _one_error_line(err)
    assert message in line
    if case == "unreachable":
        assert "--scheduler local" in line  # the fix is in the message
    if case not in ("unreachable", "foreign_store"):
        assert not out.exists()  # checked before anything is written
