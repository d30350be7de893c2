"""The Correspondence dock widget: matches, reliability maps, point queries, transfer.

All computation goes through `napari_corrseg.tasks.pipeline` (the same functions the
command line calls) in worker threads; this module reads layers, builds `Plan` objects of
ready layer data (`_builders`) and lets the run controls show them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from magicgui.widgets import CheckBox, Container, Label, PushButton, SpinBox
from napari.layers import Image, Points
from superqt.utils import qdebounced

from ..errors import Cancelled, CorrsegError
from ..tasks import pipeline
from . import _layers as L
from . import _match_plans as M
from ._dock import DockWidget
from ._engines import maps_for_images
from ._forms import AutoValue, ModelSettings, layer_picker
from ._messages import warn_if_tiny
from ._plans import ApplyReport, Plan, apply_update, remove_layers
from ._tags import find_result

#: Default of the confidence floor. "auto" shows the *auto* box and uses the floor the
#: pipeline chooses (`auto_confidence_floor`).
CONFIDENCE_DEFAULT: float | str = "auto"

WIDGET = M.WIDGET
auto_confidence_floor = M.auto_confidence_floor


class CorrespondenceWidget(DockWidget):
    """Dock widget: correspondences between a source and a target image layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (napari passes it when the widget is opened from the plugin menu).
    """

    widget_name = WIDGET

    def __init__(self, napari_viewer) -> None:
        super().__init__(
            napari_viewer, run_tooltip="Compute correspondences (runs the model once per pair)."
        )
        self.maps = None  # AttentionMaps of [source, target] from the last run
        self.result: pipeline.PairResult | None = None
        self.pair_layers: tuple | None = None  # (source, target) layers of the last run
        self.last_query: pipeline.PointQuery | None = None
        self.last_query_seconds: float | None = None
        viewer = napari_viewer
        self.source = layer_picker(
            viewer,
            Image,
            name="source",
            tooltip="Image layer to match from (a stack: its displayed plane).",
        )
        self.target = layer_picker(
            viewer,
            Image,
            name="target",
            tooltip="Image layer to match to (a stack: its displayed plane).",
        )
        images = list(self.source.choices)
        if len(images) >= 2:  # a sensible first guess: the two bottom-most images
            self.source.value, self.target.value = images[0], images[1]
        self.settings = ModelSettings()
        self.n_matches = SpinBox(
            name="matches",
            value=100,
            min=1,
            max=5000,
            tooltip="At most this many matches, the most confident first, spread over the "
            "image. Changing it reuses the computed maps (no new forward pass).",
        )
        self.confidence = AutoValue(
            name="confidence",
            value=CONFIDENCE_DEFAULT,
            minimum=0.0,
            maximum=1.0,
            step=0.01,
            allow_auto=CONFIDENCE_DEFAULT == "auto",
            tooltip="Confidence floor: show only matches at or above it (0 shows all). "
            "Confidence comes from cycle consistency, entropy and density.",
            auto_tooltip="Let the pipeline choose the floor from the data.",
        )
        self.confidence.label = "confidence ≥"
        self.show_lines = CheckBox(
            text="lines joining matches",
            tooltip="Draw a line from each source point to its "
            "target point. Useful when the target layer is translated beside the source.",
        )
        self.show_metrics = CheckBox(
            text="reliability maps",
            value=True,
            tooltip="Add entropy, density and NIMS on the target and cycle error on the source.",
        )
        self.query_enabled = CheckBox(
            text="click to query",
            tooltip="Click on the source image: the target shows where "
            "attention goes and the best match. Uses the computed maps; takes milliseconds.",
        )
        self.query_reverse = CheckBox(
            text="reverse (click on the target)",
            tooltip="Click on the target instead: the heatmap and best match appear on the "
            "source.",
        )
        self.keypoints = layer_picker(
            viewer,
            Points,
            name="keypoints",
            nullable=True,
            tooltip="Your Points layer of keypoints on the source image.",
        )
        self.transfer_button = PushButton(
            text="Transfer keypoints",
            tooltip="Carry the chosen keypoints to the target as a "
            "new Points layer with a confidence per point; your layer is not changed.",
        )
        form = [self.source, self.target, *self.settings.widgets, self.n_matches, self.confidence]
        self.extend(
            [
                Container(widgets=form, labels=True),
                self.show_lines,
                self.show_metrics,
                self.runner,
                Label(value="<b>Query a point</b>"),
                self.query_enabled,
                self.query_reverse,
                Label(value="<b>Keypoint transfer</b>"),
                Container(widgets=[self.keypoints], labels=True),
                self.transfer_button,
            ]
        )
        # display changes: debounced, computed off the GUI thread, latest wins
        self._rematch_soon = qdebounced(self._rematch, timeout=250, parent=self.native)
        self._refloor_soon = qdebounced(self._refloor, timeout=150, parent=self.native)
        self.run_button.changed.connect(self._run_clicked)
        self.n_matches.changed.connect(self._rematch_soon)
        self.confidence.value_changed.connect(self._refloor_soon)
        self.show_lines.changed.connect(self._display_toggled)
        self.show_metrics.changed.connect(self._display_toggled)
        self.query_enabled.changed.connect(self._set_query_callback)
        self.transfer_button.changed.connect(self._transfer_clicked)

    # -- state ------------------------------------------------------------------------

    @property
    def confidence_floor(self) -> float:
        """The confidence floor in use."""
        value = self.confidence.value
        if self.result is None:
            return 0.0 if value == "auto" else float(value)
        return M.resolve_floor(value, self.result)

    def _pair_alive(self) -> bool:
        return self.pair_layers is not None and all(
            layer in self.viewer.layers for layer in self.pair_layers
        )

    def _inputs(self) -> list[tuple[Any, str]]:
        return [(self.pair_layers[0], "source image"), (self.pair_layers[1], "target image")]

    # -- running ----------------------------------------------------------------------

    def _run_clicked(self, *_: Any) -> None:
        self.run()

    def run(self, *, start_thread: bool = True):
        """Compute matches for the chosen pair in a worker; returns the worker.

        Bad inputs are reported as a notification and return None.
        """
        if self.runner.busy:
            return None
        try:
            source, target = self.source.value, self.target.value
            if source is None or target is None:
                raise CorrsegError("choose a source and a target image layer")
            if source is target:
                raise CorrsegError(
                    f"source and target are the same layer ({source.name!r}); pick two images"
                )
            planes = [
                L.image_plane(layer, self.viewer, materialize=False) for layer in (source, target)
            ]
            settings = self.settings.values()
        except CorrsegError as error:
            self.runner.report_error(error)
            return None
        self.run_number += 1
        n_matches, floor = int(self.n_matches.value), self.confidence.value
        lines, metrics = bool(self.show_lines.value), bool(self.show_metrics.value)
        overlap = M.extents_overlap(source, target)
        run_number = self.run_number

        def job(progress, cancel) -> Plan:
            images = [np.asarray(plane) for plane in planes]
            maps = maps_for_images(images, settings, progress, cancel)
            progress("metrics", 0.0)
            result = pipeline.match_images(maps, 0, 1, max_matches=n_matches, min_confidence=0.0)
            if cancel():
                raise Cancelled("cancelled")
            progress("layers", 0.5)
            plan = M.pair_plan(
                result, (source, target), floor, lines, metrics, overlap, run_number
            )
            plan.replaces = ("run", "query", "transfer")
            if not len(result):
                plan.warnings.append(
                    f"no match between {source.name!r} and {target.name!r}; try other layers "
                    "or a timestep of 200-300"
                )
            plan.on_shown = lambda report: self._took(maps, result, (source, target), n_matches)
            return plan

        return self.runner.start(
            job,
            inputs=[(source, "source image"), (target, "target image")],
            image_names=[source.name, target.name],
            describe="matching",
            start_thread=start_thread,
        )

    def _took(self, maps, result, pair, n_matches: int) -> None:
        """A run's layers are shown: keep its result; catch up with display changes."""
        self.maps, self.result, self.pair_layers = maps, result, pair
        self.last_query = None
        if int(self.n_matches.value) != n_matches:
            self._rematch()
        warn_if_tiny(maps, "results")

    # -- display changes (no model) ---------------------------------------------------

    def _refresh(self, make) -> None:
        if self.maps is None or not self._pair_alive():
            return
        self.runner.refresh(make, inputs=self._inputs())

    def _rematch(self, *_: Any) -> None:
        """Re-match from the kept maps with the current number of matches (worker)."""

        def make():
            maps, pair, n_matches = self.maps, self.pair_layers, int(self.n_matches.value)
            floor, lines = self.confidence.value, bool(self.show_lines.value)
            overlap, run_number = M.extents_overlap(*pair), self.run_number

            def job() -> Plan:
                result = pipeline.match_images(
                    maps, 0, 1, max_matches=n_matches, min_confidence=0.0
                )
                plan = M.pair_plan(
                    result, pair, floor, lines, False, overlap, run_number, with_metrics=False
                )
                plan.on_shown = lambda report: setattr(self, "result", result)
                return plan

            return job

        self._refresh(make)

    def _refloor(self, *_: Any) -> None:
        """Show the matches at the current confidence floor (layers built in a worker)."""
        self._redisplay(with_metrics=False)

    def _display_toggled(self, *_: Any) -> None:
        self._redisplay(with_metrics=True)

    def _redisplay(self, *, with_metrics: bool) -> None:
        def make():
            result, pair, run_number = self.result, self.pair_layers, self.run_number
            floor, lines = self.confidence.value, bool(self.show_lines.value)
            metrics, overlap = bool(self.show_metrics.value), M.extents_overlap(*pair)
            return lambda: M.pair_plan(
                result,
                pair,
                floor,
                lines,
                metrics,
                overlap,
                run_number,
                with_metrics=with_metrics,
            )

        self._refresh(make)

    # -- interactive query ------------------------------------------------------------

    def _set_query_callback(self, enabled: bool) -> None:
        callbacks = self.viewer.mouse_drag_callbacks
        if enabled:
            self.connections.add_callback(callbacks, self._on_click)
            return
        self.connections.remove_callback(callbacks, self._on_click)
        stale = [
            find_result(self.viewer, widget=WIDGET, role=r)
            for r in ("query:heatmap", "query:points")
        ]
        remove_layers(self.viewer, [layer for layer in stale if layer is not None], ApplyReport())

    def _on_click(self, viewer, event) -> None:
        """Mouse callback: a press on the query image runs `query_at`."""
        if event.type == "mouse_press":
            self.query_at(event.position)

    def query_at(self, world_position) -> pipeline.PointQuery | None:
        """Show the attention heatmap and best match for a clicked world position.

        Instant (under a millisecond of computation), so it runs on the GUI thread.
        Returns None when nothing was computed yet or the click is outside the image.
        """
        if self.maps is None or not self._pair_alive() or self.runner.busy:
            return None
        start = time.perf_counter()
        from_index, to_index = (1, 0) if self.query_reverse.value else (0, 1)
        from_layer, to_layer = self.pair_layers[from_index], self.pair_layers[to_index]
        pixel = L.world_to_pixel(from_layer, np.asarray(world_position)[-2:])[0]
        height, width = L.plane_shape(from_layer)
        if not (-0.5 <= pixel[0] < height - 0.5 and -0.5 <= pixel[1] < width - 0.5):
            return None
        found = pipeline.query_point(self.maps, from_index, to_index, pixel)
        plan = Plan(WIDGET, run=self.run_number)
        report = ApplyReport()
        for update in M.query_updates(found, from_layer, to_layer, pixel):
            apply_update(self.viewer, update, plan, report)
        self.last_query = found
        self.last_query_seconds = time.perf_counter() - start
        self.status.value = (
            f"query: best match {np.round(found.best, 1).tolist()} on {to_layer.name!r} "
            f"(score {found.score:.3f}, {1000 * self.last_query_seconds:.0f} ms)"
        )
        return found

    # -- keypoint transfer ------------------------------------------------------------

    def _transfer_clicked(self, *_: Any) -> None:
        try:
            self.transfer()
        except (CorrsegError, ValueError) as error:
            self.runner.report_error(error)

    def transfer(self, points_layer=None, *, start_thread: bool = True):
        """Carry a Points layer on the source to the target, in a worker; returns it."""
        points_layer = points_layer or self.keypoints.value
        if points_layer is None:
            raise CorrsegError("choose a Points layer with keypoints on the source image")
        if self.maps is None or not self._pair_alive():
            raise CorrsegError("press Run first: transfer uses the computed maps")
        if self.runner.busy:
            raise CorrsegError("wait for the run to finish, then transfer")
        if len(points_layer.data) == 0:
            raise CorrsegError(f"the Points layer {points_layer.name!r} has no points")
        source, target = self.pair_layers
        pixels = L.world_to_pixel(source, L.points_world(points_layer))
        height, width = L.plane_shape(source)
        outside = ((pixels < -0.5) | (pixels > np.array([height, width]) - 0.5)).any(axis=1)
        if outside.any():
            raise CorrsegError(
                f"{int(outside.sum())} of the {len(pixels)} points of {points_layer.name!r} lie "
                f"outside the source image {source.name!r}; put them on that image or pick "
                "it as the source"
            )
        user_features = pd.DataFrame(points_layer.features).reset_index(drop=True)
        maps, run_number, names = self.maps, self.run_number, (points_layer.name, target.name)

        def job(progress, cancel) -> Plan:
            progress("transfer", 0.0)
            moved = pipeline.transfer_keypoints(maps, 0, 1, pixels)
            plan = Plan(WIDGET, run=run_number, inputs=[(points_layer, "keypoints")])
            plan.updates.append(
                M.transfer_update(moved, user_features, points_layer, names[0], target)
            )
            plan.summary = (
                f"transferred {len(pixels)} keypoints of {names[0]!r} to {names[1]!r} "
                f"(mean confidence {float(np.mean(moved.confidence)):.2f})"
            )
            return plan

        return self.runner.start(
            job,
            inputs=[*self._inputs(), (points_layer, "keypoints")],
            image_names=[source.name, target.name],
            describe="keypoint transfer",
            start_thread=start_thread,
        )
