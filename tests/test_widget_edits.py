"""The widgets never lose an edit, never stay silent, and leave nothing behind when closed.

Driven the way a user works: edit a result layer with napari's own layer API (move or add
points, paint labels), rename layers, delete a layer while a run is going, cancel while
the model loads, close the dock. Maps come from the synthetic engine (a known answer).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_corrseg._widgets import CorrespondenceWidget, CosegmentationWidget, _engines
from napari_corrseg._widgets._messages import name_images
from napari_corrseg._widgets._tags import PLUGIN_KEY, RELEASED_KEY
from test_widget_support import (  # noqa: F401 - the autouse fixture must be imported
    SyntheticEngine,
    _isolated_caches,
    choose_model,
    install_engine,
    plugin_layers,
    run_and_wait,
    settle,
    textured_image,
)

pytestmark = pytest.mark.gui

SIZE = 64


@pytest.fixture
def viewer(make_napari_viewer):
    """Three RGB images: src, tgt beside it, and a third one further right."""
    viewer = make_napari_viewer()
    for index, name in enumerate(("src", "tgt", "third")):
        viewer.add_image(
            textured_image((SIZE, SIZE), index), name=name, rgb=True, translate=(0, 80 * index)
        )
    return viewer


@pytest.fixture
def records(monkeypatch):
    """The notifications shown during the test."""
    monkeypatch.setattr(notification_manager, "records", [])
    return notification_manager.records


def matcher(viewer, monkeypatch, engine=None) -> CorrespondenceWidget:
    widget = CorrespondenceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    install_engine(monkeypatch, engine or SyntheticEngine())
    choose_model(widget)
    widget.source.value, widget.target.value = viewer.layers["src"], viewer.layers["tgt"]
    return widget


def segmenter(viewer, monkeypatch, engine=None) -> CosegmentationWidget:
    widget = CosegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    install_engine(monkeypatch, engine or SyntheticEngine())
    choose_model(widget)
    widget.images.value = [viewer.layers["src"], viewer.layers["tgt"]]
    return widget


def transfer_and_wait(qtbot, widget, points_layer) -> str:
    return run_and_wait(
        qtbot, widget, start=lambda: widget.transfer(points_layer, start_thread=False)
    )


def assert_released(layer, data, reason: str) -> None:
    """``layer`` was handed to the user: unchanged data, no plugin mark, provenance kept."""
    np.testing.assert_array_equal(layer.data, data)
    assert PLUGIN_KEY not in layer.metadata
    assert layer.metadata[RELEASED_KEY]["released"] == reason


def messages(records, severity=None) -> list[str]:
    return [r.message for r in records if severity is None or r.severity == severity]


def test_edited_transferred_points_survive_a_rerun(viewer, qtbot, monkeypatch, records):
    widget = matcher(viewer, monkeypatch)
    run_and_wait(qtbot, widget)
    keypoints = viewer.add_points(np.array([[10.0, 10.0], [30.0, 20.0]]), name="kp")
    transfer_and_wait(qtbot, widget, keypoints)
    proposal = plugin_layers(viewer, "transfer")[0]
    proposal.data[0] += 4.0  # the select tool moves a point in place...
    proposal.refresh()
    proposal.add([40.0, 40.0])  # ...and the add tool appends one
    edited = np.array(proposal.data, copy=True)

    widget.settings.seed.value = 7  # a real rerun: new maps
    assert run_and_wait(qtbot, widget) == "done"
    assert proposal in viewer.layers, "an edited proposal must never be removed"
    assert_released(proposal, edited, "edited")
    assert any("'kp on tgt' (edited)" in m for m in messages(records))
    transfer_and_wait(qtbot, widget, keypoints)  # a new proposal goes to a new layer
    assert_released(proposal, edited, "edited")
    fresh = plugin_layers(viewer, "transfer")
    assert len(fresh) == 1 and fresh[0] is not proposal and len(fresh[0].data) == 2


def test_edited_match_points_survive_a_confidence_change(viewer, qtbot, monkeypatch):
    widget = matcher(viewer, monkeypatch)
    run_and_wait(qtbot, widget)
    matches = plugin_layers(viewer, "matches:source")[0]
    target_matches = plugin_layers(viewer, "matches:target")[0]
    matches.data[3] = [5.0, 5.0]  # the user corrects one match
    matches.refresh()
    edited = np.array(matches.data, copy=True)

    widget.confidence.value = 0.5
    settle(qtbot, widget)
    assert_released(matches, edited, "edited")
    shown = plugin_layers(viewer, "matches:source")
    assert len(shown) == 1 and shown[0] is not matches
    expected = int(np.sum(widget.result.confidence >= 0.5))
    assert len(shown[0].data) == expected
    assert plugin_layers(viewer, "matches:target") == [target_matches], "updated in place"
    assert len(target_matches.data) == expected
    assert shown[0].name == "matches on src [1]"  # napari's name for a second one
    viewer.layers.remove(matches)  # once the user's copy is gone, the name is free again
    widget.confidence.value = 0.4
    settle(qtbot, widget)
    assert plugin_layers(viewer, "matches:source") == shown
    assert shown[0].name == "matches on src"


def test_painted_labels_survive_a_threshold_change_and_a_rerun(viewer, qtbot, monkeypatch):
    widget = segmenter(viewer, monkeypatch)
    # the pair's warp maps have no region structure: the outcome is "warned" (no clear
    # structure); what matters is that the rerun ends the same way and keeps the paint
    first_outcome = run_and_wait(qtbot, widget)
    assert first_outcome in ("done", "warned")
    first, second = plugin_layers(viewer, "coseg")
    first.paint((20, 20), 99)  # the paint tool's brush on our layer
    painted = np.array(first.data, copy=True)
    assert (painted == 99).any()

    widget.threshold.value = widget.result.threshold * 4
    settle(qtbot, widget)
    assert_released(first, painted, "edited")
    assert second in plugin_layers(viewer, "coseg"), "the unedited layer is updated in place"
    new_first = [layer for layer in plugin_layers(viewer, "coseg") if layer is not second]
    assert len(new_first) == 1 and not (new_first[0].data == 99).any()

    widget.threshold.value = "auto"  # back to the first run's threshold
    assert run_and_wait(qtbot, widget) == first_outcome  # a rerun keeps the paint too
    assert_released(first, painted, "edited")
    assert len(plugin_layers(viewer, "coseg")) == 2


def test_a_renamed_result_layer_is_left_alone(viewer, qtbot, monkeypatch, records):
    widget = matcher(viewer, monkeypatch)
    run_and_wait(qtbot, widget)
    mine = plugin_layers(viewer, "matches:target")[0]
    mine.name = "my matches"
    kept = np.array(mine.data, copy=True)
    widget.settings.seed.value = 5
    run_and_wait(qtbot, widget)
    assert_released(mine, kept, "renamed")
    assert mine.name == "my matches"
    new = plugin_layers(viewer, "matches:target")
    assert len(new) == 1 and new[0] is not mine and new[0].name == "matches on tgt"
    assert any("'my matches' (renamed)" in m for m in messages(records))


def test_result_names_follow_their_image(viewer, qtbot, monkeypatch):
    widget = matcher(viewer, monkeypatch)
    run_and_wait(qtbot, widget)
    matches = plugin_layers(viewer, "matches:target")[0]
    entropy = plugin_layers(viewer, "metric:entropy")[0]
    viewer.layers["tgt"].name = "target B"
    run_and_wait(qtbot, widget)
    assert plugin_layers(viewer, "matches:target") == [matches]
    assert matches.name == "matches on target B"
    assert entropy.name == "entropy on target B"


def test_stale_results_are_replaced_not_stacked(viewer, qtbot, monkeypatch):
    widget = matcher(viewer, monkeypatch)
    run_and_wait(qtbot, widget)
    widget.query_enabled.value = True
    widget.query_at((20.0, 20.0))
    keypoints = viewer.add_points(np.array([[10.0, 10.0]]), name="kp")
    transfer_and_wait(qtbot, widget, keypoints)
    assert plugin_layers(viewer, "query") and plugin_layers(viewer, "transfer")

    widget.target.value = viewer.layers["third"]  # a new pair: old proposals are stale
    run_and_wait(qtbot, widget)
    assert not plugin_layers(viewer, "query") and not plugin_layers(viewer, "transfer")
    assert [layer.name for layer in plugin_layers(viewer, "matches")] == [
        "matches on src",
        "matches on third",
    ]

    segments = segmenter(viewer, monkeypatch)
    run_and_wait(qtbot, segments)
    painted = np.zeros((SIZE, SIZE), dtype=np.int32)
    painted[10:40, 10:40] = 3
    user = viewer.add_labels(painted, name="paint")
    run_and_wait(
        qtbot,
        segments,
        start=lambda: segments.propagate(user, viewer.layers["src"], start_thread=False),
    )
    assert len(plugin_layers(viewer, "propagated")) == 1
    segments.images.value = [viewer.layers["tgt"], viewer.layers["third"]]
    run_and_wait(qtbot, segments)
    assert not plugin_layers(viewer, "propagated")
    assert [layer.name for layer in plugin_layers(viewer, "coseg")] == [
        "co-segmentation of tgt",
        "co-segmentation of third",
    ]
    np.testing.assert_array_equal(user.data, painted)


def test_deleting_the_target_mid_run_ends_with_a_notification(viewer, qtbot, monkeypatch, records):
    widget = matcher(viewer, monkeypatch, SyntheticEngine(delay=60.0))
    worker = widget.run(start_thread=False)
    with qtbot.waitSignal(widget.runner.events.idle, timeout=30_000) as blocker:
        worker.start()
        qtbot.waitUntil(lambda: "forward" in widget.progress_bar.native.format(), timeout=5000)
        viewer.layers.remove("tgt")
    assert blocker.args == ["input deleted"]
    warnings = messages(records, NotificationSeverity.WARNING)
    assert any("'tgt' was deleted during the run" in m for m in warnings), warnings
    assert "'tgt'" in widget.status.value
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert not plugin_layers(viewer)
    install_engine(monkeypatch, SyntheticEngine())  # usable afterwards
    widget.target.value = viewer.layers["third"]
    assert run_and_wait(qtbot, widget) == "done"


def test_cancel_while_the_model_loads_returns_at_once(viewer, qtbot, monkeypatch, records):
    release = threading.Event()
    loads = []

    def slow_loader(model, device):  # a load that cannot be interrupted
        loads.append(model)
        release.wait(60)
        return SyntheticEngine()

    monkeypatch.setattr(_engines, "loader", slow_loader)
    widget = CorrespondenceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    choose_model(widget, "slow")
    worker = widget.run(start_thread=False)
    try:
        with qtbot.waitSignal(widget.runner.events.idle, timeout=30_000) as blocker:
            worker.start()
            qtbot.waitUntil(lambda: "loading model" in widget.progress_bar.native.format())
            widget.cancel_button.clicked.emit()
        # the run ended although the load is still blocked: cancel did not wait for it
        assert blocker.args == ["cancelled"]
        assert _engines.loading_engine_keys() == [("slow", "cpu")]
        assert widget.run_button.enabled
        assert any("cancelled" in m for m in messages(records))
    finally:
        release.set()
    qtbot.waitUntil(lambda: _engines.loaded_engine_keys() == [("slow", "cpu")])
    assert run_and_wait(qtbot, widget) == "done"  # the load finished is kept: no new load
    assert loads == ["slow"]
    _engines._ENGINE.clear()


def _ours(callback) -> bool:
    """Whether a connected callback belongs to napari-corrseg (a method or a function)."""
    if isinstance(callback, tuple):  # napari keeps (weakref to the object, method name)
        owner = callback[0]()
        return owner is not None and type(owner).__module__.startswith("napari_corrseg")
    owner = getattr(callback, "__self__", None)
    module = type(owner).__module__ if owner is not None else getattr(callback, "__module__", "")
    return str(module).startswith("napari_corrseg")


def plugin_callbacks(viewer) -> list:
    """napari-corrseg's callbacks connected to the viewer, its layer list and layers."""
    groups = [viewer.events, viewer.dims.events, viewer.camera.events, viewer.layers.events]
    groups += [layer.events for layer in viewer.layers]
    found = []
    for group in groups:
        for emitter in group.emitters.values():
            found.extend(cb for cb in emitter.callbacks if _ours(cb))
    for name in ("mouse_drag_callbacks", "mouse_move_callbacks", "mouse_double_click_callbacks"):
        found.extend(cb for cb in getattr(viewer, name) if _ours(cb))
    return found


def test_closing_the_dock_disconnects_every_callback(viewer, qtbot, monkeypatch, records):
    assert plugin_callbacks(viewer) == []
    widget = matcher(viewer, monkeypatch)
    segments = segmenter(viewer, monkeypatch)
    run_and_wait(qtbot, widget)
    widget.query_enabled.value = True
    connected = plugin_callbacks(viewer)
    assert widget._on_click in connected and len(connected) >= 8  # pickers, runs, query
    viewer.window.remove_dock_widget(widget.native)  # what the dock's close button does
    viewer.window.remove_dock_widget(segments.native)
    qtbot.waitUntil(lambda: widget.closed and segments.closed)
    assert len(widget.connections) == len(segments.connections) == 0
    assert plugin_callbacks(viewer) == []
    viewer.add_image(np.zeros((4, 4)), name="later")  # nothing of the closed docks runs
    assert plugin_layers(viewer, "matches"), "results stay: they are the user's to keep"


def test_closing_the_dock_stops_its_run(viewer, qtbot, monkeypatch, records):
    widget = matcher(viewer, monkeypatch, SyntheticEngine(delay=60.0))
    worker = widget.run(start_thread=False)
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        worker.start()
        qtbot.waitUntil(lambda: "forward" in widget.progress_bar.native.format(), timeout=5000)
        viewer.window.remove_dock_widget(widget.native)
    assert any("closed" in m for m in messages(records))
    assert not plugin_layers(viewer)


def test_empty_propagation_and_bad_labels_are_reported(viewer, qtbot, monkeypatch, records):
    widget = segmenter(viewer, monkeypatch)
    run_and_wait(qtbot, widget)
    speck = np.zeros((SIZE, SIZE), dtype=np.int32)
    speck[5, 5] = 4  # one pixel: no region survives the move to the token grid
    user = viewer.add_labels(speck, name="speck")
    outcome = run_and_wait(
        qtbot,
        widget,
        start=lambda: widget.propagate(user, viewer.layers["src"], start_thread=False),
    )
    assert outcome == "warned"
    warnings = messages(records, NotificationSeverity.WARNING)
    assert any("gave no region on 'tgt'" in m for m in warnings), warnings

    wrong = viewer.add_labels(np.ones((10, 10), dtype=np.int32), name="small")
    widget.painted.value, widget.painted_image.value = wrong, viewer.layers["src"]
    widget.propagate_button.clicked.emit()
    errors = messages(records, NotificationSeverity.ERROR)
    assert "'small' is 10x10 but the image 'src' is 64x64" in errors[-1]


def test_library_messages_name_layers():
    names = ["src", "tgt"]
    assert (
        name_images("source image 1 does not exist", names) == "source image 'tgt' does not exist"
    )
    assert name_images("no map for images 0 and 7", names) == "no map for images 'src' and 7"
