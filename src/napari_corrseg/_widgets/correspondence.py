"""The Correspondence dock widget: matches, reliability maps, point queries, transfer.

All computation goes through `napari_corrseg.tasks.pipeline` (the same functions the command
line calls); this module only reads layers, runs the worker and builds result layers.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Image, Points
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import Cancelled, CorrsegError
from ..tasks import pipeline
from . import _layers as L
from ._controls import LayerCombo, ModelSettings
from ._runner import TaskRunner, maps_for_images, warn_if_tiny

#: Colormap of each reliability map; True means shown when first created.
METRIC_STYLE = {
    "entropy": ("magma", True),
    "density": ("viridis", False),
    "nims": ("inferno", False),
    "cycle_error": ("turbo", True),
}


class CorrespondenceWidget(QWidget):
    """Dock widget: correspondences between a source and a target image layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (napari passes it when the widget is opened from the plugin menu).
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.maps = None  # AttentionMaps of [source, target] from the last run
        self.result: pipeline.PairResult | None = None
        self.pair_layers: tuple | None = None  # (source, target) layers of the last run
        self.last_query: pipeline.PointQuery | None = None
        self.last_query_seconds: float | None = None

        self.source = LayerCombo(napari_viewer, Image)
        self.source.setToolTip("Image layer to match from (a stack: its displayed plane).")
        self.target = LayerCombo(napari_viewer, Image)
        self.target.setToolTip("Image layer to match to (a stack: its displayed plane).")
        images = self.source.layers()
        if len(images) >= 2:  # a sensible first guess: the two bottom-most images
            self.source.set_value(images[0])
            self.target.set_value(images[1])
        self.settings = ModelSettings()

        self.n_matches = QSpinBox()
        self.n_matches.setRange(1, 5000)
        self.n_matches.setValue(100)
        self.n_matches.setToolTip(
            "At most this many matches, the most confident first, spread over the image. "
            "Changing it reuses the computed maps (no new forward pass)."
        )
        self.confidence = QSlider(Qt.Orientation.Horizontal)
        self.confidence.setRange(0, 100)
        self.confidence.setToolTip(
            "Confidence floor: hide matches below it (live; 0 shows all). Confidence comes "
            "from cycle consistency, entropy and density."
        )
        self.confidence_label = QLabel("0.00")
        self.show_lines = QCheckBox("lines joining matches")
        self.show_lines.setToolTip(
            "Draw a line from each source point to its target point. Useful when the "
            "target layer is translated beside the source."
        )
        self.show_metrics = QCheckBox("reliability maps")
        self.show_metrics.setChecked(True)
        self.show_metrics.setToolTip(
            "Add entropy, density and NIMS on the target and cycle error on the source."
        )
        self.runner = TaskRunner()
        self.run_button, self.cancel_button = self.runner.run_button, self.runner.cancel_button
        self.progress_bar, self.status = self.runner.progress_bar, self.runner.status
        self.run_button.setToolTip("Compute correspondences (runs the model once per pair).")

        self.query_enabled = QCheckBox("click to query")
        self.query_enabled.setToolTip(
            "Click on the source image: the target shows where attention goes and the "
            "best match. Uses the computed maps; takes milliseconds."
        )
        self.query_reverse = QCheckBox("reverse (click on the target)")
        self.query_reverse.setToolTip(
            "Click on the target instead: the heatmap and best match appear on the source."
        )
        self.keypoints = LayerCombo(napari_viewer, Points, user_layers_only=True)
        self.keypoints.setToolTip("Your Points layer of keypoints on the source image.")
        self.transfer_button = QPushButton("Transfer keypoints")
        self.transfer_button.setToolTip(
            "Carry the chosen keypoints to the target as a new Points layer with a "
            "confidence per point; your layer is not changed."
        )
        self._build_layout()

        self.run_button.clicked.connect(lambda: self.run())
        self.n_matches.valueChanged.connect(self._rematch)
        self.confidence.valueChanged.connect(self._apply_confidence)
        self.show_lines.toggled.connect(self._refresh_lines)
        self.show_metrics.toggled.connect(self._refresh_metrics)
        self.query_enabled.toggled.connect(self._set_query_callback)
        self.transfer_button.clicked.connect(self._transfer_clicked)

    def _build_layout(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        form.addRow("source", self.source)
        form.addRow("target", self.target)
        layout.addLayout(form)
        layout.addWidget(self.settings)
        display = QFormLayout()
        display.addRow("matches", self.n_matches)
        floor = QHBoxLayout()
        floor.addWidget(self.confidence)
        floor.addWidget(self.confidence_label)
        display.addRow("confidence ≥", floor)
        display.addRow(self.show_lines)
        display.addRow(self.show_metrics)
        layout.addLayout(display)
        self.runner.add_to(layout)
        query = QGroupBox("Query a point")
        query_layout = QVBoxLayout(query)
        query_layout.addWidget(self.query_enabled)
        query_layout.addWidget(self.query_reverse)
        layout.addWidget(query)
        transfer = QGroupBox("Keypoint transfer")
        transfer_layout = QFormLayout(transfer)
        transfer_layout.addRow("keypoints", self.keypoints)
        transfer_layout.addRow(self.transfer_button)
        layout.addWidget(transfer)
        layout.addStretch(1)

    # -- running ----------------------------------------------------------------------

    @property
    def confidence_floor(self) -> float:
        return self.confidence.value() / 100.0

    def run(self, *, start_thread: bool = True):
        """Compute matches for the chosen pair in a worker; returns the worker.

        Errors in reading the inputs are shown as a notification and return None.
        """
        try:
            source, target = self.source.value(), self.target.value()
            if source is None or target is None:
                raise CorrsegError("choose a source and a target image layer")
            if source is target:
                raise CorrsegError("source and target are the same layer; pick two images")
            images = [L.image_plane(source, self.viewer), L.image_plane(target, self.viewer)]
            settings = self.settings.values()
        except CorrsegError as error:
            self.runner.report_error(error)
            return None
        n_matches = int(self.n_matches.value())

        def job(progress, cancel) -> tuple:
            maps = maps_for_images(images, settings, progress, cancel)
            progress("metrics", 0.0)
            result = pipeline.match_images(maps, 0, 1, max_matches=n_matches)
            if cancel():
                raise Cancelled("cancelled")
            progress("metrics", 1.0)
            return maps, result

        def done(output: tuple) -> None:
            self.maps, self.result = output
            self.pair_layers = (source, target)
            if int(self.n_matches.value()) != n_matches:  # changed while running
                self.result = pipeline.match_images(
                    self.maps, 0, 1, max_matches=int(self.n_matches.value())
                )
            self._show_result()
            warn_if_tiny(self.maps, "results")

        return self.runner.start(job, done, start_thread=start_thread)

    def _rematch(self) -> None:
        """Recompute matches from the cached maps (no forward pass)."""
        if self.maps is None or self.runner.running:
            return
        self.result = pipeline.match_images(
            self.maps, 0, 1, max_matches=int(self.n_matches.value())
        )
        self._show_result()

    # -- result layers ----------------------------------------------------------------

    def _pair_alive(self) -> bool:
        return self.pair_layers is not None and all(
            layer in self.viewer.layers for layer in self.pair_layers
        )

    def _show_result(self) -> None:
        if self.result is None or not self._pair_alive():
            return
        # before the layers: drawing the lines may add an overlap hint to this line
        self.status.setText(self._summary())
        self._refresh_metrics()
        self._apply_confidence()

    def _summary(self) -> str:
        result = self.result
        return (
            f"{len(result)} matches; inverse mapping score {result.ims:.2f} grid cells; "
            f"confidence >= {getattr(result, 'min_confidence', 0.0):.3f} (auto)"
        )

    def _apply_confidence(self, *_: Any) -> None:
        """Show only matches at or above the confidence floor (both sides, and lines).

        The points layers hold the kept matches only (``match_id`` is the match's index
        in the full result, so colours stay put). napari 0.9's ``Points.shown`` is not
        used: it does not hide points of 2-D layers when drawing.
        """
        self.confidence_label.setText(f"{self.confidence_floor:.2f}")
        if self.result is None or not self._pair_alive():
            return
        result = self.result
        keep = np.flatnonzero(result.confidence >= self.confidence_floor)
        features = pd.DataFrame(
            {
                "match_id": keep,
                "confidence": result.confidence[keep],
                "cycle_error": result.cycle_error[keep],
                "entropy": result.entropy[keep],
            }
        )
        colors = L.match_colors(keep)
        for side, layer, points in (
            ("source", self.pair_layers[0], result.source_points),
            ("target", self.pair_layers[1], result.target_points),
        ):
            L.upsert_layer(
                self.viewer,
                "points",
                points[keep].reshape(-1, 2),
                role=f"matches:{side}",
                name=f"matches on {layer.name}",
                info={"image_layer": layer.name, "side": side, "ims": result.ims},
                style={
                    "border_color": "white",
                    "size": max(3.0, 0.02 * max(L.plane_shape(layer))),
                },
                features=features,
                face_color=colors,
                **L.pixel_placement(layer),
            )
        self._refresh_lines()

    def _refresh_lines(self, *_: Any) -> None:
        if not self.show_lines.isChecked() or self.result is None or not self._pair_alive():
            L.remove_plugin_layer(self.viewer, "matches:lines")
            return
        source, target = self.pair_layers
        keep = self.result.confidence >= self.confidence_floor
        start = L.pixel_to_world(source, self.result.source_points[keep])
        end = L.pixel_to_world(target, self.result.target_points[keep])
        lines = np.stack([start, end], axis=1)
        colors = L.match_colors(np.flatnonzero(keep))
        L.upsert_lines(self.viewer, lines, colors, role="matches:lines", name="match lines")
        if _extents_overlap(source, target):
            self.status.setText(
                f"{self._summary()}; the images overlap: translate the target layer "
                "beside the source to see the lines clearly"
            )

    def _refresh_metrics(self, *_: Any) -> None:
        show = self.show_metrics.isChecked() and self.result is not None
        for name, (colormap, visible) in METRIC_STYLE.items():
            role = f"metric:{name}"
            if not show or not self._pair_alive():
                L.remove_plugin_layer(self.viewer, role)
                continue
            metric = self.result.metrics[name]
            layer = self.pair_layers[0 if metric.image == self.result.source else 1]
            values = metric.values.astype(np.float32)
            L.upsert_layer(
                self.viewer,
                "image",
                values,
                role=role,
                name=f"{name.replace('_', ' ')} on {layer.name}",
                info={"image_layer": layer.name, "description": metric.description},
                style={"colormap": colormap, "visible": visible, "opacity": 0.6},
                contrast_limits=L.value_range(values),
                **L.grid_placement(layer, metric.geometry),
            )

    # -- interactive query ------------------------------------------------------------

    def _set_query_callback(self, enabled: bool) -> None:
        callbacks = self.viewer.mouse_drag_callbacks
        if enabled and self._on_click not in callbacks:
            callbacks.append(self._on_click)
        elif not enabled and self._on_click in callbacks:
            callbacks.remove(self._on_click)

    def _on_click(self, viewer, event) -> None:
        """Mouse callback: a press on the query image runs `query_at`."""
        if event.type == "mouse_press":
            self.query_at(event.position)

    def query_at(self, world_position) -> pipeline.PointQuery | None:
        """Show the attention heatmap and best match for a clicked world position.

        Returns None when nothing was computed yet or the click is outside the image.
        """
        if self.maps is None or not self._pair_alive():
            return None
        start = time.perf_counter()
        reverse = self.query_reverse.isChecked()
        from_index, to_index = (1, 0) if reverse else (0, 1)
        from_layer, to_layer = self.pair_layers[from_index], self.pair_layers[to_index]
        pixel = L.world_to_pixel(from_layer, np.asarray(world_position)[-2:])[0]
        height, width = L.plane_shape(from_layer)
        if not (-0.5 <= pixel[0] < height - 0.5 and -0.5 <= pixel[1] < width - 0.5):
            return None
        found = pipeline.query_point(self.maps, from_index, to_index, pixel)
        L.upsert_layer(
            self.viewer,
            "image",
            found.heatmap.astype(np.float32),
            role="query:heatmap",
            name="query heatmap",
            info={"image_layer": to_layer.name},
            style={"colormap": "inferno", "blending": "additive"},
            **L.grid_placement(to_layer, found.target_geometry),
        )
        ends = np.concatenate(
            [L.pixel_to_world(from_layer, pixel), L.pixel_to_world(to_layer, found.best)]
        )
        size = max(4.0, 0.03 * float(np.max(L.plane_shape(to_layer) * to_layer.scale[-2:])))
        L.upsert_layer(
            self.viewer,
            "points",
            ends,
            role="query:points",
            name="query",
            style={
                "features": pd.DataFrame({"end": ["clicked", "best match"]}),
                "face_color": np.array([[1, 1, 1, 1], [0, 1, 0.4, 1]], dtype=np.float32),
                "size": size,
                "symbol": "cross",
            },
        )
        self.last_query = found
        self.last_query_seconds = time.perf_counter() - start
        self.status.setText(
            f"query: best match {np.round(found.best, 1).tolist()} on {to_layer.name} "
            f"(score {found.score:.3f}, {1000 * self.last_query_seconds:.0f} ms)"
        )
        return found

    # -- keypoint transfer ------------------------------------------------------------

    def _transfer_clicked(self) -> None:
        try:
            self.transfer()
        except (CorrsegError, ValueError) as error:
            self.runner.report_error(error)

    def transfer(self, points_layer=None):
        """Carry a Points layer on the source to the target as a new plugin layer."""
        points_layer = points_layer or self.keypoints.value()
        if points_layer is None:
            raise CorrsegError("choose a Points layer with keypoints on the source image")
        if self.maps is None or not self._pair_alive():
            raise CorrsegError("press Run first: transfer uses the computed maps")
        if len(points_layer.data) == 0:
            raise CorrsegError(f"the Points layer {points_layer.name!r} has no points")
        source, target = self.pair_layers
        world = np.array([points_layer.data_to_world(p) for p in points_layer.data])
        pixels = L.world_to_pixel(source, world[:, -2:])
        moved = pipeline.transfer_keypoints(self.maps, 0, 1, pixels)
        features = pd.DataFrame(points_layer.features).reset_index(drop=True)
        features["point_id"] = np.arange(len(pixels))
        features["confidence"] = moved.confidence
        features["cycle_error"] = moved.cycle_error
        return L.upsert_layer(
            self.viewer,
            "points",
            moved.target_points,
            role=f"transfer:{points_layer.name}",
            name=f"{points_layer.name} on {target.name}",
            info={"image_layer": target.name, "from_layer": points_layer.name},
            style={
                "face_colormap": "viridis",
                "size": max(3.0, 0.02 * max(L.plane_shape(target))),
            },
            features=features,
            face_color="confidence",
            **L.pixel_placement(target),
        )


def _extents_overlap(first, second) -> bool:
    """Whether two layers' world extents overlap on the displayed axes."""
    a, b = first.extent.world[:, -2:], second.extent.world[:, -2:]
    return bool(np.all(a[0] < b[1]) and np.all(b[0] < a[1]))
