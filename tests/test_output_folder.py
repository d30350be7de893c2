"""Result folders as transactions: nothing lost, nothing mixed, whatever kills the run.

A folder must always be one of: the earlier complete run, the new complete run, or
visibly incomplete (``run.json`` says "in progress"); a folder the tool made must always
be reusable, and the earlier run's files the new run does not write must go. The kills
are real SIGKILLs of child processes, at every file the transaction makes visible.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from napari_corrseg.errors import OutputError
from napari_corrseg.files import atomic
from napari_corrseg.files.io import (
    check_output_folder,
    output_transaction,
    write_json,
    write_tiff,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")

# A "coseg-like" run through the shared API: N label images, a table, a picture.
COSEG_RUN = textwrap.dedent(
    """
    import json, os, signal, sys
    import numpy as np
    from napari_corrseg.files import atomic
    from napari_corrseg.files.io import output_transaction, write_bytes, write_json, write_tiff

    folder, n_images, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    kill_before = int(os.environ.get("KILL_BEFORE", "0"))
    kill_after = int(os.environ.get("KILL_AFTER", "0"))
    calls = []
    real = atomic._replace

    def replace(source, destination):
        calls.append(str(destination))
        if len(calls) == kill_before:
            os.kill(os.getpid(), signal.SIGKILL)
        real(source, destination)
        if len(calls) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    atomic._replace = replace
    with output_transaction(folder) as out:
        for k in range(n_images):
            write_tiff(out.path(f"labels_{k}.tif"), np.full((20, 20), seed * 10 + k, np.uint16))
        write_json(out.path("segments.json"), {"seed": seed, "n_images": n_images})
        write_bytes(out.path("labels.png"), b"png of seed %d" % seed)
        out.commit({"command": "coseg", "settings": {"seed": seed}})
    print(json.dumps(calls))
    """
)


def _run_api(folder: Path, n_images: int, seed: int, **kill: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, **{k.upper(): str(v) for k, v in kill.items()}}
    return subprocess.run(
        [sys.executable, "-c", COSEG_RUN, str(folder), str(n_images), str(seed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _state(folder: Path) -> tuple[str, int | None]:
    """("complete", seed) / ("in progress", None), checking every file against run.json."""
    check = check_output_folder(folder)
    assert check.status in ("complete", "in progress"), (check.status, check.problems)
    if check.status == "in progress":
        return check.status, None
    seed = check.record["settings"]["seed"]
    # the files are the ones of the run that run.json describes
    segments = json.loads((folder / "segments.json").read_text())
    assert segments["seed"] == seed
    labels = sorted(p.name for p in folder.glob("labels_*.tif"))
    assert labels == [f"labels_{k}.tif" for k in range(segments["n_images"])]
    return check.status, seed


def test_a_commit_lists_every_file_and_removes_the_earlier_runs_leftovers(tmp_path):
    folder = tmp_path / "parts"
    assert _run_api(folder, 3, seed=0).returncode == 0
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "complete" and record["tool"] == "napari-corrseg"
    assert [f["path"] for f in record["files"]] == [
        "labels.png",
        "labels_0.tif",
        "labels_1.tif",
        "labels_2.tif",
        "segments.json",
    ]
    assert check_output_folder(folder).ok
    with output_transaction(folder) as out:  # a second run on two images
        for k in range(2):
            write_tiff(out.path(f"labels_{k}.tif"), np.zeros((20, 20), np.uint16))
        write_json(out.path("segments.json"), {"seed": 1, "n_images": 2})
        report = out.commit({"settings": {"seed": 1}})
    assert report.removed == ("labels.png", "labels_2.tif")
    assert "labels_2.tif" in report.summary() and "replacing" in report.summary()
    assert not (folder / "labels_2.tif").exists()
    assert _state(folder) == ("complete", 1)
    assert [p.name for p in folder.iterdir() if p.name.startswith(".napari-corrseg-s")] == []


def test_every_sigkill_point_leaves_a_whole_run_or_a_marked_one(tmp_path):
    earlier = tmp_path / "earlier"
    done = _run_api(earlier, 3, seed=0)
    assert done.returncode == 0, done.stderr
    counting = tmp_path / "counting"
    subprocess_copy(earlier, counting)
    calls = json.loads(_run_api(counting, 2, seed=1).stdout)
    # staged files, the journal, 4 moves, the final run.json
    assert len(calls) == 4 + 1 + 4 + 1
    seen = set()
    for kill in [{"kill_before": n} for n in range(1, len(calls) + 1)] + [
        {"kill_after": len(calls)}
    ]:
        folder = tmp_path / f"kill-{'-'.join(f'{k}{v}' for k, v in kill.items())}"
        subprocess_copy(earlier, folder)
        done = _run_api(folder, 2, seed=1, **kill)
        assert done.returncode == -9, done.stderr  # really killed
        state = _state(folder)
        seen.add(state)
        rerun = _run_api(folder, 2, seed=2)  # a folder the tool made is always reusable
        assert rerun.returncode == 0, rerun.stderr
        assert _state(folder) == ("complete", 2)
        assert not (folder / "labels_2.tif").exists()  # the earlier run's leftover is gone
    # all three outcomes happen, and nothing else does
    assert seen == {("complete", 0), ("in progress", None), ("complete", 1)}


def subprocess_copy(source: Path, destination: Path) -> None:
    import shutil

    shutil.copytree(source, destination)


def test_a_failed_run_leaves_the_folder_as_it_was(tmp_path):
    folder = tmp_path / "kept"
    assert _run_api(folder, 2, seed=0).returncode == 0
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(RuntimeError), output_transaction(folder) as out:
        write_json(out.path("segments.json"), {"seed": 9})
        raise RuntimeError("the model ran out of memory")
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert _state(folder) == ("complete", 0)
    fresh = tmp_path / "new" / "results"
    with pytest.raises(KeyboardInterrupt), output_transaction(fresh) as out:
        raise KeyboardInterrupt
    assert not fresh.exists()  # a folder the failed run created is not left behind


def test_folder_rules(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_text("precious")
    with pytest.raises(OutputError, match="--overwrite"), output_transaction(mine):
        pass
    with output_transaction(mine, overwrite=True) as out:
        out.path("a.csv").write_text("x\n")
        out.commit({"settings": {}})
    assert (mine / "thesis.docx").read_text() == "precious"  # never listed, never removed
    check = check_output_folder(mine)
    assert check.status == "modified" and "not listed in run.json: thesis.docx" in check.problems
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"), output_transaction(tmp_path / "file"):
        pass
    with output_transaction(tmp_path / "busy") as first:
        with pytest.raises(OutputError, match="another napari-corrseg run"):
            with output_transaction(tmp_path / "busy"):
                pass
        first.commit({})


def test_a_run_json_of_the_older_format_is_cleaned_up_too(tmp_path):
    folder = tmp_path / "old"
    (folder / "pair_0_2").mkdir(parents=True)
    (folder / "pair_0_2" / "matches.csv").write_text("old")
    (folder / "labels_2.tif").write_text("old")
    (folder / "mine.txt").write_text("the user's")
    write_json(
        folder / "run.json", {"tool": "napari-corrseg", "outputs": ["pair_0_2", "labels_2.tif"]}
    )
    with output_transaction(folder) as out:
        out.path("pair_0_1/matches.csv").write_text("new")
        report = out.commit({})
    assert set(report.removed) == {"pair_0_2/matches.csv", "labels_2.tif"}
    assert not (folder / "pair_0_2").exists() and (folder / "mine.txt").exists()


def test_a_changed_file_is_noticed(tmp_path):
    folder = tmp_path / "r"
    assert _run_api(folder, 2, seed=0).returncode == 0
    (folder / "segments.json").write_text('{"seed": 5}')
    check = check_output_folder(folder)
    assert check.status == "modified" and check.problems == (
        "changed since the run: segments.json",
    )


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_results_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with output_transaction(tmp_path / "out") as out:
            write_json(out.path("pair_0_1/run_table.json"), {})
            out.commit({})
    finally:
        os.umask(previous)
    for path in [tmp_path / "out", tmp_path / "out" / "pair_0_1"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask, path
    for path in [tmp_path / "out" / "run.json", tmp_path / "out" / "pair_0_1/run_table.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_the_kill_hook_is_the_only_way_files_become_visible(tmp_path, monkeypatch):
    """The SIGKILL tests count on every visible write going through atomic._replace."""
    seen = []
    real = atomic._replace
    monkeypatch.setattr(atomic, "_replace", lambda s, d: seen.append(Path(d).name) or real(s, d))
    with output_transaction(tmp_path / "x") as out:
        write_tiff(out.path("labels_0.tif"), np.zeros((4, 4), np.uint8))
        out.commit({})
    assert seen == ["labels_0.tif", "run.json", "labels_0.tif", "run.json"]
