"""The Correspondence widget end to end in a real napari viewer (under Xvfb).

Placement and matching are checked on a synthetic engine with a known translation; the
tiny model runs the whole path once (load, encode, forward, metrics).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from napari.utils.interactions import mouse_press_callbacks
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_corrseg._widgets import CorrespondenceWidget
from napari_corrseg._widgets._tags import PLUGIN_KEY
from napari_corrseg.errors import ModelLoadError
from test_widget_support import (  # noqa: F401 - the autouse fixture must be imported
    GRID,
    SHIFT_TOKENS,
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

SIZE = 64  # pixels; 4 pixels per token on the 16x16 synthetic grid
TARGET_OFFSET = (0.0, 80.0)  # the target layer sits beside the source
SHIFT_PX = np.array(SHIFT_TOKENS) * SIZE / GRID[0]  # the synthetic warp in pixels


@pytest.fixture
def pair_viewer(make_napari_viewer):
    """A viewer with two RGB images, the target translated beside the source."""
    viewer = make_napari_viewer()
    viewer.add_image(textured_image((SIZE, SIZE), 0), name="src", rgb=True)
    viewer.add_image(
        textured_image((SIZE, SIZE), 1), name="tgt", rgb=True, translate=TARGET_OFFSET
    )
    return viewer


def make_widget(viewer, monkeypatch, engine=None) -> CorrespondenceWidget:
    widget = CorrespondenceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    if engine is not None:
        install_engine(monkeypatch, engine)
        choose_model(widget)
    return widget


def user_snapshot(viewer) -> dict:
    return {
        layer.name: (np.array(layer.data, copy=True), tuple(layer.translate), dict(layer.metadata))
        for layer in viewer.layers
        if PLUGIN_KEY not in layer.metadata
    }


def assert_users_untouched(viewer, before: dict) -> None:
    after = user_snapshot(viewer)
    assert after.keys() == before.keys(), "a user's layer was removed or added"
    for name, (data, translate, metadata) in before.items():
        np.testing.assert_array_equal(after[name][0], data, err_msg=f"{name} data changed")
        assert after[name][1:] == (translate, metadata), f"{name} placement changed"


def test_matches_placed_on_both_images_with_features(pair_viewer, qtbot, monkeypatch):
    engine = SyntheticEngine()
    widget = make_widget(pair_viewer, monkeypatch, engine)
    before = user_snapshot(pair_viewer)
    widget.n_matches.value = 40
    assert run_and_wait(qtbot, widget) == "done"

    source = plugin_layers(pair_viewer, "matches:source")[0]
    target = plugin_layers(pair_viewer, "matches:target")[0]
    assert len(source.data) == len(target.data) == 40
    for layer in (source, target):
        assert list(layer.features.columns[:4]) == [
            "match_id",
            "confidence",
            "cycle_error",
            "entropy",
        ]
    np.testing.assert_array_equal(source.face_color, target.face_color)  # colour per match
    assert len(np.unique(source.face_color[:5], axis=0)) == 5
    # the synthetic target is the source shifted by 2 tokens = 8 pixels along columns
    error = np.linalg.norm(target.data - (source.data + SHIFT_PX), axis=1)
    assert np.mean(error <= SIZE / GRID[0]) >= 0.9, f"median error {np.median(error):.2f} px"
    # data in pixels, placed with the image layer's own translate
    assert tuple(target.translate) == TARGET_OFFSET
    world = np.array([target.data_to_world(p) for p in target.data])
    np.testing.assert_allclose(world, target.data + TARGET_OFFSET)

    # reliability maps: grid-sized, placed exactly on their image
    metrics = {
        layer.metadata[PLUGIN_KEY]["role"]: layer
        for layer in plugin_layers(pair_viewer, "metric:")
    }
    assert set(metrics) == {
        "metric:entropy",
        "metric:density",
        "metric:nims",
        "metric:cycle_error",
    }
    entropy = metrics["metric:entropy"]
    assert entropy.data.shape == GRID
    np.testing.assert_allclose(entropy.scale, (4.0, 4.0))
    np.testing.assert_allclose(entropy.translate, (1.5, 1.5 + TARGET_OFFSET[1]))
    np.testing.assert_allclose(metrics["metric:cycle_error"].translate, (1.5, 1.5))
    # the confidence slider filters both sides and the lines
    widget.show_lines.value = True
    confidence = widget.result.confidence
    floor = float(np.median(confidence))
    widget.confidence.value = round(floor, 2)
    settle(qtbot, widget)
    expected = confidence >= widget.confidence_floor
    assert 0 < expected.sum() < len(confidence)
    for side in ("source", "target"):  # the same layers, holding the kept matches
        layer = plugin_layers(pair_viewer, f"matches:{side}")[0]
        assert layer is (source if side == "source" else target)
        np.testing.assert_array_equal(layer.features["match_id"], np.flatnonzero(expected))
    np.testing.assert_array_equal(source.face_color, target.face_color)
    lines = plugin_layers(pair_viewer, "matches:lines")[0]
    assert len(lines.data) == expected.sum()
    first = lines.data[0]  # from a source point to its target point in world coordinates
    np.testing.assert_allclose(first[0], widget.result.source_points[expected][0])
    np.testing.assert_allclose(
        first[0] + first[1], widget.result.target_points[expected][0] + TARGET_OFFSET
    )
    widget.show_lines.value = False
    settle(qtbot, widget)
    assert not plugin_layers(pair_viewer, "matches:lines")
    assert_users_untouched(pair_viewer, before)


def test_rerun_and_display_changes_update_in_place(pair_viewer, qtbot, monkeypatch):
    engine = SyntheticEngine()
    widget = make_widget(pair_viewer, monkeypatch, engine)
    widget.n_matches.value = 30
    run_and_wait(qtbot, widget)
    layers_before = list(pair_viewer.layers)
    source = plugin_layers(pair_viewer, "matches:source")[0]

    widget.n_matches.value = 12  # a display change: no new forward pass
    settle(qtbot, widget)
    assert engine.calls == 1
    assert len(source.data) == 12 and source in pair_viewer.layers

    run_and_wait(qtbot, widget)  # same inputs: the maps come from the cache
    assert engine.calls == 1
    assert list(pair_viewer.layers) == layers_before, "rerun must reuse the result layers"

    widget.settings.seed.value = 3  # an extraction setting: the model runs again
    run_and_wait(qtbot, widget)
    assert engine.calls == 2
    assert list(pair_viewer.layers) == layers_before


def test_overlapping_images_keep_the_match_count_in_the_status(
    make_napari_viewer, qtbot, monkeypatch
):
    viewer = make_napari_viewer()
    viewer.add_image(textured_image((SIZE, SIZE), 0), name="src", rgb=True)
    viewer.add_image(textured_image((SIZE, SIZE), 1), name="tgt", rgb=True)
    widget = make_widget(viewer, monkeypatch, SyntheticEngine())
    widget.show_lines.value = True
    run_and_wait(qtbot, widget)
    status = widget.status.value
    result = widget.result
    # the floor starts at the pair's automatic cut: only matches above it are shown
    shown = int((result.confidence >= result.auto_confidence).sum())
    assert 0 < shown <= len(result)
    assert status.startswith(f"{shown} of {len(result)} matches shown")
    assert "the images overlap" in status


def test_displayed_plane_of_a_stack_is_used(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer()
    stack = np.stack([np.full((32, 32), value, dtype=np.float32) for value in (0, 1, 2)])
    stack += np.random.default_rng(0).random(stack.shape, dtype=np.float32)
    viewer.add_image(stack, name="stack")
    viewer.add_image(stack[0] * 2, name="other")
    engine = SyntheticEngine()
    seen = []
    real_extract = engine.extract
    monkeypatch.setattr(
        engine, "extract", lambda images, **kw: seen.append(images) or real_extract(images, **kw)
    )
    widget = make_widget(viewer, monkeypatch, engine)
    widget.source.value = viewer.layers["stack"]
    widget.target.value = viewer.layers["other"]
    viewer.dims.set_current_step(0, 2)
    run_and_wait(qtbot, widget)
    np.testing.assert_array_equal(seen[0][0], stack[2])
    assert plugin_layers(viewer, "matches:source")[0].data.shape[1] == 2


def press(position) -> SimpleNamespace:
    """A left-button press at a world position, as vispy hands it to napari."""
    return SimpleNamespace(
        type="mouse_press", position=tuple(position), modifiers=(), button=1,
        is_dragging=False, dims_displayed=(0, 1), handled=False,
    )  # fmt: skip


def test_query_click_and_keypoint_transfer(pair_viewer, qtbot, monkeypatch):
    widget = make_widget(pair_viewer, monkeypatch, SyntheticEngine())
    run_and_wait(qtbot, widget)
    widget.query_enabled.value = True
    click = (29.5, 21.5)  # token (7, 5) of the source
    mouse_press_callbacks(pair_viewer, press(click))

    heatmap = plugin_layers(pair_viewer, "query:heatmap")[0]
    assert heatmap.data.shape == GRID
    np.testing.assert_allclose(heatmap.translate, (1.5, 1.5 + TARGET_OFFSET[1]))
    peak = np.unravel_index(np.argmax(heatmap.data), GRID)
    assert peak == (7, 7), "the attention of token (7, 5) should peak 2 tokens to the right"
    clicked, best = plugin_layers(pair_viewer, "query:points")[0].data
    np.testing.assert_allclose(clicked, click)
    np.testing.assert_allclose(best, np.add(click, SHIFT_PX) + TARGET_OFFSET, atol=2.0)

    widget.query_reverse.value = True  # click on the target, find it on the source
    click_on_target = np.add(click, TARGET_OFFSET) + SHIFT_PX
    mouse_press_callbacks(pair_viewer, press(click_on_target))
    _, best = plugin_layers(pair_viewer, "query:points")[0].data
    np.testing.assert_allclose(best, click, atol=2.0)
    widget.query_enabled.value = False  # the callback and the query layers go
    assert widget._on_click not in pair_viewer.mouse_drag_callbacks
    assert not plugin_layers(pair_viewer, "query")

    # keypoint transfer through the button a user presses
    keypoints = np.array([[9.5, 9.5], [30.0, 20.0], [50.0, 33.0]])
    user = pair_viewer.add_points(
        keypoints, name="my keypoints", features={"part": ["a", "b", "c"]}
    )
    before = user_snapshot(pair_viewer)
    widget.keypoints.value = user
    with qtbot.waitSignal(widget.runner.events.idle):
        widget.transfer_button.clicked.emit()

    moved = plugin_layers(pair_viewer, "transfer")[0]
    assert moved.name == "my keypoints on tgt"
    assert list(moved.features["part"]) == ["a", "b", "c"]
    assert np.all((moved.features["confidence"] >= 0) & (moved.features["confidence"] <= 1))
    assert tuple(moved.face_contrast_limits) == (0.0, 1.0), "confidence colours on [0, 1]"
    np.testing.assert_allclose(moved.data, keypoints + SHIFT_PX, atol=2.5)
    np.testing.assert_allclose(moved.translate, TARGET_OFFSET)
    assert_users_untouched(pair_viewer, before)
    with qtbot.waitSignal(widget.runner.events.idle):  # again: the same layer is updated
        widget.transfer_button.clicked.emit()
    assert plugin_layers(pair_viewer, "transfer") == [moved]


def test_cancel_stops_the_run_and_viewer_stays_usable(pair_viewer, qtbot, monkeypatch):
    widget = make_widget(pair_viewer, monkeypatch, SyntheticEngine(delay=60.0))
    worker = widget.run(start_thread=False)
    assert not widget.run_button.enabled and widget.cancel_button.enabled
    with qtbot.waitSignal(widget.runner.events.idle, timeout=30_000) as blocker:
        worker.start()
        qtbot.waitUntil(lambda: "forward" in widget.progress_bar.native.format(), timeout=5000)
        widget.cancel_button.clicked.emit()
    assert blocker.args == ["cancelled"], "the 60 s run must stop long before it ends"
    assert widget.status.value == "cancelled"
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert not plugin_layers(pair_viewer, "matches")
    # usable afterwards: a new run with a quick engine completes
    install_engine(monkeypatch, SyntheticEngine())
    run_and_wait(qtbot, widget)
    assert len(plugin_layers(pair_viewer, "matches:")) == 2


def test_worker_errors_become_notifications(pair_viewer, qtbot, monkeypatch):
    widget = make_widget(pair_viewer, monkeypatch)
    choose_model(widget)
    cases = [
        (ModelLoadError("weights for 'sd2-base' not found; set NAPARI_CORRSEG_MODEL"), "sd2-base"),
        (RuntimeError("a bug in the worker"), "a bug in the worker"),  # keeps its traceback
    ]
    for error, expected in cases:
        install_engine(monkeypatch, SyntheticEngine(fail=error))
        monkeypatch.setattr(notification_manager, "records", [])
        run_and_wait(qtbot, widget)
        errors = [
            n for n in notification_manager.records if n.severity == NotificationSeverity.ERROR
        ]
        assert errors and expected in errors[-1].message
        assert widget.run_button.enabled
        assert not plugin_layers(pair_viewer, "matches")


def test_bad_input_is_reported_without_a_worker(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8)), name="only")
    widget = make_widget(viewer, monkeypatch)
    monkeypatch.setattr(notification_manager, "records", [])
    assert widget.run() is None
    assert "same layer" in notification_manager.records[-1].message


def test_layer_pickers_follow_the_layer_list(pair_viewer, qtbot, monkeypatch):
    widget = make_widget(pair_viewer, monkeypatch)
    target = pair_viewer.layers["tgt"]
    assert widget.target.value is target
    target.name = "renamed"  # a rename keeps the choice and shows the new name
    assert widget.target.value is target
    assert widget.target.native.currentText() == "renamed"
    mine = pair_viewer.add_points(np.zeros((1, 2)), name="mine")
    assert list(widget.keypoints.choices) == [None, mine]
    pair_viewer.layers.remove(target)
    combo = widget.target.native
    assert "renamed" not in [combo.itemText(i) for i in range(combo.count())]
