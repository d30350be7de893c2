"""The command line cannot lose, mix or silently misread anything (issue 16).

SIGKILLed reruns into an earlier results folder, reruns with fewer outputs, options
checked before the model loads, ``--no-cache``, ``--model auto`` offline, keypoint
tables in every common form, unusable images. Fixtures come from ``test_cli.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

import test_cli
from test_cli import _csv, _one_error_line

pytestmark = pytest.mark.slow
images = test_cli.images  # the fixtures of test_cli.py
run = test_cli.run
SRC = str(Path(__file__).resolve().parents[1] / "src")


KILL_CHILD = """
import os, signal, sys
from napari_corrseg import cli
from napari_corrseg.files import atomic

kill_before, kill_after = int(os.environ["KILL_BEFORE"]), int(os.environ["KILL_AFTER"])
count = [0]
real = atomic._replace

def replace(source, destination):
    count[0] += 1
    if count[0] == kill_before:
        os.kill(os.getpid(), signal.SIGKILL)
    real(source, destination)
    if count[0] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

atomic._replace = replace
sys.exit(cli.main(sys.argv[1:]))
"""


def _folder_state(folder):
    """("complete", seed) after checking every file's SHA-256, or ("in progress", None)."""
    from napari_corrseg.files.io import check_output_folder

    check = check_output_folder(folder)
    assert check.status in ("complete", "in progress"), (folder, check.status, check.problems)
    if check.status == "in progress":
        return check.status, None
    return check.status, check.record["settings"]["seed"]


def _visible_writes(run, args, monkeypatch, ignored):
    """Run the CLI in-process; where each file it made visible went, in order.

    Writes under the ``ignored`` folders (the map cache) are left out.
    """
    from napari_corrseg.files import atomic

    calls = []
    real = atomic._replace
    monkeypatch.setattr(atomic, "_replace", lambda s, d: calls.append(Path(d)) or real(s, d))
    code, _, err = run(*args)
    monkeypatch.setattr(atomic, "_replace", real)
    assert code == 0, err
    return [c for c in calls if not any(folder in c.parents for folder in ignored)]


def _sigkilled_reruns(earlier, rerun_args, n_writes, tmp_path):
    """Rerun into copies of ``earlier``, each SIGKILLed at one point; the folders by point.

    An output transaction stages every file, writes the journal, moves every file in and
    writes the final ``run.json``: ``n_writes`` is twice the file count plus two.
    """
    import shutil

    n_files = (n_writes - 2) // 2
    assert n_files >= 3 and n_writes == 2 * n_files + 2
    points = {
        "during writes": (3, 0),
        "while moving in": (n_files + 4, 0),
        "before run.json": (n_writes, 0),
        "after": (0, n_writes),
    }
    environment = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"}
    folders = {}
    for name, (before, after) in points.items():
        folders[name] = folder = tmp_path / name.replace(" ", "-")
        shutil.copytree(earlier, folder)
        done = subprocess.run(
            [sys.executable, "-c", KILL_CHILD, *map(str, rerun_args(folder))],
            env={**environment, "KILL_BEFORE": str(before), "KILL_AFTER": str(after)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == -9, done.stderr
    return folders


#: What each kill point leaves: the earlier run whole, a marked folder, or the new run.
LEFT_BY_EACH_KILL = {
    "during writes": "earlier",
    "while moving in": "in progress",
    "before run.json": "in progress",
    "after": "new",
}


def test_sigkilled_match_rerun_leaves_a_whole_run_or_a_marked_folder(
    run, images, tmp_path, monkeypatch
):
    pair = [images[0], images[1]]

    def match(folder, seed):
        return ["match", *pair, "--out", folder, "--model", "tiny", "-q", "--seed", seed]

    earlier = tmp_path / "earlier"
    assert run(*match(earlier, 0))[0] == 0
    # the seed-1 run in a fresh folder: the reference, and the count of visible writes
    reference = tmp_path / "seed1"
    writes = _visible_writes(run, match(reference, 1), monkeypatch, [tmp_path / "cache"])
    assert len(writes) == 2 * len(list((reference / "pair_0_1").iterdir())) + 2
    matches = {
        seed: (folder / "pair_0_1" / "matches.csv").read_text()
        for seed, folder in ((0, earlier), (1, reference))
    }
    assert matches[0] != matches[1]
    folders = _sigkilled_reruns(earlier, lambda f: match(f, 1), len(writes), tmp_path)
    seen = {}
    for name, folder in folders.items():
        seen[name] = state = _folder_state(folder)
        if state[0] == "complete":  # its files are those of the run its run.json describes
            assert (folder / "pair_0_1" / "matches.csv").read_text() == matches[state[1]]
    run_of = {"earlier": ("complete", 0), "new": ("complete", 1)}
    assert seen == {n: run_of.get(left, (left, None)) for n, left in LEFT_BY_EACH_KILL.items()}
    for name in ("while moving in", "during writes"):  # and every folder is reusable
        assert run(*match(folders[name], 1))[0] == 0
        assert _folder_state(folders[name]) == ("complete", 1)
        assert (folders[name] / "pair_0_1" / "matches.csv").read_text() == matches[1]


def test_sigkilled_coseg_rerun_leaves_a_whole_run_or_a_marked_folder(
    run, images, tmp_path, monkeypatch
):
    from napari_corrseg.files.io import check_output_folder

    store = tmp_path / "store"

    def coseg(folder, shown):
        return ["coseg", *shown, "--out", folder, "--store", store, "--model", "tiny", "-q"]

    earlier = tmp_path / "earlier"  # three images; the rerun has two
    assert run(*coseg(earlier, images))[0] == 0
    reference = tmp_path / "two"
    writes = _visible_writes(
        run, coseg(reference, images[:2]), monkeypatch, [tmp_path / "cache", store]
    )
    kept = ["segments.json", "summary.csv", *(f"labels/{p.stem}.tif" for p in images[:2])]
    third = f"labels/{images[2].stem}.tif"
    content = {
        count: {name: (folder / name).read_bytes() for name in kept}
        for count, folder in ((3, earlier), (2, reference))
    }
    assert content[3]["segments.json"] != content[2]["segments.json"]
    folders = _sigkilled_reruns(earlier, lambda f: coseg(f, images[:2]), len(writes), tmp_path)
    seen = {}
    for name, folder in folders.items():
        check = check_output_folder(folder)
        assert check.status in ("complete", "in progress"), (name, check.problems)
        if check.status == "in progress":
            seen[name] = ("in progress", None)
            continue
        count = len(check.record["images"])
        seen[name] = ("complete", count)
        # every file is that of the run its run.json describes, and no other run's
        assert {n: (folder / n).read_bytes() for n in kept} == content[count]
        assert (folder / third).is_file() == (count == 3)
    run_of = {"earlier": ("complete", 3), "new": ("complete", 2)}
    assert seen == {n: run_of.get(left, (left, None)) for n, left in LEFT_BY_EACH_KILL.items()}
    for name in ("while moving in", "during writes"):  # and every folder is reusable
        assert run(*coseg(folders[name], images[:2]))[0] == 0
        assert check_output_folder(folders[name]).status == "complete"
        assert not (folders[name] / third).exists()
        assert {n: (folders[name] / n).read_bytes() for n in kept} == content[2]


def test_rerun_with_fewer_targets_removes_and_names_the_old_pairs(run, images, tmp_path):
    out = tmp_path / "out"
    assert run("match", *images, "--out", out, "--model", "tiny", "-q")[0] == 0
    assert (out / "pair_0_2" / "matches.csv").is_file()
    code, _, err = run("match", *images[:2], "--out", out, "--model", "tiny")
    assert code == 0, err
    assert not (out / "pair_0_2").exists()
    assert "replacing earlier results" in err and "pair_0_2/matches.csv" in err
    assert _folder_state(out) == ("complete", 0)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--min-confidence", "2", "--min-confidence must be a number in 0..1"),
        ("--min-confidence", "-0.5", "--min-confidence"),
        ("--timestep", "5000", "--timestep must be in 0..999"),
        ("--timestep", "-1", "--timestep"),
        ("--seed", str(2**70), "--seed must be an integer in 0.."),
        ("--seed", "-3", "--seed"),
        ("--layers", "99", "--layers 99"),
        ("--layers", ",", "--layers is empty"),
    ],
)
def test_options_are_checked_before_the_model_loads(
    run, images, tmp_path, monkeypatch, option, value, message
):
    import napari_corrseg.engine as engine_module

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(engine_module, "load_engine", must_not_load)
    out = tmp_path / "out"
    code, _, err = run("match", *images[:2], "--out", out, "--model", "tiny", "-q", option, value)
    assert code in (1, 2)
    assert message in _one_error_line(err)
    assert not out.exists()  # and no empty output folder is left behind


def test_no_cache_touches_no_cache(run, images, tmp_path):
    cache = tmp_path / "cache"
    code, _, err = run(
        "match", *images[:2], "--out", tmp_path / "o", "--model", "tiny", "--no-cache"
    )
    assert code == 0, err
    assert not cache.exists() or not any(cache.rglob("*"))


def test_auto_model_offline_says_so_in_one_line(run, images, tmp_path, monkeypatch):
    monkeypatch.delenv("NAPARI_CORRSEG_MODEL", raising=False)
    code, _, err = run("match", *images[:2], "--out", tmp_path / "o", "-q")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.strip()]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("napari-corrseg: warning: TINY RANDOM model")
    assert "HF_HUB_OFFLINE" in warnings[0] and "NOT semantic" in warnings[0]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"0,10,20\n1,50.5,80\n2,0,0\n", "headerless index,row,col"),
        (b"\xef\xbb\xbfrow,col,name\n10,20,nose\n50.5,80,tail\n0,0,ear\n", "BOM, names"),
        (
            "index;axis-0;axis-1;name\n0;10;20;Nase\n1;50,5;80;Schwänzchen\n2;0;0;Öhrchen\n".encode(
                "cp1252"
            ),
            "cp1252, semicolons, decimal comma",
        ),
    ],
)
def test_transfer_reads_every_keypoint_table_right(run, images, tmp_path, data, expected):
    points = tmp_path / "points.csv"
    points.write_bytes(data)
    out = tmp_path / "moved"
    code, _, err = run(
        "transfer", images[0], points, images[1], "--out", out, "--model", "tiny", "-q"
    )
    assert code == 0, (expected, err)
    source = _csv(out / "points" / f"{images[0].stem}.csv")
    assert [(float(r["axis-0"]), float(r["axis-1"])) for r in source] == [
        (10, 20),
        (50.5, 80),
        (0, 0),
    ]
    target = _csv(out / "points" / f"{images[1].stem}.csv")
    assert [int(r["keypoint_id"]) for r in target] == [0, 1, 2]
    if b"name" in data:  # the keypoints' names are carried to both sides
        names = [r["name"] for r in target]
        assert names == [r["name"] for r in source] and names[0] in ("nose", "Nase")
        assert names[1] in ("tail", "Schwänzchen")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: tifffile.imwrite(
                p, np.zeros((3, 40, 40), np.uint8), photometric="minisblack"
            ),
            "3 pages",
        ),
        (
            lambda p: iio.imwrite(p.with_suffix(".png"), np.zeros((1, 1, 3), np.uint8)),
            "1x1 pixels",
        ),
        (lambda p: p.mkdir(), "is a folder"),
    ],
)
def test_unusable_images_are_named_before_anything_runs(run, images, tmp_path, make, message):
    bad = tmp_path / "bad.tif"
    make(bad)
    if not bad.exists():
        bad = bad.with_suffix(".png")
    code, _, err = run("match", images[0], bad, "--out", tmp_path / "o", "--model", "tiny", "-q")
    assert code == 3
    assert message in _one_error_line(err)


def test_coseg_on_fewer_images_removes_the_earlier_labels(run, images, tmp_path):
    out = tmp_path / "parts"
    assert run("coseg", *images, "--out", out, "--model", "tiny", "-q")[0] == 0
    third = f"labels/{images[2].stem}.tif"
    assert (out / third).is_file()
    code, _, err = run("coseg", *images[:2], "--out", out, "--model", "tiny")
    assert code == 0, err
    assert not (out / third).exists()
    assert "of the earlier run:" in err and third in err
    assert _folder_state(out) == ("complete", 0)
