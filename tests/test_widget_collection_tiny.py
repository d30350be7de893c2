"""The Collection widget on the tiny model: the real engine fills the token store (and its
torch attention backend forms the cross maps), proposals are saved, and the same images
are not computed again. The tiny model's results are not semantic: only the path and
the files are checked here; tests/test_widget_collection.py checks the answers."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from napari_corrseg._widgets import CollectionWidget
from test_widget_support import (  # noqa: F401 - the autouse fixture must be imported
    _isolated_caches,
    choose_model,
    install_engine,
    plugin_layers,
    run_and_wait,
    textured_image,
)

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_tiny_model_fills_the_store_proposes_and_saves(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, tiny_engine
):
    folder = tmp_path / "images"
    folder.mkdir()
    shapes = [(64, 64), (48, 80), (80, 48), (64, 96)]
    for index, shape in enumerate(shapes):
        iio.imwrite(folder / f"photo{index}.png", textured_image(shape, 40 + index))
    install_engine(monkeypatch, tiny_engine, "tiny")
    viewer = make_napari_viewer()
    widget = CollectionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    choose_model(widget, "tiny")
    widget.form.store.value = tmp_path / "store"
    widget.form.folder.value = folder
    calls = tiny_engine.encoder_calls
    assert run_and_wait(qtbot, widget, start=lambda: widget.load(start_thread=False)) == "done"
    assert tiny_engine.encoder_calls == calls + 4
    session = widget.session
    assert session.backend is tiny_engine.attention_backend
    assert [tuple(g.image_shape) for g in session.geometries] == shapes
    (points,) = plugin_layers(viewer, "collection:points")
    points.add([[10.0, 12.0], [40.0, 30.0], [55.0, 50.0]])
    assert run_and_wait(qtbot, widget, start=lambda: widget.propose(start_thread=False)) in (
        "done",
        "warned",
    )
    for index, shape in enumerate(shapes[1:], start=1):
        proposal = session.entries[index].points
        assert proposal.points.shape == (3, 2)
        inside = (proposal.points >= -0.5) & (proposal.points <= np.array(shape) - 0.5)
        assert inside.all(), index
    widget.form.out.value = tmp_path / "out"
    assert run_and_wait(qtbot, widget, start=lambda: widget.save(start_thread=False)) == "done"
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["image"] for row in rows) == [f"photo{k}" for k in range(4)]
    assert all((tmp_path / "out" / "points" / f"photo{k}.csv").is_file() for k in range(4))
    # loading the same folder again reads the store: no image through the model
    widget.ask_unsaved = lambda message: "discard"
    assert run_and_wait(qtbot, widget, start=lambda: widget.load(start_thread=False)) == "done"
    assert tiny_engine.encoder_calls == calls + 4
    assert "computed 0, reused 4" in widget.status.value


def test_compute_on_a_dask_cluster_with_progress_in_the_widget(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, tiny_model_dir
):
    """ "compute on: local:1": the worker process loads the model once and fills the store,
    the cross maps of the proposals are formed on it, and the progress of both comes back
    to the dock's progress bar."""
    from napari_corrseg._widgets import _engines
    from napari_corrseg.collection.store import TokenStore

    folder = tmp_path / "images"
    folder.mkdir()
    shapes = [(64, 64), (48, 80), (80, 48)]
    for index, shape in enumerate(shapes):
        iio.imwrite(folder / f"view{index}.png", textured_image(shape, 60 + index))
    here = str(Path(__file__).parent)  # the worker processes import as this process does
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, *sys.path]))
    viewer = make_napari_viewer()
    widget = CollectionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    choose_model(widget, str(tiny_model_dir))
    widget.form.store.value = tmp_path / "store"
    widget.form.folder.value = folder
    widget.form.compute_on.value = "local:1"
    stages = []
    widget.runner.events.progress.connect(lambda stage, fraction: stages.append(stage))
    try:
        done = run_and_wait(qtbot, widget, start=lambda: widget.load(start_thread=False))
        assert done == "done", widget.status.value
        session = widget.session
        assert session.scheduler is not None and "computed 3" in widget.status.value
        assert "extract" in stages, stages  # the Dask fill reported per task
        store = TokenStore(tmp_path / "store", session.store_settings)
        assert store.missing(session.keys) == []
        (points,) = plugin_layers(viewer, "collection:points")
        points.add([[10.0, 12.0], [40.0, 30.0]])
        outcome = run_and_wait(qtbot, widget, start=lambda: widget.propose(start_thread=False))
        assert outcome in ("done", "warned")
        assert "cross maps" in stages, stages  # formed as tasks on the worker
        for index, shape in enumerate(shapes[1:], start=1):
            proposal = session.entries[index].points
            assert proposal.points.shape == (2, 2)
            inside = (proposal.points >= -0.5) & (proposal.points <= np.array(shape) - 0.5)
            assert inside.all(), index
    finally:
        _engines.close_scheduler()
