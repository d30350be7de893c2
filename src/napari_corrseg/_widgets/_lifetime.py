"""A dock widget's outside connections, and noticing that its dock was closed.

Everything a dock widget connects to the viewer (layer-list events, mouse callbacks) goes
through its `Connections`, so closing the dock disconnects all of it in one call. Signals
of the widget's own child widgets die with them and need no tracking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject, QTimer


class Connections:
    """The callbacks one dock widget connected to objects that outlive it."""

    def __init__(self) -> None:
        self._signals: list[tuple[Any, Callable]] = []
        self._callback_lists: list[tuple[list, Callable]] = []

    def connect(self, emitter, callback: Callable) -> None:
        """``emitter.connect(callback)`` (napari EventEmitter or psygnal/Qt signal), tracked."""
        emitter.connect(callback)
        if not any(e is emitter and c == callback for e, c in self._signals):
            self._signals.append((emitter, callback))

    def disconnect(self, emitter, callback: Callable) -> None:
        """Undo one `connect`."""
        for index, (e, c) in enumerate(self._signals):
            if e is emitter and c == callback:
                del self._signals[index]
                _disconnect(emitter, callback)
                return

    def add_callback(self, callbacks: list, callback: Callable) -> None:
        """Append ``callback`` to a callback list (``viewer.mouse_drag_callbacks``), tracked."""
        if callback not in callbacks:
            callbacks.append(callback)
        if not any(cbs is callbacks and c == callback for cbs, c in self._callback_lists):
            self._callback_lists.append((callbacks, callback))

    def remove_callback(self, callbacks: list, callback: Callable) -> None:
        """Undo one `add_callback`."""
        while callback in callbacks:
            callbacks.remove(callback)
        self._callback_lists = [
            (cbs, c) for cbs, c in self._callback_lists if not (cbs is callbacks and c == callback)
        ]

    def disconnect_all(self) -> None:
        """Disconnect and remove everything connected through this object."""
        for emitter, callback in reversed(self._signals):
            _disconnect(emitter, callback)
        for callbacks, callback in reversed(self._callback_lists):
            while callback in callbacks:
                callbacks.remove(callback)
        self._signals.clear()
        self._callback_lists.clear()

    def __len__(self) -> int:
        return len(self._signals) + len(self._callback_lists)


def _disconnect(emitter, callback: Callable) -> None:
    try:
        emitter.disconnect(callback)
    except (TypeError, ValueError, RuntimeError):  # already gone
        pass


class _CloseWatcher(QObject):
    """Event filter: a parent change to None after being docked, or a close event."""

    def __init__(self, widget, fire: Callable[[], None]) -> None:
        super().__init__(widget)
        self._widget = widget
        self._fire = fire
        self._docked = widget.parent() is not None
        widget.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # Qt's name
        kind = event.type()
        if kind == QEvent.Type.ParentChange:
            if watched.parent() is not None:
                self._docked = True
            elif self._docked:  # napari's remove_dock_widget: setParent(None)
                # decided once the event loop turns: a move between parents is no close
                QTimer.singleShot(0, self._check_undocked)
        elif kind == QEvent.Type.Close:
            self._fire()
        return False

    def _check_undocked(self) -> None:
        try:
            undocked = self._widget.parent() is None
        except RuntimeError:  # already deleted: the destroyed signal fired
            return
        if undocked:
            self._fire()


def watch_close(widget, on_close: Callable[[], None]) -> QObject:
    """Call ``on_close()`` once when ``widget`` (a QWidget) is taken out of its dock
    (napari's close button or ``remove_dock_widget``), closed, or destroyed.

    ``on_close`` may run while Qt destroys the widget: it should only undo Python-side
    connections and must not rely on the widget's Qt objects still existing.
    """
    pending = [on_close]

    def fire(*_: Any) -> None:
        if pending:
            pending.pop()()

    widget.destroyed.connect(fire)  # a plain function: still called when children are gone
    return _CloseWatcher(widget, fire)
