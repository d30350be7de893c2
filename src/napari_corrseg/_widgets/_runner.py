"""Run controls shared by every dock widget: Run/Cancel, progress, status, outcomes.

`RunControls` is a magicgui container (Run and Cancel buttons, a progress bar, a status
line) and the machinery behind it:

- ``controls.start(job, ...)`` runs ``job(progress, cancel) -> Plan`` in a napari worker
  thread, then hands the plan to an `Applier` (result layers in short GUI slices). The
  widget stays *busy* (Run disabled, Cancel enabled) until the plan is shown.
- ``controls.refresh(make_job, ...)``: a display change computed off the GUI thread (a
  new threshold, a new number of matches). The latest request wins: requests made while
  one computes replace each other, and a result made stale by a newer run or request is
  dropped. A refresh asked for during a run waits for the run to end.
- every run ends in exactly one *outcome*, shown in the status line and, unless it is a
  plain success, as a napari notification: ``done``, ``warned`` (an empty or doubtful
  result), ``cancelled``, ``input deleted`` (an input layer was removed mid-run: the run
  is stopped at once), ``failed``. Messages name layers by their names (`name_images`).
- `RunEvents.idle` fires when the controls become idle, with the outcome.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import (
    notification_manager,
    show_error,
    show_info,
    show_warning,
)
from qtpy.QtCore import QObject, Signal

from ..errors import Cancelled, CorrsegError
from ._lifetime import Connections
from ._messages import PREFIX, STAGE_NAMES, name_images
from ._plans import Applier, ApplyReport, Plan

ProgressCallback = Callable[[str, float], None]
CancelCallback = Callable[[], bool]
Job = Callable[[ProgressCallback, CancelCallback], Plan]
PROGRESS_S = 0.25  # least time between two progress updates of one stage


class RunEvents(QObject):
    """Qt signals of `RunControls` (Qt signals, so ``qtbot.waitSignal`` can wait on them)."""

    #: ``(stage, fraction)`` as reported by the job, on the GUI thread.
    progress = Signal(str, float)
    #: The controls became idle; the argument is the outcome (``"done"``, ``"warned"``,
    #: ``"cancelled"``, ``"input deleted"``, ``"failed"``, ``"refreshed"``, ``"closed"``).
    idle = Signal(str)


class RunControls(Container):
    """Run/Cancel buttons, a progress bar and a status line, with the jobs behind them.

    Parameters
    ----------
    viewer : napari.Viewer
    connections : Connections
        The owning dock widget's connections (this object connects to layer removals).
    run_text, run_tooltip : str
        Text and tooltip of the Run button.
    """

    def __init__(
        self,
        viewer,
        connections: Connections,
        *,
        run_text: str = "Run",
        run_tooltip: str = "",
    ) -> None:
        self.viewer = viewer
        self.run_button = PushButton(text=run_text, tooltip=run_tooltip)
        self.cancel_button = PushButton(
            text="Cancel",
            enabled=False,
            tooltip="Stop the run now (a model that is loading finishes in the background "
            "and is kept for the next run).",
        )
        self.progress_bar = ProgressBar(min=0, max=100, value=0)
        self.progress_bar.native.setTextVisible(True)  # raw Qt: stage name in the bar
        self.progress_bar.native.setFormat("idle")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        lines = self.status.native.fontMetrics().lineSpacing()
        # raw Qt: room for a message wrapped on three lines (and the label's own margins)
        self.status.native.setMinimumHeight(3 * lines + lines // 2)
        buttons = Container(
            widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        super().__init__(widgets=[buttons, self.progress_bar, self.status], labels=False)
        self.margins = (0, 0, 0, 0)
        self.events = RunEvents()
        self.applier = Applier(viewer)
        self.worker = None
        self.last_error: BaseException | None = None
        self.last_report: ApplyReport | None = None
        self.last_outcome: str | None = None
        self.image_names: list[str] = []
        self._run_generation = 0
        self.generation = 0  # bumped by every run and refresh request: stale results drop
        self._applying: str | None = None  # "run" or "refresh" while the applier works
        self.closed = False
        self._cancel_event = threading.Event()
        self._inputs: list[tuple[Any, str]] = []
        self._lost_input: str | None = None
        self._describe = "run"
        self._refresh_worker = None
        self._pending_refresh: tuple | None = None
        self.events.progress.connect(self._show_progress)
        self.cancel_button.changed.connect(self.cancel)
        connections.connect(viewer.layers.events.removed, self._on_layer_removed)

    # -- state ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether a run's worker is computing."""
        return self.worker is not None

    @property
    def busy(self) -> bool:
        """Whether a run is computing or its result layers are being shown."""
        return self.worker is not None or self._applying == "run"

    @property
    def idle(self) -> bool:
        """Nothing computing, waiting or being shown."""
        return not self.busy and not self.refreshing and self._applying is None

    @property
    def refreshing(self) -> bool:
        """Whether a display refresh is computing or waiting."""
        return self._refresh_worker is not None or self._pending_refresh is not None

    # -- runs -------------------------------------------------------------------------

    def start(
        self,
        job: Job,
        *,
        inputs: Sequence[tuple[Any, str]] = (),
        image_names: Sequence[str] = (),
        describe: str = "run",
        start_thread: bool = True,
    ):
        """Run ``job(progress, cancel)`` in a worker and show the `Plan` it returns.

        Parameters
        ----------
        job : callable
            Runs in the worker thread; returns a `Plan` (layers built, nothing shown).
        inputs : sequence of (layer, str)
            Layers the run reads: deleting one stops the run with a message naming it.
        image_names : sequence of str
            Layer names of the job's images, in order (``image 1`` in a library message
            becomes ``image 'tgt'``).
        describe : str
            What the run does, for messages ("matching", "co-segmentation").
        start_thread : bool
            False returns the worker unstarted (tests connect first, then ``start()``).

        Returns
        -------
        napari worker
        """
        if self.busy:
            raise RuntimeError("a run is in progress; wait or press Cancel")
        if self._applying == "refresh":  # the run's result supersedes it
            self.applier.stop()
            self._applying = None
        self.generation += 1
        self._run_generation = generation = self.generation
        self._cancel_event.clear()
        self._inputs, self._lost_input = list(inputs), None
        self.image_names, self._describe = list(image_names), describe
        self.last_error = self.last_report = self.last_outcome = None
        cancel_event = self._cancel_event

        last = {"stage": None, "time": 0.0}

        def report(stage: str, fraction: float) -> None:
            # each repaint of the dock costs the GUI thread a frame: a new stage is shown
            # at once, the progress within a stage a few times a second
            now = time.perf_counter()
            if stage == last["stage"] and now - last["time"] < PROGRESS_S:
                return
            last["stage"], last["time"] = stage, now
            self.events.progress.emit(str(stage), float(fraction))

        def run() -> Plan:
            return job(report, cancel_event.is_set)

        worker = create_worker(run, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda plan: self._on_returned(plan, generation))
        worker.errored.connect(self._on_errored)
        # bound to this worker: a finished signal of an earlier run, still queued when a new
        # run starts, must not end the new one
        worker.finished.connect(lambda: self._on_worker_finished(worker))
        self.worker = worker
        self._set_busy(True)
        self.status.value = f"{describe}…"
        if start_thread:
            worker.start()
        return worker

    def cancel(self, *_: Any) -> None:
        """Stop the run: the job sees ``cancel()`` true; showing layers stops too."""
        if not self.busy:
            return
        self._cancel_event.set()
        self.status.value = "cancelling…"
        if self._applying == "run":
            self.applier.abort("cancelled")

    def _on_layer_removed(self, event) -> None:
        if not self.busy:
            return
        removed = event.value
        for layer, what in self._inputs:
            if layer is removed:
                self._lost_input = f"the {what} layer {layer.name!r} was deleted during the run"
                self._cancel_event.set()
                if self._applying == "run":
                    self.applier.abort(self._lost_input)
                return

    def _on_returned(self, plan: Plan, generation: int) -> None:
        if self.closed or generation != self._run_generation:
            return
        if self._cancel_event.is_set():
            return  # _on_worker_finished reports it
        self.worker = None  # computing is over; the applier keeps the widget busy
        self._applying = "run"

        def shown(report: ApplyReport) -> None:
            self._applying = None
            self.last_report = report
            if report.aborted is None and plan.on_shown is not None:
                plan.on_shown(report)
            self._finish(plan, report)

        self.applier.apply(plan, shown)

    def _on_errored(self, error: BaseException) -> None:
        self.last_error = error

    def _on_worker_finished(self, worker) -> None:
        if self.worker is not worker:  # returned (the applier finishes), or an older run
            return
        self.worker = None
        if self.closed:
            return
        self._finish(None, None)

    def _finish(self, plan: Plan | None, report: ApplyReport | None) -> None:
        error = self.last_error
        if self._lost_input is not None:
            outcome = "input deleted"
            self._say(f"{self._lost_input}; the run was stopped, nothing was shown", "warning")
        elif self._cancel_event.is_set() or isinstance(error, Cancelled):
            outcome = "cancelled"
            self._say(f"{self._describe} cancelled", "info", status="cancelled")
        elif error is not None:
            outcome = "failed"
            self.report_error(error)
        elif report is not None and report.aborted is not None:
            outcome = "input deleted"
            self._say(name_images(report.aborted, self.image_names), "warning")
        else:
            outcome = "warned" if plan.warnings else "done"
            self.status.value = plan.summary
            _tell(plan, report)
        self.last_outcome = outcome
        self._set_busy(False, success=outcome in ("done", "warned"))
        self.events.idle.emit(outcome)
        if self._pending_refresh is not None and self._refresh_worker is None:
            self._start_refresh()

    # -- display refreshes ------------------------------------------------------------

    def refresh(
        self,
        make_job: Callable[[], Callable[[], Plan] | None],
        *,
        inputs: Sequence[tuple[Any, str]] = (),
        announce: bool = True,
    ) -> None:
        """Show a display change computed off the GUI thread; the latest request wins.

        ``make_job()`` is called on the GUI thread when the computation starts (so it
        reads the widget's state then, not when asked) and returns ``job() -> Plan`` for
        the worker, or None when there is nothing to show. ``announce=False`` leaves the
        status line as it is meanwhile (a change shown in milliseconds, such as the next
        image of a collection: each new text costs the dock a repaint).
        """
        if self.closed:
            return
        self.generation += 1
        self._pending_refresh = (make_job, list(inputs), announce)
        if self._refresh_worker is None and self._applying is None and not self.busy:
            self._start_refresh()

    def _start_refresh(self) -> None:
        make_job, inputs, announce = self._pending_refresh
        self._pending_refresh = None
        generation = self.generation
        job = make_job()
        if job is None:
            self._after_refresh()
            return
        worker = create_worker(job, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda plan: self._on_refreshed(plan, inputs, generation))
        worker.errored.connect(self.report_error)
        worker.finished.connect(self._on_refresh_finished)
        self._refresh_worker = worker
        if announce:
            self.status.value = "updating…"
        worker.start()

    def _on_refreshed(self, plan: Plan, inputs, generation: int) -> None:
        if self.closed or generation != self.generation or self.busy:
            return  # a newer request or a run made it stale
        plan.inputs = [*plan.inputs, *inputs]
        self._applying = "refresh"

        def shown(report: ApplyReport) -> None:
            self._applying = None
            self.last_report = report
            if report.aborted is not None:
                self._say(name_images(report.aborted, self.image_names), "warning")
            else:
                if plan.on_shown is not None:
                    plan.on_shown(report)
                if plan.summary != self.status.value:
                    self.status.value = plan.summary
                _tell(plan, report)
            self._after_refresh()

        self.applier.apply(plan, shown)

    def _on_refresh_finished(self) -> None:
        self._refresh_worker = None
        if self._applying is None:
            self._after_refresh()

    def _after_refresh(self) -> None:
        if self.closed or self._refresh_worker is not None or self._applying is not None:
            return
        if self._pending_refresh is not None and not self.busy:
            self._start_refresh()
        elif self._pending_refresh is None:
            self.events.idle.emit("refreshed")

    # -- messages ---------------------------------------------------------------------

    def _say(self, message: str, level: str, *, status: str | None = None) -> None:
        self.status.value = status or message
        {"info": show_info, "warning": show_warning, "error": show_error}[level](
            f"{PREFIX}: {message}"
        )

    def report_error(self, error: BaseException) -> None:
        """Show ``error``: one line for a user's mistake, the traceback for a bug."""
        self.last_error = error
        if isinstance(error, Cancelled):
            self._say(f"{self._describe} cancelled", "info", status="cancelled")
            return
        message = name_images(str(error), self.image_names)
        self.status.value = f"failed: {message}"
        if isinstance(error, CorrsegError | ValueError):
            show_error(f"{PREFIX}: {message}")
        else:  # a bug: keep the traceback in the notification
            notification_manager.receive_error(type(error), error, error.__traceback__)

    def _show_progress(self, stage: str, fraction: float) -> None:
        if self.closed:
            return
        name = STAGE_NAMES.get(stage, stage)
        self.progress_bar.value = round(100 * min(max(fraction, 0.0), 1.0))
        self.progress_bar.native.setFormat(f"{name} %p%")

    def _set_busy(self, busy: bool, *, success: bool = False) -> None:
        if self.closed:
            return
        self.run_button.enabled = not busy
        self.cancel_button.enabled = busy
        if busy:
            self.progress_bar.value = 0
            self.progress_bar.native.setFormat("starting")
        else:
            self.progress_bar.value = 100 if success else 0
            self.progress_bar.native.setFormat("done" if success else "idle")

    # -- closing ----------------------------------------------------------------------

    def close_controls(self) -> None:
        """The dock closed: stop the run, drop pending work, show nothing more."""
        if self.busy:
            self._cancel_event.set()
            show_info(f"{PREFIX}: the widget was closed; its {self._describe} was stopped")
        self.closed = True
        self._pending_refresh = None
        self._applying = None
        self.applier.stop()
        try:
            self.events.idle.emit("closed")
        except RuntimeError:  # Qt already deleted it: the application is closing
            pass


def _tell(plan: Plan, report: ApplyReport) -> None:
    """Notify a shown plan's warnings, and the layers kept because the user changed them."""
    for warning in plan.warnings:
        show_warning(f"{PREFIX}: {warning}")
    kept = report.kept_message()
    if kept:
        show_info(f"{PREFIX}: {kept}")
