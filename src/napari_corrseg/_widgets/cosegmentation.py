"""The Co-segmentation dock widget: shared labels across images, and label propagation.

All computation goes through `napari_corrseg.tasks.pipeline`; this module reads layers, runs
the worker and builds Labels layers and the table of shared segments.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import CorrsegError
from ..tasks import pipeline
from . import _layers as L
from ._controls import LayerChecklist, LayerCombo, ModelSettings
from ._runner import TaskRunner, maps_for_images, warn_if_tiny

TABLE_COLUMNS = ("id", "images", "consistency", "pixels")


class CosegmentationWidget(QWidget):
    """Dock widget: co-segment 2+ image layers (or one stack) with ids shared across them.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (napari passes it when the widget is opened from the plugin menu).
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.maps = None
        self.result: pipeline.CosegmentationResult | None = None
        self.input_layers: list = []  # image layers of the last run (one if a stack)
        self.is_stack = False

        self.images = LayerChecklist(napari_viewer, Image)
        self.images.setToolTip(
            "Tick two or more image layers, or one stack layer (n, y, x[, c]) whose planes "
            "are the images."
        )
        self.images.setMaximumHeight(110)
        self.settings = ModelSettings()
        self.auto_threshold = QCheckBox("automatic threshold")
        self.auto_threshold.setChecked(True)
        self.auto_threshold.setToolTip(
            "Choose the merge threshold from the data (no tuning). Untick to set it by hand; "
            "the value used is shown either way."
        )
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1e6)  # an auto value is shown unclamped
        self.threshold.setDecimals(3)
        self.threshold.setSingleStep(0.05)
        self.threshold.setEnabled(False)
        self.threshold.setToolTip(
            "Symmetric-KL merge threshold: higher merges more (fewer, larger segments). "
            "Changing it reuses the computed maps."
        )
        self.runner = TaskRunner()
        self.run_button, self.cancel_button = self.runner.run_button, self.runner.cancel_button
        self.progress_bar, self.status = self.runner.progress_bar, self.runner.status
        self.run_button.setToolTip("Compute co-segmentation (one forward pass for all images).")
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(TABLE_COLUMNS))
        self.table.setToolTip(
            "Shared segments: the images each appears in (0-based, in input order) and its "
            "cross-image consistency (higher is more consistent)."
        )
        self.painted = LayerCombo(napari_viewer, Labels, user_layers_only=True)
        self.painted.setToolTip("A Labels layer you painted on one of the images.")
        self.painted_image = LayerCombo(napari_viewer, Image)
        self.painted_image.setToolTip("The image the labels were painted on.")
        self.propagate_button = QPushButton("Propagate labels")
        self.propagate_button.setToolTip(
            "Propose the painted labels on the other images as new Labels layers "
            "(needs a Run on those images first); your layer is not changed."
        )
        self._build_layout()

        self.run_button.clicked.connect(lambda: self.run())
        self.auto_threshold.toggled.connect(self._threshold_mode_changed)
        self.threshold.editingFinished.connect(self._resegment)
        self.propagate_button.clicked.connect(self._propagate_clicked)

    def _build_layout(self) -> None:
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("images"))
        layout.addWidget(self.images)
        layout.addWidget(self.settings)
        threshold = QHBoxLayout()
        threshold.addWidget(self.auto_threshold)
        threshold.addWidget(self.threshold)
        layout.addLayout(threshold)
        self.runner.add_to(layout)
        layout.addWidget(self.table)
        propagate = QGroupBox("Label propagation")
        form = QFormLayout(propagate)
        form.addRow("labels", self.painted)
        form.addRow("painted on", self.painted_image)
        form.addRow(self.propagate_button)
        layout.addWidget(propagate)

    # -- running ----------------------------------------------------------------------

    def _threshold_value(self) -> float | str:
        return "auto" if self.auto_threshold.isChecked() else float(self.threshold.value())

    def _read_inputs(self) -> tuple[list, list[np.ndarray], bool]:
        layers = self.images.checked_layers()
        if len(layers) == 1:
            return layers, L.stack_planes(layers[0]), True
        if len(layers) < 2:
            raise CorrsegError("tick two or more image layers, or one stack layer")
        return layers, [L.image_plane(layer, self.viewer) for layer in layers], False

    def run(self, *, start_thread: bool = True):
        """Co-segment the ticked images in a worker; returns the worker (None on bad input)."""
        try:
            layers, images, is_stack = self._read_inputs()
            settings = self.settings.values()
        except CorrsegError as error:
            self.runner.report_error(error)
            return None
        threshold = self._threshold_value()

        def job(progress, cancel) -> tuple:
            maps = maps_for_images(images, settings, progress, cancel)
            progress("segment", 0.0)
            result = pipeline.cosegment_images(maps, threshold=threshold)
            progress("segment", 1.0)
            return maps, result

        def done(output: tuple) -> None:
            self.maps, self.result = output
            self.input_layers, self.is_stack = layers, is_stack
            self._show_result()
            warn_if_tiny(self.maps, "segments")

        return self.runner.start(job, done, start_thread=start_thread)

    def _threshold_mode_changed(self, auto: bool) -> None:
        self.threshold.setEnabled(not auto)
        self._resegment()

    def _resegment(self) -> None:
        """Co-segment again from the cached maps with the current threshold (no model)."""
        if self.maps is None or self.runner.running:
            return
        try:
            self.result = pipeline.cosegment_images(self.maps, threshold=self._threshold_value())
        except (CorrsegError, ValueError) as error:
            self.runner.report_error(error)
            return
        self._show_result()

    # -- result layers ----------------------------------------------------------------

    def _show_result(self) -> None:
        result = self.result
        if result is None or not all(layer in self.viewer.layers for layer in self.input_layers):
            return
        if self.is_stack:
            layer = self.input_layers[0]
            scale, translate = L.plane_scale_translate(layer)
            L.upsert_layer(
                self.viewer,
                "labels",
                np.stack(result.labels).astype(np.int32),
                role="coseg:stack",
                name=f"co-segmentation of {layer.name}",
                info={"image_layer": layer.name, "threshold": result.threshold},
                scale=(float(layer.scale[0]), *scale),
                translate=(float(layer.translate[0]), *translate),
            )
            self._remove_stale_labels(0)  # per-image layers of an earlier run on layers
        else:
            for index, layer in enumerate(self.input_layers):
                L.upsert_layer(
                    self.viewer,
                    "labels",
                    result.labels[index].astype(np.int32),
                    role=f"coseg:{index}",
                    name=f"co-segmentation of {layer.name}",
                    info={
                        "image_layer": layer.name,
                        "image_index": index,
                        "threshold": result.threshold,
                    },
                    **L.pixel_placement(layer),
                )
            self._remove_stale_labels(len(self.input_layers))
        self.threshold.blockSignals(True)
        self.threshold.setValue(result.threshold)
        self.threshold.blockSignals(False)
        self._fill_table()
        shared = sum(1 for record in result.segments if record.get("shared", True))
        self.status.setText(
            f"{len(result.segments)} segments ({shared} shared), threshold "
            f"{result.threshold:.3f}{' (auto)' if self.auto_threshold.isChecked() else ''}"
            + ("; no clear structure" if getattr(result, "no_clear_structure", False) else "")
        )

    def _remove_stale_labels(self, n_images: int) -> None:
        """Drop our per-image Labels layers of a previous, larger collection (all of them
        for ``0``), and the stacked layer unless this run was on a stack."""
        for layer in list(self.viewer.layers):
            mark = layer.metadata.get(L.PLUGIN_KEY, {})
            role = mark.get("role", "") if isinstance(mark, dict) else ""
            if role.startswith("coseg:") and role[6:].isdigit() and int(role[6:]) >= n_images:
                self.viewer.layers.remove(layer)
        if not self.is_stack:
            L.remove_plugin_layer(self.viewer, "coseg:stack")

    def _fill_table(self) -> None:
        records = self.result.segments
        self.table.setRowCount(len(records))
        for row, record in enumerate(records):
            cells = (
                record.get("id", ""),
                ", ".join(str(i) for i in record.get("images", [])),
                _format_number(record.get("consistency")),
                ", ".join(str(p) for p in record.get("pixels", [])),
            )
            for column, value in enumerate(cells):
                self.table.setItem(row, column, QTableWidgetItem(str(value)))
        self.table.resizeColumnsToContents()

    def table_rows(self) -> list[list[str]]:
        """The table's text, row by row (what the user sees)."""
        return [
            [self.table.item(row, col).text() for col in range(self.table.columnCount())]
            for row in range(self.table.rowCount())
        ]

    # -- label propagation ------------------------------------------------------------

    def _propagate_clicked(self) -> None:
        try:
            self.propagate()
        except (CorrsegError, ValueError) as error:
            self.runner.report_error(error)

    def propagate(self, labels_layer=None, image_layer=None) -> list:
        """Carry a painted Labels layer to every other image of the last run.

        Returns the plugin Labels layers created or updated (one per other image).
        """
        labels_layer = labels_layer or self.painted.value()
        image_layer = image_layer or self.painted_image.value()
        if labels_layer is None or image_layer is None:
            raise CorrsegError("choose the painted Labels layer and the image it belongs to")
        if self.maps is None or self.is_stack:
            raise CorrsegError(
                "press Run on the image layers first (propagation between separate image "
                "layers; for a stack, co-segmentation already shares the labels)"
            )
        if image_layer not in self.input_layers:
            raise CorrsegError(
                f"{image_layer.name!r} was not part of the last run; tick it and press Run"
            )
        source = self.input_layers.index(image_layer)
        painted = np.asarray(labels_layer.data)
        if painted.ndim > 2:
            painted = painted[L.stack_index(labels_layer, self.viewer)]
        made = []
        for target, layer in enumerate(self.input_layers):
            if target == source:
                continue
            moved = pipeline.propagate_label_image(self.maps, source, target, painted)
            made.append(
                L.upsert_layer(
                    self.viewer,
                    "labels",
                    moved.labels.astype(np.int32),
                    role=f"propagated:{labels_layer.name}:{target}",
                    name=f"{labels_layer.name} on {layer.name}",
                    info={
                        "image_layer": layer.name,
                        "from_layer": labels_layer.name,
                        "mean_confidence": float(np.mean(moved.confidence)),
                    },
                    **L.pixel_placement(layer),
                )
            )
        self.status.setText(f"propagated {labels_layer.name!r} to {len(made)} image(s)")
        return made


def _format_number(value: Any) -> str:
    if value is None:
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "—" if np.isnan(number) else f"{number:.3f}"
