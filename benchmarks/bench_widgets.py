"""Does the viewer stay fluid while the widgets work? Event-loop lateness, per phase.

    .venv/bin/python benchmarks/bench_widgets.py [--repeats 3] [--cases pair]

On a shown napari viewer (the script re-runs itself under ``xvfb-run`` without a display)
a 10 ms ``QTimer`` ticks the whole time; the *lateness* of a tick is how much later than
10 ms after the previous one it came. For each case and phase the script reports the
maximum and the 95th percentile of the lateness, the number of ticks, and the longest
GUI slice of the plugin's own layer work (`ApplyReport.slices_ms`). Phases:

- ``first run``: the session's first run (the worker imports torch and loads the model),
  from the click until the worker has its result;
- ``run``: a run with the model loaded (a new seed, so the model runs), click to result;
- ``results arrive``: from the worker's result until every layer is shown, plus 100 ms
  for napari's last repaint (``cold``: the result layers are created; ``warm``: updated
  in place);
- ``drag <slider>: moving``: a user dragging a slider across its range at 60 events per
  second for 1.5 s; ``let go, result shown``: from the last move until the (debounced,
  worker-computed) result is shown, plus 100 ms;
- controls, to tell the plugin's share from the machine's: the idle viewer, and dragging
  napari's own opacity slider of an image layer (its canvas redraws at every step).

Cases: ``pair`` = the shipped sample pair (2 x 256 px), tiny model, both pair widgets;
``collection64`` = a folder of 64 variants of the pair (256 px), tiny model, the
Collection widget: load (fill the token store), propose the keypoints of image 0 on the
63 others, browse (*next* 4 times a second), review (*accept*, the least confident shown
next), drag the image slider, co-segment, drag the threshold slider, save. A case is a
function ``(viewer, phases, options)`` in `CASES`.

Also measured, as before: click-to-layers time of an interactive query at N = 1024 and
4096. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np

from napari_corrseg.cli.display import ensure_display

TICK_MS = 10
SETTLE_S = 0.1


# -- the clock ------------------------------------------------------------------------


class Ticker:
    """A 10 ms QTimer whose tick times are kept for the whole benchmark."""

    def __init__(self) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start(TICK_MS)

    def lateness(self, start: float, end: float) -> np.ndarray:
        """Lateness (ms) of each tick in ``[start, end]``, the span to ``end`` included."""
        inside = [t for t in self.ticks if start <= t <= end]
        gaps = np.diff([start, *inside, end]) * 1000.0 - TICK_MS
        return np.clip(gaps, 0.0, None)


def pump_until(condition: Callable[[], bool], timeout: float = 600.0) -> None:
    from qtpy.QtWidgets import QApplication

    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("the widget did not finish in time")
        QApplication.processEvents()
        time.sleep(0.001)


def pump(seconds: float) -> None:
    end = time.perf_counter() + seconds
    pump_until(lambda: time.perf_counter() >= end)


# -- phases ---------------------------------------------------------------------------


class Phases:
    """Collects (case, phase, lateness, plugin slice) rows."""

    def __init__(self, ticker: Ticker) -> None:
        self.ticker = ticker
        self.rows: list[dict] = []

    def add(self, case: str, phase: str, start: float, end: float, slices=()) -> None:
        late = self.ticker.lateness(start, end)
        self.rows.append(
            {
                "case": case,
                "phase": phase,
                "seconds": end - start,
                "ticks": len(late),
                "max": float(late.max()) if len(late) else 0.0,
                "p95": float(np.percentile(late, 95)) if len(late) else 0.0,
                "slice": max(slices) if len(slices) else float("nan"),
            }
        )


def timed_run(phases: Phases, case: str, widget, start_run: Callable, run_phase: str,
              arrive_phase: str) -> None:  # fmt: skip
    """Start a run, time the worker part and the showing part separately."""
    marks: dict[str, float] = {}
    runner = widget.runner
    runner.events.idle.connect(lambda *_: marks.setdefault("idle", time.perf_counter()))
    marks["start"] = time.perf_counter()
    worker = start_run()
    worker.returned.connect(lambda *_: marks.setdefault("returned", time.perf_counter()))
    worker.start()
    pump_until(lambda: "idle" in marks)
    pump(SETTLE_S)
    runner.events.idle.disconnect()
    if runner.last_outcome not in ("done", "warned"):
        raise RuntimeError(f"the run ended {runner.last_outcome}: {runner.status.value}")
    phases.add(case, run_phase, marks["start"], marks["returned"])
    slices = runner.last_report.slices_ms if runner.last_report else ()
    phases.add(case, arrive_phase, marks["returned"], marks["idle"] + SETTLE_S, slices)


def drag(phases: Phases, case: str, widget, slider, values: np.ndarray, phase: str) -> None:
    """Move ``slider`` through ``values`` (fractions of its range for an `AutoValue`) at
    60 Hz (a drag), then wait for the result.

    ``slider`` is one of the plugin's `AutoValue` controls, dragged the way Qt sees a
    user drag (the handle held down, its position moved, then let go), or a function
    taking the value; ``widget`` the dock whose result to wait for (None for a control
    with nothing to wait for).
    """
    from qtpy.QtCore import QTimer

    runner = widget.runner if widget is not None else None
    reports = []
    if runner is not None:
        runner.events.idle.connect(lambda *_: reports.append(runner.last_report))
    qslider = None
    if not callable(slider):  # an AutoValue: positions of its QSlider, held down
        qslider = slider.qslider
        low, high = qslider.minimum(), qslider.maximum()
        values = np.rint(low + (high - low) * np.asarray(values)).astype(int)
        qslider.setSliderDown(True)
    steps = iter(values)
    timer = QTimer()
    done = []

    def step() -> None:
        value = next(steps, None)
        if value is None:
            timer.stop()
            if qslider is not None:
                qslider.setSliderDown(False)  # let go
            done.append(time.perf_counter())
        elif qslider is None:
            slider(float(value))
        else:
            qslider.setSliderPosition(int(value))

    timer.timeout.connect(step)
    start = time.perf_counter()
    timer.start(16)
    pump_until(lambda: bool(done))
    if runner is None:  # a control: nothing to wait for
        pump(SETTLE_S)
        phases.add(case, phase, start, done[0])
        return
    pump(0.4)  # longer than every debounce
    pump_until(lambda: runner.idle)
    end = time.perf_counter() + SETTLE_S
    pump(SETTLE_S)
    runner.events.idle.disconnect()
    slices = [s for report in reports if report is not None for s in report.slices_ms]
    phases.add(case, f"{phase}: moving", start, done[0])
    phases.add(case, f"{phase}: let go, result shown", done[0], end, slices)


# -- cases ----------------------------------------------------------------------------


def case_pair(viewer, phases: Phases, options) -> None:
    """The shipped sample pair, side by side, tiny model: both widgets."""
    from napari_corrseg._widgets import CorrespondenceWidget, CosegmentationWidget
    from napari_corrseg.files.sample_data import load_sample_pair

    case = "sample pair (2 x 256 px)"
    first, second = load_sample_pair()
    source = viewer.add_image(first, name="sample A", rgb=True)
    target = viewer.add_image(second, name="sample B", rgb=True, translate=(0, 272))
    pump(0.5)
    start = time.perf_counter()
    pump(1.0)
    phases.add(case, "control: idle viewer", start, time.perf_counter())
    opacity = np.concatenate([np.linspace(1.0, 0.2, 45), np.linspace(0.2, 1.0, 45)])
    drag(phases, case, None, lambda v: setattr(source, "opacity", v), opacity,
         "control: drag napari's opacity slider")  # fmt: skip
    matcher = CorrespondenceWidget(viewer)
    viewer.window.add_dock_widget(matcher, name="Correspondence", area="right")
    matcher.settings.model.value = "tiny"
    matcher.source.value, matcher.target.value = source, target
    matcher.show_lines.value = True
    pump(0.5)

    def start_matcher():
        return matcher.run(start_thread=False)

    timed_run(phases, case, matcher, start_matcher,
              "Correspondence first run: import torch, load model",
              "Correspondence results arrive: cold (layers created)")  # fmt: skip
    for repeat in range(options.repeats):
        matcher.settings.seed.value = 100 + repeat  # new maps: the model runs
        timed_run(phases, case, matcher, start_matcher, "Correspondence run",
                  "Correspondence results arrive: warm")  # fmt: skip
        drag(phases, case, matcher, matcher.confidence,
             np.linspace(0.0, 0.9, 90)[:: 1 if repeat % 2 == 0 else -1],
             "drag confidence slider")  # fmt: skip
    viewer.window.remove_dock_widget(matcher.native)

    coseg = CosegmentationWidget(viewer)
    viewer.window.add_dock_widget(coseg, name="Co-segmentation", area="right")
    coseg.settings.model.value = "tiny"
    coseg.images.value = [source, target]
    pump(0.5)

    def start_coseg():
        return coseg.run(start_thread=False)

    timed_run(phases, case, coseg, start_coseg, "Co-segmentation run",
              "Co-segmentation results arrive: cold")  # fmt: skip
    coseg.threshold.auto.value = False
    pump_until(lambda: coseg.runner.idle)
    for repeat in range(options.repeats):
        coseg.settings.seed.value = 200 + repeat
        timed_run(phases, case, coseg, start_coseg, "Co-segmentation run",
                  "Co-segmentation results arrive: warm")  # fmt: skip
        fractions = np.linspace(0.1, 0.6, 90)[:: 1 if repeat % 2 == 0 else -1]  # 0.003-0.3
        drag(phases, case, coseg, coseg.threshold, fractions, "drag threshold slider")
    viewer.window.remove_dock_widget(coseg.native)


def browse(phases: Phases, case: str, widget, action: Callable, count: int, interval: float,
           phase: str) -> None:  # fmt: skip
    """Do ``action`` (a button press) ``count`` times, ``interval`` seconds apart, then
    wait until everything it asked for is shown."""
    runner = widget.runner
    reports = []
    runner.events.idle.connect(lambda *_: reports.append(runner.last_report))
    start = time.perf_counter()
    for _ in range(count):
        action()
        pump(interval)
    pump_until(lambda: runner.idle)
    end = time.perf_counter() + SETTLE_S
    pump(SETTLE_S)
    runner.events.idle.disconnect()
    slices = [s for report in reports if report is not None for s in report.slices_ms]
    phases.add(case, phase, start, end, slices)


def case_collection(viewer, phases: Phases, options) -> None:
    """A folder of variants of the sample pair (256 px), tiny model: the Collection widget
    loads it (fills the token store), proposes the keypoints of image 0 on the others,
    is browsed and reviewed, co-segments the collection and saves the session."""
    import types

    from qtpy.QtWidgets import QSlider

    from napari_corrseg._widgets import CollectionWidget
    from napari_corrseg._widgets._screenshots import write_sample_collection
    from napari_corrseg._widgets._tags import find_result
    from napari_corrseg.files.sample_data import sample_keypoints

    n = options.collection_images
    case = f"collection ({n} x 256 px)"
    viewer.layers.clear()  # the collection on its own, as a user would open it
    work = tempfile.mkdtemp(prefix="bench-widgets-collection-")
    write_sample_collection(os.path.join(work, "images"), n)
    widget = CollectionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Collection", area="right")
    widget.settings.model.value = "tiny"
    widget.form.store.value = os.path.join(work, "store")
    widget.form.folder.value = os.path.join(work, "images")
    widget.ask_unsaved = lambda message: "discard"
    pump(0.5)
    timed_run(phases, case, widget, lambda: widget.load(start_thread=False),
              "Collection load: fill the token store",
              "Collection results arrive: first image")  # fmt: skip
    points = find_result(viewer, widget="collection", role="collection:points")
    points.add(sample_keypoints()[0])  # what a user clicks on image 0
    timed_run(phases, case, widget, lambda: widget.propose(start_thread=False),
              f"Collection propose on {n - 1} images", "Collection proposals arrive")  # fmt: skip
    browse(phases, case, widget, widget.form.next_button.clicked.emit, 20, 0.25,
           "browse: next, 4 presses a second")  # fmt: skip
    browse(phases, case, widget, widget.accept, min(10, n // 4), 0.4,
           "review: accept, least confident shown")  # fmt: skip
    image_slider = types.SimpleNamespace(
        qslider=widget.form.image_slider.native.findChildren(QSlider)[0]
    )
    for repeat in range(options.repeats):
        drag(phases, case, widget, image_slider,
             np.linspace(0.0, 1.0, 90)[:: 1 if repeat % 2 == 0 else -1],
             "drag image slider")  # fmt: skip
    timed_run(phases, case, widget, lambda: widget.cosegment(start_thread=False),
              "Collection co-segment", "Collection co-segmentation arrives")  # fmt: skip
    widget.form.threshold.auto.value = False  # re-segments once at the value shown
    pump_until(lambda: widget.runner.idle)
    for repeat in range(options.repeats):
        fractions = np.linspace(0.2, 0.5, 90)[:: 1 if repeat % 2 == 0 else -1]
        drag(phases, case, widget, widget.form.threshold, fractions, "drag threshold slider")
    widget.form.out.value = os.path.join(work, "session")
    timed_run(phases, case, widget, lambda: widget.save(start_thread=False),
              f"Collection save ({n} images)", "Collection saved: status shown")  # fmt: skip
    viewer.window.remove_dock_widget(widget.native)


#: name -> case function.
CASES = {"pair": case_pair, "collection64": case_collection}


# -- interactive query (as before) ----------------------------------------------------


def _synthetic_maps(grid: tuple[int, int], size: int):
    from napari_corrseg.core.maps import AttentionMaps, ImageGeometry
    from napari_corrseg.synthetic.warps import make_pair, translation

    pair = make_pair(grid, translation((0, 2)), temperature=0.7, seed=0)
    maps = {(0, 0): pair.a_ss, (1, 1): pair.a_tt, (0, 1): pair.a_st, (1, 0): pair.a_ts}
    geometry = ImageGeometry((size, size), grid)
    return AttentionMaps(grid, [geometry, geometry], maps, {})


def bench_query(viewer, repeats: int) -> list[tuple]:
    """Click-to-layers time of the interactive query on 512 px images."""
    from napari_corrseg._widgets import CorrespondenceWidget
    from napari_corrseg.tasks import pipeline

    image = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    a = viewer.add_image(image, name="A", rgb=True)
    b = viewer.add_image(image, name="B", rgb=True, translate=(0, 530))
    widget = CorrespondenceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    rows = []
    for grid in [(32, 32), (64, 64)]:
        widget.maps = _synthetic_maps(grid, 512)
        widget.pair_layers = (a, b)
        widget.result = pipeline.match_images(widget.maps, 0, 1, max_matches=100)
        clicks = np.random.default_rng(1).uniform(0, 511, (repeats + 1, 2))
        widget.query_at(clicks[0])  # creates the layers
        pump(0.2)
        core, total = [], []
        for click in clicks[1:]:
            start = time.perf_counter()
            pipeline.query_point(widget.maps, 0, 1, click)
            core.append(time.perf_counter() - start)
            start = time.perf_counter()
            widget.query_at(click)
            pump(0.0)
            total.append(time.perf_counter() - start)
        rows.append((grid[0] * grid[1], 1000 * np.median(core), 1000 * np.median(total),
                     1000 * np.max(total)))  # fmt: skip
    viewer.window.remove_dock_widget(widget.native)
    pump(0.2)  # the dock notices it was closed
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description="napari widget responsiveness benchmark")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs and drags per widget")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--query-repeats", type=int, default=20)
    parser.add_argument(
        "--collection-images", type=int, default=64, help="images of the collection case"
    )
    options = parser.parse_args()
    os.environ.setdefault("NAPARI_CORRSEG_CACHE_DIR", tempfile.mkdtemp(prefix="bench-widgets-"))
    ensure_display("1600x1000x24")
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    pump(1.0)
    ticker = Ticker()
    phases = Phases(ticker)
    for name in options.cases.split(","):
        CASES[name](viewer, phases, options)
    viewer.layers.clear()
    query = bench_query(viewer, options.query_repeats)
    viewer.close()

    print("| case | phase | n | seconds | ticks | lateness max (ms) | p95 (ms) "
          "| longest plugin GUI slice (ms) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in phases.rows:
        grouped.setdefault((row["case"], row["phase"]), []).append(row)
    for (case, phase), rows in grouped.items():
        slices = [r["slice"] for r in rows if np.isfinite(r["slice"])]
        print(
            f"| {case} | {phase} | {len(rows)} | {np.mean([r['seconds'] for r in rows]):.2f} "
            f"| {sum(r['ticks'] for r in rows)} | {max(r['max'] for r in rows):.0f} "
            f"| {max(r['p95'] for r in rows):.1f} "
            f"| {max(slices) if slices else float('nan'):.0f} |"
        )
    print()
    print("| N | query: pipeline only (ms) | query: click to layers updated (ms, median / max) |")
    print("|---|---|---|")
    for n, core, median, worst in query:
        print(f"| {n} | {core:.1f} | {median:.0f} / {worst:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
