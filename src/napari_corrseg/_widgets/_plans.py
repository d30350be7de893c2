"""Result layers as ready data built in a worker, handed to the viewer in short slices.

A worker builds a `Plan`: a list of `LayerUpdate` (layer kind, ready arrays, styling, and
the keys that identify the result: widget, role, image). The GUI thread only hands these
to napari, with `Applier`, in slices of about ``budget_ms`` so the event loop keeps
turning between layers. For each update the applier:

1. drops the whole plan if one of its input layers left the viewer (the caller says so);
2. finds the plugin layer with the same keys (`_tags.find_result`); if the user renamed
   or edited it, *releases* it (it becomes the user's, untouched) and makes a new layer;
3. updates that layer in place (data, then properties; placement and name only when they
   changed; a reused layer's name follows its image) or creates it (with ``style``);
4. after all updates, removes this widget's layers of the groups in ``Plan.replaces`` that
   the plan did not touch (stale results), releasing edited ones instead, all in one
   batched layer-list update (napari collects garbage once per removal batch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer

from ..core.maps import ImageGeometry
from . import _layers as L
from . import _tags as T


@dataclass
class LayerUpdate:
    """One result layer, ready to hand to napari.

    Attributes
    ----------
    kind : {"image", "labels", "points", "vectors"}
        napari layer type.
    data : array or callable
        Layer data, or a cheap function returning it (called on the GUI thread at apply
        time, for data that depends on the viewer's current placement of layers).
    keys : dict
        What identifies the result: ``widget`` and ``role`` always, ``image`` (a
        `_tags.layer_ref`) and ``source`` when it belongs to an image / a user layer.
    name : str
        Layer name; ``{image}`` is replaced by the image layer's current name.
    image_layer : napari layer, optional
        The image the result lies on: gives placement and the name.
    placement : "pixel", ImageGeometry, dict or None
        ``"pixel"``: data in the image's pixels (the image layer's scale/translate);
        an `ImageGeometry`: a grid-sized map over the image; a dict: this ``scale`` and
        ``translate`` (no image layer needed); None: world coordinates.
    group : str
        Result set (``"run"``, ``"query"``, ``"transfer"``, ``"propagation"``).
    info : dict
        Provenance written into the mark.
    properties : dict
        Set on every apply (features, colours, contrast limits...).
    style : dict
        Used only when the layer is created, so the user's display choices are kept.
    capture : callable, optional
        For a *working* layer whose edits the dock reads into its own state (the
        Collection dock's keypoints and labels): ``capture(layer)`` is called with the
        existing layer before anything is written; it takes the user's edits and marks
        them as read (so the layer is not released), and returns False to leave the
        layer as it is (the dock's state changed after this update was built).
    """

    kind: str
    data: Any
    keys: dict[str, Any]
    name: str
    image_layer: Any = None
    placement: Any = "pixel"
    group: str = "run"
    info: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    style: dict[str, Any] = field(default_factory=dict)
    capture: Callable[[Any], bool] | None = None


@dataclass
class Plan:
    """Everything one result changes in the viewer.

    Attributes
    ----------
    widget : str
        The widget whose layers these are (the ``widget`` key of every mark).
    updates : list of LayerUpdate
    replaces : tuple of str
        Groups of this widget whose layers not in ``updates`` are stale (removed).
    removes : list of dict
        Keys of further layers to remove (e.g. the lines when lines are switched off).
    inputs : sequence of (layer, str)
        ``(layer, what)``: if ``layer`` left the viewer the plan is dropped with a message
        naming it (``what`` is e.g. ``"target image"``).
    run : int
        The run number written into each mark.
    summary : str
        Status line when applied.
    warnings : list of str
        Shown as warning notifications once applied (an empty result, for example).
    on_shown : callable, optional
        ``on_shown(report)`` on the GUI thread once every layer is shown (not when the
        plan was dropped): where a widget takes the new result as its state.
    """

    widget: str
    updates: list[LayerUpdate] = field(default_factory=list)
    replaces: tuple[str, ...] = ()
    removes: list[dict[str, Any]] = field(default_factory=list)
    inputs: Sequence[tuple[Any, str]] = ()
    run: int = 0
    summary: str = ""
    warnings: list[str] = field(default_factory=list)
    on_shown: Callable[[ApplyReport], None] | None = None


@dataclass
class ApplyReport:
    """What applying a plan did; ``aborted`` says why nothing (more) was shown."""

    layers: list = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (layer name, reason)
    removed: list[str] = field(default_factory=list)
    aborted: str | None = None
    slices_ms: list[float] = field(default_factory=list)

    def kept_message(self) -> str | None:
        """One sentence about the user's layers that were left as they are."""
        if not self.kept:
            return None
        names = ", ".join(f"{name!r} ({reason})" for name, reason in self.kept)
        return f"kept your changes: {names} left as you made them; new results in new layers"


def _missing_input(plan: Plan, viewer) -> str | None:
    for layer, what in plan.inputs:
        if layer not in viewer.layers:
            return f"the {what} layer {layer.name!r} was deleted; nothing was shown"
    return None


def _placement(update: LayerUpdate) -> dict[str, tuple[float, ...]]:
    if isinstance(update.placement, dict):
        return dict(update.placement)
    if update.image_layer is None or update.placement is None:
        return {}
    if isinstance(update.placement, ImageGeometry):
        return L.grid_placement(update.image_layer, update.placement)
    if update.placement == "pixel":
        return L.pixel_placement(update.image_layer)
    raise ValueError(f"unknown placement {update.placement!r}")


def apply_update(viewer, update: LayerUpdate, plan: Plan, report: ApplyReport):
    """Hand one update to napari (GUI thread); returns the layer written."""
    keys = {"widget": plan.widget, **update.keys}
    image_name = update.image_layer.name if update.image_layer is not None else ""
    name = update.name.replace("{image}", image_name)
    mark = {**keys, "group": update.group, "run": plan.run, "given_name": name, **update.info}
    if update.image_layer is not None:
        mark.setdefault("image_layer", image_name)

    layer = T.find_result(viewer, **keys)
    if layer is not None and update.capture is not None and not update.capture(layer):
        report.layers.append(layer)  # the dock's state is newer: leave the layer
        return layer
    data = update.data() if callable(update.data) else update.data
    placement = _placement(update)
    if layer is not None:
        change = T.user_change(layer)
        if change is not None:
            report.kept.append((layer.name, change))
            T.release(layer, change)
            layer = None
        elif layer._type_string != update.kind:
            viewer.layers.remove(layer)  # our own layer of another kind
            layer = None
    if layer is None:
        add = getattr(viewer, f"add_{update.kind}")
        layer = add(data, name=name, **update.style, **update.properties, **placement)
        report.created.append(layer.name)
    else:
        for key, value in placement.items():  # each set redraws: skip no-ops
            if not np.allclose(getattr(layer, key)[-len(value) :], value):
                setattr(layer, key, value)
        renamed_image = T.tag_of(layer).get("given_name") != name
        if renamed_image or (layer.name != name and name not in viewer.layers):
            layer.name = name  # follows its image; drops napari's " [1]" once free
        layer.data = data
        for key, value in update.properties.items():
            setattr(layer, key, value)
        if update.kind == "image" and "contrast_limits" not in update.properties:
            layer.reset_contrast_limits()
    T.stamp(layer, mark)
    report.layers.append(layer)
    return layer


def _stale_layers(viewer, plan: Plan, touched: list) -> list:
    stale = [
        layer
        for layer in viewer.layers
        if T.is_plugin_layer(layer, widget=plan.widget)
        and T.tag_of(layer).get("group") in plan.replaces
        and not any(layer is t for t in touched)
    ]
    for keys in plan.removes:
        layer = T.find_result(viewer, widget=plan.widget, **keys)
        if layer is not None and not any(layer is s for s in stale):
            stale.append(layer)
    return stale


def remove_layers(viewer, layers: list, report: ApplyReport) -> None:
    """Remove plugin layers (releasing the ones the user changed), in one batch."""
    doomed = []
    for layer in layers:
        change = T.user_change(layer)
        if change is not None:
            report.kept.append((layer.name, change))
            T.release(layer, change)
        else:
            doomed.append(layer)
    if not doomed:
        return
    with viewer.layers.batched_update():
        for layer in doomed:
            report.removed.append(layer.name)
            viewer.layers.remove(layer)


class Applier:
    """Applies plans on the GUI thread in slices of about ``budget_ms`` milliseconds.

    Parameters
    ----------
    viewer : napari.Viewer
    budget_ms : float
        Work per slice before the event loop gets a turn. One layer update is never
        split: a slice holds at least one.
    """

    def __init__(self, viewer, budget_ms: float = 40.0) -> None:
        self.viewer = viewer
        self.budget_ms = budget_ms
        self._steps: list[Callable[[], None]] = []
        self._done: Callable[[ApplyReport], None] | None = None
        self._report: ApplyReport | None = None
        self._plan: Plan | None = None
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._slice)

    @property
    def busy(self) -> bool:
        return self._plan is not None

    def apply(self, plan: Plan, done: Callable[[ApplyReport], None]) -> None:
        """Start applying ``plan``; ``done(report)`` is called when it is all shown."""
        if self.busy:
            raise RuntimeError("a plan is being applied")
        self._plan, self._done, self._report = plan, done, ApplyReport()
        touched = self._report.layers
        self._steps = [
            (lambda u=update: apply_update(self.viewer, u, plan, self._report))
            for update in plan.updates
        ]
        self._steps.append(
            lambda: remove_layers(
                self.viewer, _stale_layers(self.viewer, plan, touched), self._report
            )
        )
        self._timer.start()

    def abort(self, reason: str) -> None:
        """Stop after the current slice; ``done`` gets ``reason`` as ``aborted``."""
        if self.busy:
            self._steps = []
            self._report.aborted = reason

    def _slice(self) -> None:
        plan, report = self._plan, self._report
        if plan is None:
            return
        start = time.perf_counter()
        while self._steps and report.aborted is None:
            missing = _missing_input(plan, self.viewer)
            if missing is not None:
                report.aborted = missing
                break
            self._steps.pop(0)()
            if 1000 * (time.perf_counter() - start) >= self.budget_ms:
                break
        report.slices_ms.append(1000 * (time.perf_counter() - start))
        if self._steps and report.aborted is None:
            self._timer.start()
            return
        done = self._done
        self._plan = self._done = self._report = None
        self._steps = []
        done(report)

    def stop(self) -> None:
        """Forget any plan in progress without calling ``done`` (the dock was closed)."""
        try:
            self._timer.stop()
        except RuntimeError:  # Qt already deleted it (the application is closing)
            pass
        self._plan = self._done = self._report = None
        self._steps = []
