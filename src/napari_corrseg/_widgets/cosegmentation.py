"""The Co-segmentation dock widget: shared labels across images, and label propagation.

All computation goes through `napari_corrseg.tasks.pipeline` in worker threads (a new
threshold too); this module reads layers, builds `Plan` objects of ready Labels data
(`_builders`) and the table of shared segments.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import Container, Label, PushButton, Table
from napari.layers import Image, Labels
from qtpy.QtWidgets import QAbstractItemView
from superqt.utils import qdebounced

from ..errors import CorrsegError
from ..tasks import pipeline
from . import _builders as B
from . import _layers as L
from ._dock import DockWidget
from ._engines import maps_for_images
from ._forms import AutoValue, ModelSettings, image_multi_picker, layer_picker
from ._messages import warn_if_tiny
from ._plans import Plan
from ._tags import layer_ref, results_of

TABLE_COLUMNS = ("id", "images", "consistency", "pixels")
WIDGET = "cosegmentation"


def _format_number(value: Any) -> str:
    if value is None:
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "—" if np.isnan(number) else f"{number:.3f}"


def table_rows(segments: list[dict], image_names: list[str]) -> list[list[str]]:
    """The segment table as text: id, the images it is in (by name), consistency, pixels."""
    rows = []
    for record in segments:
        images = [
            image_names[i] if i < len(image_names) else str(i) for i in record.get("images", [])
        ]
        rows.append(
            [
                str(record.get("id", "")),
                ", ".join(images),
                _format_number(record.get("consistency")),
                ", ".join(str(p) for p in record.get("pixels", [])),
            ]
        )
    return rows


def _table_value(rows: list[list[str]]) -> dict[str, list]:
    return {"data": rows, "index": list(range(len(rows))), "columns": list(TABLE_COLUMNS)}


class CosegmentationWidget(DockWidget):
    """Dock widget: co-segment 2+ image layers (or one stack) with ids shared across them.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (napari passes it when the widget is opened from the plugin menu).
    """

    widget_name = WIDGET

    def __init__(self, napari_viewer) -> None:
        super().__init__(
            napari_viewer,
            run_tooltip="Compute co-segmentation (one forward pass for all images).",
        )
        self.maps = None
        self.result: pipeline.CosegmentationResult | None = None
        self.input_layers: list = []  # image layers of the last run (one if a stack)
        self.is_stack = False
        viewer = napari_viewer
        self.images = image_multi_picker(
            viewer,
            name="images",
            tooltip="Select two or more image layers (ctrl/shift-click), "
            "or one stack layer (n, y, x[, c]) whose planes are the images.",
        )
        self.images.native.setMaximumHeight(110)  # raw Qt: magicgui has no height limit
        self.settings = ModelSettings()
        self.threshold = AutoValue(
            name="threshold",
            value="auto",
            minimum=0.001,
            on_release=True,  # a co-segmentation takes a while: compute when let go
            maximum=100.0,
            log=True,
            tooltip="Symmetric-KL merge threshold (log scale, 0.001-100): higher merges more "
            "(fewer, "
            "larger segments). Changing it reuses the computed maps.",
            auto_tooltip="Choose the threshold from the data (the widest gap of merge "
            "distances); the value used is shown on the slider.",
        )
        self.table = Table(
            value=_table_value([]),
            tooltip="Shared segments: the images each appears in and its cross-image "
            "consistency (0-1, higher is more consistent; — when in one image only).",
        )
        self.table.native.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.native.verticalHeader().setVisible(False)
        self.painted = layer_picker(
            viewer,
            Labels,
            name="labels",
            nullable=True,
            tooltip="A Labels layer you painted on one of the images (or a co-segmentation "
            "you corrected).",
        )
        self.painted_image = layer_picker(
            viewer,
            Image,
            name="painted_image",
            label="painted on",
            tooltip="The image the labels were painted on.",
        )
        self.propagate_button = PushButton(
            text="Propagate labels",
            tooltip="Propose the painted labels on the other images "
            "of the last run as new Labels layers; your layer is not changed.",
        )
        self.extend(
            [
                Container(
                    widgets=[self.images, *self.settings.widgets, self.threshold], labels=True
                ),
                self.runner,
                self.table,
                Label(value="<b>Label propagation</b>"),
                Container(widgets=[self.painted, self.painted_image], labels=True),
                self.propagate_button,
            ]
        )
        self._resegment_soon = qdebounced(self._resegment, timeout=200, parent=self.native)
        self.run_button.changed.connect(lambda *_: self.run())
        self.threshold.value_changed.connect(self._resegment_soon)
        self.propagate_button.changed.connect(self._propagate_clicked)

    # -- running ----------------------------------------------------------------------

    def _read_inputs(self) -> tuple[list, list, bool]:
        layers = [layer for layer in self.viewer.layers if layer in self.images.value]
        if len(layers) == 1:
            return layers, L.stack_planes(layers[0], materialize=False), True
        if len(layers) < 2:
            raise CorrsegError("select two or more image layers, or one stack layer")
        planes = [L.image_plane(layer, self.viewer, materialize=False) for layer in layers]
        return layers, planes, False

    def _names(self, layers: list, is_stack: bool, n_images: int) -> list[str]:
        if is_stack:
            return [f"{layers[0].name}[{k}]" for k in range(n_images)]
        return [layer.name for layer in layers]

    def run(self, *, start_thread: bool = True):
        """Co-segment the selected images in a worker; returns the worker (None on bad input)."""
        if self.runner.busy:
            return None
        try:
            layers, planes, is_stack = self._read_inputs()
            settings = self.settings.values()
        except CorrsegError as error:
            self.runner.report_error(error)
            return None
        self.run_number += 1
        threshold, run_number = self.threshold.value, self.run_number
        names = self._names(layers, is_stack, len(planes))

        def job(progress, cancel) -> Plan:
            images = [np.asarray(plane) for plane in planes]
            maps = maps_for_images(images, settings, progress, cancel)
            progress("segment", 0.0)
            result = pipeline.cosegment_images(maps, threshold=threshold)
            progress("layers", 0.5)
            plan = self._labels_plan(result, layers, is_stack, names, threshold, run_number)
            plan.replaces = ("run", "propagation")
            plan.on_shown = lambda report: self._took(maps, result, layers, is_stack, names)
            return plan

        return self.runner.start(
            job,
            inputs=[(layer, "image") for layer in layers],
            image_names=names,
            describe="co-segmentation",
            start_thread=start_thread,
        )

    def _took(self, maps, result, layers, is_stack: bool, names: list[str]) -> None:
        self.maps, self.input_layers, self.is_stack = maps, layers, is_stack
        self._show_segments(result, names)
        warn_if_tiny(maps, "segments")

    def _show_segments(self, result, names: list[str]) -> None:
        """Take ``result`` as the current one: table and the threshold's auto value."""
        self.result = result
        self.table.value = _table_value(table_rows(result.segments, names))
        self.table.native.resizeColumnsToContents()
        self.threshold.show_auto(result.threshold)

    def _labels_plan(self, result, layers, is_stack, names, threshold, run_number) -> Plan:
        """Labels layers of one co-segmentation (runs in a worker)."""
        plan = Plan(WIDGET, run=run_number, inputs=[(layer, "image") for layer in layers])
        info = {"threshold": float(result.threshold)}
        if is_stack:
            stack = layers[0]
            plan.updates.append(
                B.labels_layer(
                    np.stack(result.labels),
                    role="coseg:stack",
                    name="co-segmentation of {image}",
                    image_layer=stack,
                    image_ref=layer_ref(stack),
                    info=info,
                    placement=B.stack_placement(stack),
                )
            )
        else:
            for index, layer in enumerate(layers):
                plan.updates.append(
                    B.labels_layer(
                        result.labels[index],
                        role="coseg",
                        name="co-segmentation of {image}",
                        image_layer=layer,
                        image_ref=layer_ref(layer),
                        info={**info, "image_index": index},
                    )
                )
        shared = sum(1 for record in result.segments if record.get("shared", True))
        plan.summary = (
            f"{len(result.segments)} segments ({shared} shared), threshold "
            f"{result.threshold:.3f}{' (auto)' if threshold == 'auto' else ''}"
        )
        if len(names) > 1 and len(result.segments) > 1 and shared == 0:
            plan.warnings.append(
                f"no segment is shared between {', '.join(repr(n) for n in names)}: the ids "
                "do not correspond across images; raise the threshold to merge more"
            )
        if result.no_clear_structure:
            plan.warnings.append(
                f"no clear structure in {', '.join(repr(n) for n in names)}: the attention "
                "does not separate into parts, so the segments are not to be trusted"
            )
        elif len(result.segments) <= 1:
            plan.warnings.append(
                f"co-segmentation found {len(result.segments)} segment in "
                f"{', '.join(repr(n) for n in names)}; lower the threshold to split more"
            )
        return plan

    def _resegment(self, *_: Any) -> None:
        """Co-segment again from the kept maps with the current threshold (worker)."""
        if self.maps is None or not all(
            layer in self.viewer.layers for layer in self.input_layers
        ):
            return

        def make():
            maps, layers, is_stack = self.maps, list(self.input_layers), self.is_stack
            threshold, run_number = self.threshold.value, self.run_number
            names = self._names(layers, is_stack, maps.n_images)

            def job() -> Plan:
                result = pipeline.cosegment_images(maps, threshold=threshold)
                plan = self._labels_plan(result, layers, is_stack, names, threshold, run_number)
                plan.replaces = ("run",)
                plan.on_shown = lambda report: self._show_segments(result, names)
                return plan

            return job

        self.runner.refresh(make, inputs=[(layer, "image") for layer in self.input_layers])

    # -- label propagation ------------------------------------------------------------

    def _propagate_clicked(self, *_: Any) -> None:
        try:
            self.propagate()
        except (CorrsegError, ValueError) as error:
            self.runner.report_error(error)

    def propagate(self, labels_layer=None, image_layer=None, *, start_thread: bool = True):
        """Carry a painted Labels layer to every other image of the last run (worker)."""
        labels_layer = labels_layer or self.painted.value
        image_layer = image_layer or self.painted_image.value
        if labels_layer is None or image_layer is None:
            raise CorrsegError("choose the painted Labels layer and the image it belongs to")
        if self.maps is None or self.is_stack:
            raise CorrsegError(
                "press Run on the image layers first (propagation between separate image "
                "layers; for a stack, co-segmentation already shares the labels)"
            )
        if self.runner.busy:
            raise CorrsegError("wait for the run to finish, then propagate")
        if image_layer not in self.input_layers:
            raise CorrsegError(
                f"{image_layer.name!r} was not part of the last run; select it and press Run"
            )
        source = self.input_layers.index(image_layer)
        painted = np.array(labels_layer.data, copy=True)  # the user may paint on meanwhile
        if painted.ndim > 2:
            painted = painted[L.stack_index(labels_layer, self.viewer)]
        if painted.shape != L.plane_shape(image_layer):
            raise CorrsegError(
                f"the Labels layer {labels_layer.name!r} is {painted.shape[0]}x{painted.shape[1]}"
                f" but the image {image_layer.name!r} is "
                f"{'x'.join(map(str, L.plane_shape(image_layer)))}; paint on that image"
            )
        if not painted.any():
            raise CorrsegError(f"the Labels layer {labels_layer.name!r} has no painted label")
        maps, run_number, layers = self.maps, self.run_number, list(self.input_layers)
        source_ref, name = layer_ref(labels_layer), labels_layer.name
        targets = [index for index in range(len(layers)) if index != source]
        target_refs = {layer_ref(layers[index]) for index in targets}
        stale = [
            {
                "role": "propagated",
                "source": source_ref,
                "image": layer.metadata["napari_corrseg"]["image"],
            }
            for layer in results_of(
                self.viewer, widget=WIDGET, role="propagated", source=source_ref
            )
            if layer.metadata["napari_corrseg"].get("image") not in target_refs
        ]

        def job(progress, cancel) -> Plan:
            plan = Plan(WIDGET, run=run_number, removes=stale, inputs=[(labels_layer, "labels")])
            empty = []
            for step, target in enumerate(targets):
                progress("propagate", step / len(targets))
                moved = pipeline.propagate_label_image(maps, source, target, painted)
                layer = layers[target]
                if not moved.labels.any():
                    empty.append(layer.name)
                plan.updates.append(
                    B.labels_layer(
                        moved.labels,
                        role="propagated",
                        name=f"{name} on {{image}}",
                        image_layer=layer,
                        image_ref=layer_ref(layer),
                        source_ref=source_ref,
                        group="propagation",
                        info={
                            "from_layer": name,
                            "mean_confidence": float(np.mean(moved.confidence)),
                        },
                    )
                )
            plan.summary = f"propagated {name!r} to {len(targets)} image(s)"
            if empty:
                plan.warnings.append(
                    f"propagating {name!r} gave no region on {', '.join(map(repr, empty))}: "
                    "the painted part may be too small or absent there"
                )
            return plan

        return self.runner.start(
            job,
            inputs=[(layer, "image") for layer in layers] + [(labels_layer, "labels")],
            image_names=[layer.name for layer in layers],
            describe="label propagation",
            start_thread=start_thread,
        )

    def table_rows(self) -> list[list[str]]:
        """The table's text, row by row (what the user sees)."""
        table = self.table.native
        return [
            [table.item(row, col).text() for col in range(table.columnCount())]
            for row in range(table.rowCount())
        ]
