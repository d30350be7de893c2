"""Run long work off the GUI thread: worker, progress bar, Cancel, errors, engine cache.

A `TaskRunner` owns the Run/Cancel buttons, the progress bar and the status line of one
widget. ``runner.start(job, on_result)`` runs ``job(progress, cancel)`` in a napari
worker thread; ``progress(stage, fraction)`` may be called from that thread (it is relayed
to the GUI through a queued Qt signal) and ``cancel()`` tells the job whether the user
pressed Cancel. User errors (`CorrsegError`) become one-line napari notifications; any
other exception becomes an error notification with its traceback.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import (
    notification_manager,
    show_error,
    show_info,
    show_warning,
)
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QBoxLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton

from ..errors import Cancelled, CorrsegError

ProgressCallback = Callable[[str, float], None]
CancelCallback = Callable[[], bool]

#: Human names of the stages the engine and pipeline report.
STAGE_NAMES = {
    "load": "preparing",
    "load model": "loading model",
    "encode": "encoding images",
    "forward": "UNet forward pass",
    "metrics": "computing metrics",
    "match": "matching",
    "segment": "segmenting",
    "cache": "reading cache",
}


class TaskRunner(QObject):
    """Worker management for one widget, with the controls it drives.

    Attributes
    ----------
    run_button, cancel_button : QPushButton
        Run is disabled and Cancel enabled while a job runs.
    progress_bar : QProgressBar
        Shows ``fraction`` of the current stage, with the stage name as its text.
    status : QLabel
        One line of state ("done in 3.2 s", "cancelled", ...).
    """

    progress = Signal(str, float)

    def __init__(self) -> None:
        super().__init__()
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the computation at the next safe point.")
        self.progress_bar = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self._cancel_event = threading.Event()
        self.worker = None
        self.last_error: BaseException | None = None
        self.progress.connect(self._show_progress)
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setRange(0, 100)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat("idle")

    def add_to(self, layout: QBoxLayout) -> None:
        """Add the Run/Cancel row, the progress bar and the status line to ``layout``."""
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)

    @property
    def running(self) -> bool:
        """Whether a job is in progress."""
        return self.worker is not None

    def start(
        self,
        job: Callable[[ProgressCallback, CancelCallback], Any],
        on_result: Callable[[Any], None],
        *,
        start_thread: bool = True,
    ):
        """Run ``job(progress, cancel)`` in a worker; ``on_result`` gets its return value.

        With ``start_thread=False`` the worker is returned unstarted (tests connect to its
        signals, then call ``worker.start()``).
        """
        if self.running:
            raise RuntimeError("a job is already running; wait or press Cancel")
        self._cancel_event.clear()
        self.last_error = None

        def report(stage: str, fraction: float) -> None:
            self.progress.emit(str(stage), float(fraction))

        def run() -> Any:
            return job(report, self._cancel_event.is_set)

        worker = create_worker(run, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(on_result)
        worker.errored.connect(self.report_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("starting")
        self.status.setText("running…")
        if start_thread:
            worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next check."""
        if self.running:
            self._cancel_event.set()
            self.status.setText("cancelling…")

    def _show_progress(self, stage: str, fraction: float) -> None:
        name = STAGE_NAMES.get(stage, stage)
        self.progress_bar.setValue(round(100 * min(max(fraction, 0.0), 1.0)))
        self.progress_bar.setFormat(f"{name} %p%")

    def report_error(self, error: BaseException) -> None:
        """Show ``error`` to the user: one line for user errors, a traceback for bugs."""
        self.last_error = error
        if isinstance(error, Cancelled) or self._cancel_event.is_set():
            self.status.setText("cancelled")
            show_info("napari-corrseg: run cancelled")
            return
        self.status.setText(f"failed: {error}")
        if isinstance(error, CorrsegError | ValueError):
            show_error(f"napari-corrseg: {error}")
        else:  # a bug: keep the traceback in the notification
            notification_manager.receive_error(type(error), error, error.__traceback__)

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.last_error is None:
            self.progress_bar.setValue(100)
            self.progress_bar.setFormat("done")
        else:
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("idle")


def warn_if_tiny(maps, results: str) -> None:
    """Warn that ``results`` are not semantic when ``maps`` came from the tiny model."""
    if maps.settings.get("tiny_model"):
        show_warning(
            f"napari-corrseg: the tiny random model was used; {results} are not "
            "semantic. Choose sd2-base or point the model field at SD2 weights."
        )


# -- engine and maps kept between runs ------------------------------------------------

_ENGINE_LOCK = threading.Lock()
_ENGINE: dict[tuple[str, str], Any] = {}


def get_engine(model: str, device: str, progress: ProgressCallback | None = None):
    """Load the engine once and keep it: both widgets share the model in memory.

    Only one engine is kept (an SD2 model takes gigabytes); asking for another model or
    device replaces it.
    """
    key = (str(model), str(device))
    with _ENGINE_LOCK:
        engine = _ENGINE.get(key)
        if engine is None:
            if progress is not None:
                progress("load model", 0.0)
            from ..engine import load_engine  # torch is imported only when needed

            _ENGINE.clear()
            engine = load_engine(model=model, device=device)
            _ENGINE[key] = engine
        if progress is not None:
            progress("load model", 1.0)
        return engine


def loaded_engine_keys() -> list[tuple[str, str]]:
    """``(model, device)`` of the engine held in memory (for tests and status)."""
    with _ENGINE_LOCK:
        return list(_ENGINE)


class MapsCache:
    """Small in-memory LRU of `AttentionMaps`, keyed by image hashes and settings.

    Changing a display setting (number of matches, threshold, confidence) reuses the
    maps; only a new image, model or extraction setting runs the model again.
    """

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


#: Maps computed by any widget in this session, shared so both widgets reuse them.
MAPS_CACHE = MapsCache()


def maps_for_images(
    images: list,
    settings: dict[str, Any],
    progress: ProgressCallback,
    cancel: CancelCallback,
):
    """Attention maps of ``images`` (all pairs): memory cache, then disk cache, then model.

    Runs in the worker thread. ``settings`` holds ``model``, ``device``, ``layers``,
    ``timestep`` and ``seed`` (from `ModelSettings.values`).
    """
    from ..tasks import pipeline
    from ._layers import image_hash

    key = (
        tuple(image_hash(image) for image in images),
        settings["model"],
        settings["device"],
        repr(settings["layers"]),
        settings["timestep"],
        settings["seed"],
    )
    maps = MAPS_CACHE.get(key)
    if maps is not None:
        progress("cache", 1.0)
        return maps
    engine = get_engine(settings["model"], settings["device"], progress)
    if cancel():
        raise Cancelled("cancelled before the forward pass")
    maps = pipeline.compute_maps(
        engine,
        images,
        layers=settings["layers"],
        timestep=settings["timestep"],
        seed=settings["seed"],
        pairs="all",
        cache=True,
        progress=progress,
        cancel=cancel,
    )
    if cancel():
        raise Cancelled("cancelled after the forward pass")
    if getattr(engine, "is_tiny", False):
        maps.settings.setdefault("tiny_model", True)
    MAPS_CACHE.put(key, maps)
    return maps
