"""The Co-segmentation widget end to end in a real napari viewer (under Xvfb).

A synthetic engine supplies attention of objects that move between images (a known
answer); the tiny model runs the whole path in tests/test_widget_tiny.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils.notifications import notification_manager

from napari_corrseg._widgets import CosegmentationWidget
from napari_corrseg._widgets._tags import PLUGIN_KEY
from napari_corrseg.synthetic.regions import moving_collection
from test_widget_support import (  # noqa: F401 - the autouse fixture must be imported
    GRID,
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

SHAPES = [(48, 48), (64, 32), (32, 64)]


@pytest.fixture
def collection_viewer(make_napari_viewer):
    """Three RGB images of different sizes, the last one scaled and translated."""
    viewer = make_napari_viewer()
    for index, shape in enumerate(SHAPES):
        extra = {"scale": (2, 2), "translate": (0, 150)} if index == 2 else {}
        viewer.add_image(textured_image(shape, index), name=f"img{index}", rgb=True, **extra)
    return viewer


def make_widget(viewer, monkeypatch, engine) -> CosegmentationWidget:
    widget = CosegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    install_engine(monkeypatch, engine)
    choose_model(widget)
    return widget


def test_shared_labels_table_and_threshold(collection_viewer, qtbot, monkeypatch):
    viewer = collection_viewer
    engine = SyntheticEngine()
    widget = make_widget(viewer, monkeypatch, engine)
    user_layers = list(viewer.layers)
    user_data = [np.array(layer.data, copy=True) for layer in user_layers]
    widget.images.value = user_layers
    run_and_wait(qtbot, widget)

    labels = plugin_layers(viewer, "coseg")
    assert [layer.name for layer in labels] == [f"co-segmentation of img{i}" for i in range(3)]
    for layer, image, shape in zip(labels, user_layers, SHAPES, strict=True):
        assert layer.data.shape == shape, "labels on the image's own pixels"
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
    # the ids mean the same object everywhere: compare with the synthetic truth
    truth = moving_collection(3, GRID, seed=0).labels
    for index in range(3):
        grid_labels = widget.result.labels_grid[index]
        for true_id in np.unique(truth[index]):
            found = np.bincount(grid_labels[truth[index] == true_id]).argmax()
            mask_other = truth[(index + 1) % 3] == true_id
            if mask_other.any():  # an object seen in both images gets one id in both
                other = widget.result.labels_grid[(index + 1) % 3][mask_other]
                assert np.mean(other == found) >= 0.8, f"object {true_id} of image {index}"
    # the table lists every id with the images it is in and its consistency
    rows = widget.table_rows()
    assert len(rows) == len(widget.result.segments) >= 2
    for row, record in zip(rows, widget.result.segments, strict=True):
        assert row[0] == str(record["id"])
        assert row[1] == ", ".join(f"img{image}" for image in record["images"])  # by name
        for image in record["images"]:
            assert (labels[image].data == record["id"]).any()
    auto = widget.result.threshold
    assert widget.threshold.number() == pytest.approx(auto, rel=1e-6)
    assert "auto" in widget.status.value

    # a manual threshold reuses the maps and updates the layers in place
    widget.threshold.value = auto * 3 + 1
    settle(qtbot, widget)
    assert widget.result.threshold == pytest.approx(auto * 3 + 1, rel=0.05)
    assert engine.calls == 1
    assert plugin_layers(viewer, "coseg") == labels
    for layer, data in zip(user_layers, user_data, strict=True):
        np.testing.assert_array_equal(layer.data, data)
        assert PLUGIN_KEY not in layer.metadata

    # a rerun on two images keeps two layers and removes our third
    widget.images.value = user_layers[:2]
    run_and_wait(qtbot, widget)
    assert plugin_layers(viewer, "coseg") == labels[:2]
    assert all(layer in viewer.layers for layer in user_layers)


def test_stack_gives_one_stacked_labels_layer(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer()
    stack = np.stack([textured_image((40, 40), seed) for seed in range(3)])
    viewer.add_image(stack, name="stack", rgb=True, scale=(5, 1, 1))
    for seed in (7, 8):
        viewer.add_image(textured_image((40, 40), seed), name=f"plain{seed}", rgb=True)
    widget = make_widget(viewer, monkeypatch, SyntheticEngine())
    widget.images.value = [viewer.layers["plain7"], viewer.layers["plain8"]]
    run_and_wait(qtbot, widget)
    assert len(plugin_layers(viewer, "coseg")) == 2
    widget.images.value = [viewer.layers["stack"]]
    run_and_wait(qtbot, widget)
    labels = plugin_layers(viewer, "coseg:stack")[0]
    assert labels.data.shape == (3, 40, 40)
    np.testing.assert_allclose(labels.scale, (5, 1, 1))
    assert set(np.unique(labels.data)) >= set(np.unique(labels.data[0]))
    # the per-image layers of the earlier run are gone: only the stacked one is left
    assert plugin_layers(viewer, "coseg") == [labels]


def test_painted_labels_propagate_to_the_other_images(collection_viewer, qtbot, monkeypatch):
    viewer = collection_viewer
    widget = make_widget(viewer, monkeypatch, SyntheticEngine())
    widget.images.value = [viewer.layers["img0"], viewer.layers["img1"]]
    run_and_wait(qtbot, widget)
    painted = np.zeros((48, 48), dtype=np.int32)
    painted[10:30, 5:25] = 7
    user = viewer.add_labels(painted.copy(), name="painted")
    widget.painted.value = user
    widget.painted_image.value = viewer.layers["img0"]
    with qtbot.waitSignal(widget.runner.events.idle):
        widget.propagate_button.clicked.emit()

    proposal = plugin_layers(viewer, "propagated")
    assert len(proposal) == 1 and proposal[0].name == "painted on img1"
    assert proposal[0].data.shape == SHAPES[1]
    assert set(np.unique(proposal[0].data)) <= {0, 7} and (proposal[0].data == 7).any()
    np.testing.assert_array_equal(user.data, painted)
    assert PLUGIN_KEY not in user.metadata


def test_one_plain_image_is_refused_with_a_notification(collection_viewer, monkeypatch):
    widget = make_widget(collection_viewer, monkeypatch, SyntheticEngine())
    widget.images.value = [collection_viewer.layers["img0"]]
    monkeypatch.setattr(notification_manager, "records", [])
    assert widget.run() is None
    assert "stack" in notification_manager.records[-1].message
    assert widget.run_button.enabled


def test_threshold_drag_segments_when_let_go(collection_viewer, qtbot, monkeypatch):
    """Dragging the threshold only moves the number; letting go re-segments (no model)."""
    viewer = collection_viewer
    engine = SyntheticEngine()
    widget = make_widget(viewer, monkeypatch, engine)
    widget.images.value = [viewer.layers["img0"], viewer.layers["img1"]]
    run_and_wait(qtbot, widget)
    widget.threshold.auto.value = False
    settle(qtbot, widget)
    before = widget.result
    slider = widget.threshold.qslider
    slider.setSliderDown(True)  # the user holds the handle...
    for position in range(slider.value(), slider.maximum(), 7):
        slider.setSliderPosition(position)  # ...and drags it
    qtbot.wait(400)  # longer than the debounce: still nothing computed while held
    assert widget.result is before and widget.runner.idle
    shown = float(widget.threshold.readout.value)
    with qtbot.waitSignal(widget.runner.events.idle, timeout=30_000):
        slider.setSliderDown(False)  # let go
        widget._resegment_soon.flush()
    assert widget.result is not before
    assert widget.result.threshold == pytest.approx(shown, rel=0.05)
    assert engine.calls == 1
