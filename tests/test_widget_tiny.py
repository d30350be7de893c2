"""Both widgets on the tiny model (real load, encode, forward, metrics), and the GUI's
responsiveness while the model works in the worker thread."""

from __future__ import annotations

import time

import numpy as np
import pytest
from napari.utils.notifications import notification_manager
from qtpy.QtCore import QTimer

from napari_corrseg._widgets import CosegmentationWidget, _messages
from test_widget_correspondence import assert_users_untouched, make_widget, user_snapshot
from test_widget_support import (  # noqa: F401 - the autouse fixture must be imported
    _isolated_caches,
    choose_model,
    install_engine,
    plugin_layers,
    run_and_wait,
    textured_image,
)

pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture
def pair_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(textured_image((64, 64), 0), name="src", rgb=True)
    viewer.add_image(textured_image((64, 64), 1), name="tgt", rgb=True, translate=(0, 80))
    return viewer


def test_tiny_model_end_to_end(make_napari_viewer, qtbot, monkeypatch, tiny_engine):
    """The whole path on the tiny model: load, encode, forward, metrics, layers."""
    viewer = make_napari_viewer()
    viewer.add_image(textured_image((96, 128), 2), name="wide", rgb=True)
    viewer.add_image(
        textured_image((80, 64), 3), name="tall", rgb=True, scale=(0.5, 0.5), translate=(5, 200)
    )
    before = user_snapshot(viewer)
    install_engine(monkeypatch, tiny_engine, "tiny")
    widget = make_widget(viewer, monkeypatch)
    choose_model(widget, "tiny")
    monkeypatch.setattr(notification_manager, "records", [])
    monkeypatch.setattr(_messages, "_WARNED_TINY", set())  # warned once a session
    stages: list[str] = []
    widget.runner.events.progress.connect(lambda stage, _: stages.append(stage))
    run_and_wait(qtbot, widget)

    assert {"encode", "forward", "metrics"} <= set(stages), stages
    grid = widget.maps.grid
    source = plugin_layers(viewer, "matches:source")[0]
    target = plugin_layers(viewer, "matches:target")[0]
    assert len(source.data) == len(target.data) > 0
    assert np.all((source.data >= -0.5) & (source.data <= np.array([96, 128]) - 0.5))
    assert np.all((target.data >= -0.5) & (target.data <= np.array([80, 64]) - 0.5))
    np.testing.assert_allclose(target.scale, (0.5, 0.5))
    entropy = plugin_layers(viewer, "metric:entropy")[0]
    assert entropy.data.shape == grid
    pixels_per_token = (80 / grid[0], 64 / grid[1])
    np.testing.assert_allclose(entropy.scale, 0.5 * np.array(pixels_per_token))
    np.testing.assert_allclose(
        entropy.translate, np.array([5, 200]) + 0.5 * (np.array(pixels_per_token) / 2 - 0.5)
    )
    assert any("tiny" in n.message for n in notification_manager.records)
    assert_users_untouched(viewer, before)


class LoopingEngine:
    """Real model work for at least ``seconds``: the tiny engine's extract, repeated."""

    is_tiny = True

    def __init__(self, engine, seconds: float) -> None:
        self.engine, self.seconds = engine, seconds
        self.identity = {"model": "tiny-looping", "seconds": seconds}

    def extract(self, images, **kwargs):
        start = time.perf_counter()
        maps = self.engine.extract(images, **kwargs)
        while time.perf_counter() - start < self.seconds:
            maps = self.engine.extract(images, **kwargs)
        return maps


def test_gui_stays_responsive_during_model_work(pair_viewer, qtbot, monkeypatch, tiny_engine):
    """Tick a 10 ms QTimer while the worker runs the model for 1.5 s or more: a GUI
    frozen by the work would show one gap as long as the whole computation."""
    widget = make_widget(pair_viewer, monkeypatch, LoopingEngine(tiny_engine, 1.5))
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    reports: list[float] = []  # when each progress report reached the GUI
    widget.runner.events.progress.connect(lambda *_: reports.append(time.perf_counter()))
    worker = widget.run(start_thread=False)
    timer.start(10)
    start = time.perf_counter()
    with qtbot.waitSignal(widget.runner.events.idle, timeout=120_000):
        worker.start()
    timer.stop()
    # the worker's part ends at its last progress report; building layers comes after
    end = reports[-1]
    gaps = np.diff([start, *[t for t in ticks if t <= end], end])
    compute = end - start
    assert compute >= 1.5
    assert gaps.max() < 0.3 * compute, (
        f"longest event-loop gap {1000 * gaps.max():.0f} ms during {compute:.1f} s of work"
    )
    assert len(plugin_layers(pair_viewer, "matches:")) == 2


def test_tiny_model_cosegmentation_end_to_end(make_napari_viewer, qtbot, monkeypatch, tiny_engine):
    viewer = make_napari_viewer()
    for index, shape in enumerate([(64, 64), (48, 80), (80, 48)]):
        viewer.add_image(textured_image(shape, 10 + index), name=f"img{index}", rgb=True)
    before = user_snapshot(viewer)
    install_engine(monkeypatch, tiny_engine, "tiny")
    widget = CosegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget)
    choose_model(widget, "tiny")
    widget.images.value = list(viewer.layers)
    run_and_wait(qtbot, widget)

    shapes = [tuple(layer.data.shape) for layer in plugin_layers(viewer, "coseg")]
    assert shapes == [(64, 64), (48, 80), (80, 48)]
    ids = set().union(*(np.unique(layer.data) for layer in plugin_layers(viewer, "coseg")))
    assert ids == {record["id"] for record in widget.result.segments}
    assert len(widget.table_rows()) == len(widget.result.segments)
    assert np.isfinite(widget.threshold.number()) and widget.threshold.number() > 0
    assert_users_untouched(viewer, before)
