"""The Collection widget's runs, outcomes and other inputs, driven as a user drives them.

Cancel during the fill and during the model load, an input layer deleted mid-run, closing
the dock with unsaved changes, co-segmentation of the collection, a stack layer with
painted parts, and what is said when there is nothing to do. The helpers come
from tests/test_widget_collection.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager

from test_widget_collection import (
    N_IMAGES,
    layer,
    load_folder,
    make_widget,
    messages,
    wait_shown,
    write_folder,
)
from test_widget_support import (  # noqa: F401 - the autouse fixture must be imported
    TokenEngine,
    _isolated_caches,
    choose_model,
    collection_image,
    pixel_geometry,
    plugin_layers,
    run_and_wait,
)

pytestmark = pytest.mark.gui


@pytest.fixture
def records(monkeypatch):
    """The notifications shown during the test."""
    monkeypatch.setattr(notification_manager, "records", [])
    return notification_manager.records


@pytest.fixture
def folder(tmp_path):
    """Eight PNG files img0.png ... img7.png."""
    return write_folder(tmp_path)


def test_cancel_during_the_fill_and_during_model_loading(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, folder, records
):
    import threading

    from napari_corrseg._widgets import _engines

    viewer = make_napari_viewer()
    slow = TokenEngine(N_IMAGES, delay=0.4)
    widget = make_widget(viewer, monkeypatch, tmp_path, slow)
    widget.form.source_kind.value = "folder"
    widget.form.folder.value = folder
    worker = widget.load(start_thread=False)
    with qtbot.waitSignal(widget.runner.events.idle, timeout=30_000) as blocker:
        worker.start()
        qtbot.waitUntil(lambda: len(slow.computed) >= 2, timeout=20_000)
        widget.cancel_button.clicked.emit()
    assert blocker.args == ["cancelled"]
    assert any("cancelled" in m for m in messages(records))
    assert widget.session is None and widget.run_button.enabled
    done = len(slow.computed)
    assert 2 <= done < N_IMAGES
    # a second load computes only what is missing
    slow.delay = 0.0
    assert run_and_wait(qtbot, widget, start=lambda: widget.load(start_thread=False)) == "done"
    assert len(slow.computed) == N_IMAGES
    assert f"computed {N_IMAGES - done}, reused {done}" in widget.status.value

    # cancel while the model loads: the run ends at once, the load goes on
    release = threading.Event()

    def slow_loader(model, device):
        release.wait(60)
        return TokenEngine(N_IMAGES)

    monkeypatch.setattr(_engines, "loader", slow_loader)
    widget.ask_unsaved = lambda message: "discard"
    choose_model(widget, "slow")
    worker = widget.load(start_thread=False)
    try:
        with qtbot.waitSignal(widget.runner.events.idle, timeout=30_000) as blocker:
            worker.start()
            qtbot.waitUntil(lambda: "loading model" in widget.progress_bar.native.format())
            widget.cancel_button.clicked.emit()
        assert blocker.args == ["cancelled"]
        assert _engines.loading_engine_keys() == [("slow", "cpu")]
        assert widget.run_button.enabled
    finally:
        release.set()
    qtbot.waitUntil(lambda: _engines.loaded_engine_keys() == [("slow", "cpu")])
    _engines._ENGINE.clear()


def test_a_deleted_input_layer_mid_run_ends_with_a_notification(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, records
):
    viewer = make_napari_viewer()
    for index in range(4):
        viewer.add_image(collection_image(index), name=f"layer {index}", rgb=True,
                         translate=(0, 80 * index))  # fmt: skip
    slow = TokenEngine(4, delay=1.0)
    widget = make_widget(viewer, monkeypatch, tmp_path, slow)
    widget.form.source_kind.value = "layers"
    widget.form.images.value = list(viewer.layers)
    worker = widget.load(start_thread=False)
    with qtbot.waitSignal(widget.runner.events.idle, timeout=30_000) as blocker:
        worker.start()
        qtbot.waitUntil(lambda: "computing tokens" in widget.progress_bar.native.format(),
                        timeout=20_000)  # fmt: skip
        viewer.layers.remove("layer 2")
    assert blocker.args == ["input deleted"]
    warnings = messages(records, NotificationSeverity.WARNING)
    assert any("'layer 2' was deleted during the run" in m for m in warnings), warnings
    assert widget.session is None and widget.run_button.enabled
    assert not plugin_layers(viewer)
    # usable afterwards, on the three layers left; names and placement follow the layers
    slow.delay = 0.0
    widget.form.images.value = list(viewer.layers)
    assert run_and_wait(qtbot, widget, start=lambda: widget.load(start_thread=False)) == "done"
    assert widget.session.names == ["layer 0", "layer 1", "layer 3"]
    wait_shown(qtbot, widget, 2)
    shown = layer(viewer, "collection:image:rgb")
    np.testing.assert_allclose(shown.translate, viewer.layers["layer 3"].translate)
    np.testing.assert_allclose(layer(viewer, "collection:points").translate, (0, 240))


def test_closing_keeps_unsaved_changes_and_disconnects(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, folder, records
):
    viewer = make_napari_viewer()
    widget = make_widget(viewer, monkeypatch, tmp_path)
    load_folder(qtbot, widget, folder)
    layer(viewer, "collection:points").add([[20.0, 30.0], [40.0, 12.0]])  # not saved
    from test_widget_edits import plugin_callbacks

    assert plugin_callbacks(viewer)
    viewer.window.remove_dock_widget(widget.native)
    qtbot.waitUntil(lambda: widget.closed)
    assert plugin_callbacks(viewer) == [], "closing the dock disconnects everything"
    kept = [m for m in messages(records) if "unsaved changes" in m]
    assert len(kept) == 1, messages(records)
    folder_kept = kept[0].split("kept in ")[1].split(" (open it")[0]
    record = json.loads((tmp_path / folder_kept / "run.json").read_text())
    assert record["session"]["images"][0]["status"] == "annotated"


def test_cosegment_the_collection_with_shared_ids_and_kept_corrections(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, folder, records
):
    viewer = make_napari_viewer()
    widget = make_widget(viewer, monkeypatch, tmp_path)
    load_folder(qtbot, widget, folder)
    session, tokens = widget.session, widget.engine.tokens
    run_and_wait(qtbot, widget, start=lambda: widget.cosegment(start_thread=False))
    coseg = session.coseg
    # a part of the synthetic truth gets one id in every image it is in
    agreeing, parts = 0, 0
    for part in range(2, 2 + tokens.n_parts):
        ids = []
        for index in range(N_IMAGES):
            mask = tokens.labels(index) == part
            if mask.any():
                ids.append(np.bincount(coseg.labels_grid[index][mask]).argmax())
        parts += 1
        agreeing += len(set(ids)) == 1
    assert agreeing >= parts - 1, (agreeing, parts)
    rows = widget.form.table.data.to_list()
    assert len(rows) == len(coseg.segments) >= 2
    for row, record in zip(rows, coseg.segments, strict=True):
        assert row[0] == str(record["id"]) and row[1] == str(len(record["images"]))
        assert row[2] == "—" or 0.0 <= float(row[2]) <= 1.0
    shown = layer(viewer, "collection:coseg")
    assert shown.name == "co-segmentation of img0"
    assert set(np.unique(shown.data)) == set(np.unique(coseg.labels_grid[0]))

    # a corrected co-segmentation survives a new threshold; the others follow it
    wait_shown(qtbot, widget, 2)
    shown = layer(viewer, "collection:coseg")
    painted = np.array(shown.data)
    painted[:10, :10] = 99
    shown.data = painted
    widget.form.threshold.value = coseg.threshold * 4
    qtbot.waitUntil(lambda: widget.runner.idle and session.coseg is not coseg, timeout=30_000)
    np.testing.assert_array_equal(session.entries[2].coseg_edit, painted)
    np.testing.assert_array_equal(layer(viewer, "collection:coseg").data, painted)
    assert any("kept your corrected co-segmentation of 1 image" in m for m in messages(records))
    assert session.coseg.threshold == pytest.approx(coseg.threshold * 4, rel=0.05)


def test_a_stack_layer_is_a_collection_and_parts_are_proposed(
    make_napari_viewer, qtbot, monkeypatch, tmp_path
):
    viewer = make_napari_viewer()
    stack = np.stack([collection_image(index) for index in range(4)])
    viewer.add_image(stack, name="stack", rgb=True, scale=(1, 2, 2))
    widget = make_widget(viewer, monkeypatch, tmp_path, TokenEngine(4))
    widget.form.source_kind.value = "stack"
    widget.form.stack.value = viewer.layers["stack"]
    widget.form.annotate.value = "parts"
    assert run_and_wait(qtbot, widget, start=lambda: widget.load(start_thread=False)) == "done"
    session, tokens = widget.session, widget.engine.tokens
    assert session.names == [f"stack_{k:04d}" for k in range(4)]
    parts = layer(viewer, "collection:labels")
    np.testing.assert_allclose(parts.scale, (2, 2))
    # paint the truth of image 0 (on its pixels), propose on the 3 others
    from napari_corrseg.tasks.results import grid_labels_to_pixels

    geometry = pixel_geometry()
    parts.data = grid_labels_to_pixels(tokens.labels(0).astype(np.int32), geometry)
    run_and_wait(qtbot, widget, start=lambda: widget.propose(start_thread=False))
    for index in range(1, 4):
        proposal = session.entries[index].labels
        truth = tokens.labels(index)
        assert np.mean(proposal.grid == truth) > 0.8, index
        assert (proposal.confidence_grid >= 0).all() and (proposal.confidence_grid <= 1).all()
    wait_shown(qtbot, widget, 1)
    confidence = layer(viewer, "collection:label-confidence")
    np.testing.assert_allclose(confidence.data, session.entries[1].labels.confidence_grid)
    np.testing.assert_allclose(confidence.contrast_limits, (0, 1))
    np.testing.assert_array_equal(
        layer(viewer, "collection:labels").data,
        grid_labels_to_pixels(session.entries[1].labels.grid, geometry),
    )


def test_nothing_to_propose_or_accept_is_said(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, folder, records
):
    viewer = make_napari_viewer()
    widget = make_widget(viewer, monkeypatch, tmp_path)
    assert not widget.form.propose_button.enabled  # nothing loaded yet
    load_folder(qtbot, widget, folder)
    widget.form.propose_button.clicked.emit()
    errors = messages(records, NotificationSeverity.ERROR)
    assert any("mark keypoints (or paint parts) on at least one image" in m for m in errors)
    widget.form.accept_button.clicked.emit()
    errors = messages(records, NotificationSeverity.ERROR)
    assert any("'img0' has no proposal to accept" in m for m in errors), errors
    assert widget.runner.idle and widget.session.entries[0].status == ""
    # keypoints dragged off the image are left out, and said so
    layer(viewer, "collection:points").add([[10.0, 10.0], [30.0, 500.0]])
    assert run_and_wait(qtbot, widget, start=lambda: widget.propose(start_thread=False)) == (
        "warned"
    )
    warnings = messages(records, NotificationSeverity.WARNING)
    assert any("keypoint(s) 1 on 'img0' lie outside the image" in m for m in warnings)
