"""Collections on a real `dask.distributed.LocalCluster` of 2 worker processes.

The tiny model is saved in the real folder layout and loaded by each worker's plugin; the
workers write one zarr store on disk. One cluster serves the whole module.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_corrseg import cli
from napari_corrseg.tasks.collection import fill_store, list_image_files, open_store

pytestmark = pytest.mark.slow
HERE = str(Path(__file__).parent)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Eight different 8-bit PNG images of different sizes."""
    root = tmp_path_factory.mktemp("collection") / "images"
    root.mkdir()
    rng = np.random.default_rng(8)
    for k in range(8):
        rows, cols = np.mgrid[0 : 56 + 8 * (k % 3), 0 : 72 - 4 * (k % 2)]
        image = np.stack([(rows * 5 + 20 * k) % 256, (cols * 3) % 256, 90 + 0 * rows], -1)
        image = (image + rng.integers(0, 40, image.shape)).clip(0, 255).astype(np.uint8)
        iio.imwrite(root / f"view_{k}.png", image)
    (root.parent / "points.csv").write_text("row,col\n8,10\n30,40\n50,60\n")
    return root


@pytest.fixture(scope="module")
def cluster(tiny_model_dir):
    from napari_corrseg.tasks.distributed import DaskScheduler, EngineSpec, SchedulerSpec

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([HERE, *sys.path])  # workers import like us
    try:
        scheduler = DaskScheduler.start(
            SchedulerSpec("local", n_workers=2),
            EngineSpec(str(tiny_model_dir), device="cpu"),
            device="cpu",
        )
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved
    yield scheduler
    scheduler.close()


@pytest.fixture(scope="module")
def lazy_engine(tiny_model_dir):
    from napari_corrseg.engine import LazyEngine

    return LazyEngine(str(tiny_model_dir), device="cpu")


def _cli(*args) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return code, err.getvalue()


def _outputs(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".tif", ".csv")
    }


def _tokens(store, keys):
    return [store.read(key)[:2] for key in keys]


def test_dask_gives_the_labels_and_points_of_the_in_process_run(
    cluster, folder, tmp_path, tiny_model_dir
):
    """Extraction, co-segmentation and transfer on the cluster (scheduler address) and
    in process read the same store: every label TIFF and point CSV is byte-identical."""
    store = tmp_path / "store"
    model = ["--model", tiny_model_dir, "--device", "cpu"]
    address = cluster.client.scheduler.address
    code, err = _cli(
        "coseg",
        folder,
        "--store",
        store,
        "--scheduler",
        address,
        "--out",
        tmp_path / "dask",
        *model,
    )
    assert code == 0, err
    assert "8 to compute" in err and "computed 8, reused 0" in err
    code, err = _cli(
        "coseg",
        folder,
        "--store",
        store,
        "--scheduler",
        "none",
        "--out",
        tmp_path / "none",
        *model,
    )
    assert code == 0, err
    assert "computed 0, reused 8" in err
    dask_files, none_files = _outputs(tmp_path / "dask"), _outputs(tmp_path / "none")
    assert sorted(n for n in dask_files if n.startswith("labels/")) == [
        f"labels/view_{k}.tif" for k in range(8)
    ]
    assert dask_files == none_files
    for k in range(8):  # one label image per input, the size of the input
        shape = iio.imread(folder / f"view_{k}.png").shape[:2]
        assert tifffile.imread(tmp_path / "dask" / "labels" / f"view_{k}.tif").shape == shape
    rows = list(csv.DictReader(open(tmp_path / "dask" / "summary.csv")))
    assert [float(r["score"]) for r in rows] == sorted(float(r["score"]) for r in rows)
    record = json.loads((tmp_path / "dask" / "run.json").read_text())
    assert record["command"] == "coseg" and record["scheduler"] == address
    assert record["fill"] == {"computed": 8, "reused": 0, "recomputed": 0}
    assert len(record["images"]) == 8 and record["grid"] == [16, 16]
    points = folder.parent / "points.csv"
    source = folder / "view_0.png"
    for scheduler, out in ((address, "dask_t"), ("none", "none_t")):
        code, err = _cli(
            "transfer",
            source,
            points,
            folder,
            "--store",
            store,
            "--scheduler",
            scheduler,
            "--out",
            tmp_path / out,
            *model,
        )
        assert code == 0, err
    dask_t, none_t = _outputs(tmp_path / "dask_t"), _outputs(tmp_path / "none_t")
    assert sorted(n for n in dask_t if n.startswith("points/")) == [
        f"points/view_{k}.csv"
        for k in range(8)  # the source's keypoints as read, every other image's carried
    ]
    assert dask_t == none_t
    table = list(csv.DictReader(open(tmp_path / "dask_t" / "points" / "view_5.csv")))
    assert [r["keypoint_id"] for r in table] == ["0", "1", "2"]
    assert all(0 <= float(r["confidence"]) <= 1 and r["source"] == "view_0" for r in table)


def test_workers_compute_exactly_what_the_process_computes(
    cluster, folder, tmp_path, lazy_engine, tiny_model_dir
):
    """Same thread count (1, as each of the 2 workers has): bit-identical tokens. With 2
    threads in process, CPU convolutions round differently (~1e-5): a few stored float16
    values move by one float16 step, never more."""
    import torch

    from napari_corrseg.engine import load_engine

    paths = list_image_files([folder])
    on_dask = open_store(tmp_path / "dask", lazy_engine)
    report = fill_store(on_dask, paths, scheduler=cluster)
    assert (report.computed, report.reused) == (8, 0)
    engine = load_engine(str(tiny_model_dir), device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = open_store(tmp_path / "none1", engine)
        fill_store(alone, paths, engine)
    finally:
        torch.set_num_threads(threads)
    for (qa, ka), (qb, kb) in zip(
        _tokens(alone, report.keys), _tokens(on_dask, report.keys), strict=True
    ):
        np.testing.assert_array_equal(qa, qb)
        np.testing.assert_array_equal(ka, kb)
    default = open_store(tmp_path / "none2", engine)
    fill_store(default, paths, engine)
    for (qa, ka), (qb, kb) in zip(
        _tokens(default, report.keys), _tokens(on_dask, report.keys), strict=True
    ):
        for a, b in ((qa, qb), (ka, kb)):
            # float32 differences of ~1e-5 move a value to the next float16 step at most:
            # within one step at the array's largest magnitude, and rarely (measured 1.5 %)
            step = np.spacing(np.float16(np.abs(b).max()))
            assert np.abs(a.astype(np.float32) - b.astype(np.float32)).max() <= step
            assert np.mean(a != b) < 0.05


def test_a_killed_worker_loses_nothing(cluster, folder, tmp_path, lazy_engine):
    """SIGKILL the busy worker's process in the middle of a fill: Dask reruns its image on
    the other worker (its nanny restarts it, reloading the model), every image is stored
    once and intact, and the tokens equal an undisturbed run's."""
    from dask_plugins import SlowWritesPlugin

    client = cluster.client
    paths = list_image_files([folder])
    reference = open_store(tmp_path / "reference", lazy_engine)
    expected = fill_store(reference, paths, scheduler=cluster)
    client.register_plugin(SlowWritesPlugin(0.6))  # each write takes 0.6 s longer
    killed: dict = {}

    def progress(stage, fraction):
        if stage != "extract" or killed or fraction <= 0 or fraction >= 1:
            return
        busy = [w for w, tasks in client.processing().items() if tasks]
        pids = client.run(os.getpid)
        victim = busy[0]
        os.kill(pids[victim], signal.SIGKILL)
        killed.update(pid=pids[victim], fraction=fraction)

    store = open_store(tmp_path / "store", lazy_engine)
    try:
        report = fill_store(store, paths, scheduler=cluster, progress=progress)
    finally:
        client.unregister_worker_plugin(SlowWritesPlugin.name)
    assert killed and killed["fraction"] < 1  # killed mid-run
    # the killed worker's image is computed again, or found stored if the worker died
    # between writing it and reporting back: either way once, and nothing is missing
    assert report.computed + report.reused == 8 and report.recomputed == 0
    assert report.computed >= 7
    assert sorted(store.keys()) == sorted(set(expected.keys))
    assert all(store.verify(key) for key in report.keys)
    for (qa, ka), (qb, kb) in zip(
        _tokens(store, report.keys), _tokens(reference, report.keys), strict=True
    ):
        np.testing.assert_array_equal(qa, qb)
        np.testing.assert_array_equal(ka, kb)
    client.wait_for_workers(2, timeout=120)  # the nanny brought it back
    assert killed["pid"] not in client.run(os.getpid).values()
    store.remove_stale_partials()  # what the killed writer may have left
    assert not [p for p in store.root.rglob(".*") if p.name.endswith(".partial")]
