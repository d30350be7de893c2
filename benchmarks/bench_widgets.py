"""How fast the napari widgets answer: click query, display changes, GUI responsiveness.

    .venv/bin/python benchmarks/bench_widgets.py [--repeats 20]

Measures, in one run, on a shown napari viewer (re-runs itself under ``xvfb-run`` when
there is no display):

- interactive query: the time from the mouse callback to the heatmap and best-match
  layers being updated (`CorrespondenceWidget.query_at`), at N = 1024 and N = 4096;
- a display change (number of matches): re-matching from the cached maps and updating
  the layers in place (`CorrespondenceWidget._rematch`), same grids;
- the Qt event loop's longest gap (a 10 ms QTimer) while the worker runs the tiny model
  three times in a row, against the gap when the same work runs on the GUI thread.

Maps come from `napari_corrseg.synthetic` (timing does not depend on their values).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_corrseg.cli.display import ensure_display


def _pump(seconds: float = 0.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    QApplication.processEvents()
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.002)


def _synthetic_maps(grid: tuple[int, int], size: int):
    from napari_corrseg.core.maps import AttentionMaps, ImageGeometry
    from napari_corrseg.synthetic.warps import make_pair, translation

    pair = make_pair(grid, translation((0, 2)), temperature=0.7, seed=0)
    maps = {(0, 0): pair.a_ss, (1, 1): pair.a_tt, (0, 1): pair.a_st, (1, 0): pair.a_ts}
    geometry = ImageGeometry((size, size), grid)
    return AttentionMaps(grid, [geometry, geometry], maps, {})


def bench_interaction(viewer, widget, grid, repeats: int) -> dict[str, float]:
    from napari_corrseg import pipeline

    size = 512
    widget.maps = _synthetic_maps(grid, size)
    widget.pair_layers = (viewer.layers["A"], viewer.layers["B"])
    widget.result = pipeline.match_images(widget.maps, 0, 1, max_matches=100)
    widget._show_result()
    rng = np.random.default_rng(0)
    clicks = rng.uniform(0, size - 1, (repeats + 1, 2))
    widget.query_at(clicks[0])  # first call creates the layers
    query_core, query_total = [], []
    for click in clicks[1:]:
        start = time.perf_counter()
        pipeline.query_point(widget.maps, 0, 1, click)
        query_core.append(time.perf_counter() - start)
        start = time.perf_counter()
        widget.query_at(click)
        _pump()
        query_total.append(time.perf_counter() - start)
    rematch = []
    for k in range(max(3, repeats // 4)):
        widget.n_matches.blockSignals(True)
        widget.n_matches.setValue(100 + (k % 2) * 20)
        widget.n_matches.blockSignals(False)
        start = time.perf_counter()
        widget._rematch()
        _pump()
        rematch.append(time.perf_counter() - start)
    return {
        "query_core_ms": 1000 * float(np.median(query_core)),
        "query_total_ms": 1000 * float(np.median(query_total)),
        "query_total_max_ms": 1000 * float(np.max(query_total)),
        "rematch_ms": 1000 * float(np.median(rematch)),
    }


def _longest_gap(work) -> tuple[float, float]:
    """Run ``work(done)`` while a 10 ms timer ticks; return (longest gap, duration) s."""
    from qtpy.QtCore import QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    _pump(0.1)
    start = time.perf_counter()
    finished = []
    work(lambda: finished.append(time.perf_counter()))
    while not finished:
        _pump(0.005)
    timer.stop()
    end = finished[0]
    inside = [t for t in ticks if start <= t <= end]
    return float(np.max(np.diff([start, *inside, end]))), end - start


def bench_responsiveness(images) -> dict[str, float]:
    from napari.qt.threading import create_worker

    from napari_corrseg.engine import load_engine

    engine = load_engine("tiny", device="cpu")
    engine.extract(images)  # warm up

    def job():
        for seed in range(3):
            engine.extract(images, seed=seed)

    def in_worker(done):
        worker = create_worker(job, _start_thread=False)
        worker.finished.connect(done)
        worker.start()

    def on_gui_thread(done):
        job()
        done()

    worker_gap, worker_time = _longest_gap(in_worker)
    gui_gap, gui_time = _longest_gap(on_gui_thread)
    return {
        "worker_gap_ms": 1000 * worker_gap,
        "worker_s": worker_time,
        "gui_thread_gap_ms": 1000 * gui_gap,
        "gui_thread_s": gui_time,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="napari widget latency benchmark")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    ensure_display("1600x1000x24")
    import napari

    from napari_corrseg._widgets import CorrespondenceWidget

    viewer = napari.Viewer(show=True)
    image = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    viewer.add_image(image, name="A", rgb=True)
    viewer.add_image(image, name="B", rgb=True, translate=(0, 530))
    widget = CorrespondenceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    _pump(0.5)
    rows = []
    for grid in [(32, 32), (64, 64)]:
        result = bench_interaction(viewer, widget, grid, args.repeats)
        rows.append((grid, result))
    responsiveness = bench_responsiveness([image[:256, :256], image[256:, 256:]])
    viewer.close()

    print("| N | query: pipeline only (ms) | query: click to layers updated (ms, median / max) "
          "| display change: re-match + layers (ms) |")  # fmt: skip
    print("|---|---|---|---|")
    for grid, r in rows:
        print(
            f"| {grid[0] * grid[1]} | {r['query_core_ms']:.1f} | {r['query_total_ms']:.0f} / "
            f"{r['query_total_max_ms']:.0f} | {r['rematch_ms']:.0f} |"
        )
    r = responsiveness
    print()
    print("| tiny model x3 (2 images) | duration (s) | longest event-loop gap (ms) |")
    print("|---|---|---|")
    print(f"| in a napari worker | {r['worker_s']:.2f} | {r['worker_gap_ms']:.0f} |")
    print(f"| on the GUI thread | {r['gui_thread_s']:.2f} | {r['gui_thread_gap_ms']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
