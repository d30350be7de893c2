"""The base of every napari-corrseg dock widget: a magicgui container with run controls.

A `DockWidget` owns

- ``viewer`` and ``connections`` (everything it connects outside itself; closing the dock
  disconnects all of it, see `_lifetime`);
- ``runner``: the shared `RunControls` (Run/Cancel, progress, status, outcomes, jobs);
- ``run_number``: counts runs, written into each result layer's mark;
- layer pickers that follow the layer list (``reset_choices`` on inserted / removed /
  reordered / renamed, as napari does for magicgui docks).

Subclasses set `widget_name` (the ``widget`` key of their layers' marks), build their form
and implement ``run``; ``on_close`` undoes anything else they set up.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container, Label
from magicgui.widgets.bases import CategoricalWidget

from ._lifetime import Connections, watch_close
from ._runner import RunControls


class DockWidget(Container):
    """A napari dock widget of this plugin (see the module docstring).

    Parameters
    ----------
    napari_viewer : napari.Viewer
    run_text, run_tooltip : str
        Text and tooltip of the Run button.
    """

    #: The ``widget`` key of the marks on this dock's result layers.
    widget_name = "dock"

    def __init__(self, napari_viewer, *, run_text: str = "Run", run_tooltip: str = "") -> None:
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.connections = Connections()
        self.runner = RunControls(
            napari_viewer, self.connections, run_text=run_text, run_tooltip=run_tooltip
        )
        self.run_number = 0
        self.closed = False
        events = napari_viewer.layers.events
        for emitter in (events.inserted, events.removed, events.reordered, events.renamed):
            self.connections.connect(emitter, self.reset_choices)
        self._close_watcher = watch_close(self.native, self.close_dock)

    # -- layer pickers ----------------------------------------------------------------

    def _pickers(self, container=None) -> list[CategoricalWidget]:
        found = []
        for widget in container if container is not None else self:
            if isinstance(widget, CategoricalWidget):
                found.append(widget)
            elif isinstance(widget, Container):
                found.extend(self._pickers(widget))
        return found

    def reset_choices(self, *_: Any) -> None:
        """Refresh every layer picker, keeping each choice by identity (magicgui alone
        matches items by their text, so a renamed layer would lose its place)."""
        saved = [(picker, picker.value) for picker in self._pickers()]
        super().reset_choices()
        for picker, value in saved:
            choices = list(picker.choices)
            if isinstance(value, list):  # a multiple selection
                kept = [item for item in value if any(item is c for c in choices)]
                if kept != list(picker.value):
                    picker.value = kept
            elif (
                value is not None
                and any(value is c for c in choices)
                and picker.value is not value
            ):
                picker.value = value

    # -- shortcuts to the run controls ------------------------------------------------

    @property
    def run_button(self):
        return self.runner.run_button

    @property
    def cancel_button(self):
        return self.runner.cancel_button

    @property
    def status(self) -> Label:
        return self.runner.status

    @property
    def progress_bar(self):
        return self.runner.progress_bar

    # -- closing ----------------------------------------------------------------------

    def on_close(self) -> None:
        """Subclass hook: undo what `connections` does not track."""

    def close_dock(self) -> None:
        """The dock was closed: stop work and disconnect every callback (idempotent)."""
        # getattr: Qt may report the widget destroyed while Python is already clearing the
        # object (garbage collection at exit); then there is nothing left to undo
        if getattr(self, "closed", True):
            return
        self.closed = True
        try:
            self.runner.close_controls()
            self.on_close()
        finally:
            self.connections.disconnect_all()
