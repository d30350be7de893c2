"""Time and peak extra memory of segment and cosegment on synthetic attention.

Run once, on a quiet machine, from the repository root::

    .venv/bin/python benchmarks/bench_segmentation.py

Prints a Markdown table. Time is the median of ``--repeats`` calls (wall clock); memory is
the peak of numpy allocations traced by tracemalloc during one call above what was
allocated before it (the input maps are not counted). Quality (ARI against the known
regions) is printed beside it so that a speed-up that breaks the result shows.
Targets (issue 4): `segment` at 64x64 (N = 4096, 256 anchors) under 1 s on CPU.

``--threshold-study`` instead checks the automatic threshold against every fixed one:
45 synthetic cases (5 attention styles x 3 grid sizes x 3 region layouts); it reports
how many cases "auto" gets right (ARI >= 0.9) and which fixed thresholds, on a log grid
from 0.01 to 10, would get all of them right.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np

from napari_corrseg.collection.cosegment import cosegment
from napari_corrseg.core.cosegmentation import propagate_labels
from napari_corrseg.core.evaluation import adjusted_rand_index
from napari_corrseg.core.segmentation import segment
from napari_corrseg.synthetic.regions import (
    attention_from_labels,
    moving_collection,
    region_scene,
)

#: (region affinity, logit noise, distance decay) of the threshold study's attention styles
STUDY_STYLES = [
    (3.0, 1.0, 0.4),
    (2.0, 0.5, 0.4),
    (4.0, 1.0, 0.4),
    (3.0, 1.5, 0.3),
    (1.5, 0.5, 0.5),
]


def measure(function: Callable[[], object], repeats: int) -> tuple[float, float, int, object]:
    """Median wall and CPU seconds over ``repeats`` calls, peak traced bytes of one call,
    and its result. CPU time (all threads) is less disturbed by other processes."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    result = function()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        function()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return statistics.median(times), statistics.median(cpu_times), peak, result


def threshold_study() -> None:
    """Print how often "auto" is right and which fixed thresholds are always right."""
    candidates = np.geomspace(0.01, 10, 61)
    always_right = np.ones(candidates.size, dtype=bool)
    auto_right, total = 0, 0
    for affinity, noise, decay in STUDY_STYLES:
        for side in (16, 32, 48):
            for kind in ("blocks", "voronoi", "split"):
                truth = region_scene(kind, (side, side), seed=0).labels
                attention = attention_from_labels(
                    truth, affinity=affinity, noise=noise, decay=decay, seed=11
                )
                auto = segment(attention, truth.shape)
                total += 1
                auto_right += adjusted_rand_index(auto.labels, truth) >= 0.9
                for k in np.flatnonzero(always_right):
                    fixed = segment(attention, truth.shape, threshold=candidates[k])
                    always_right[k] = adjusted_rand_index(fixed.labels, truth) >= 0.9
    print(f"auto threshold right (ARI >= 0.9) in {auto_right} of {total} cases")
    print(f"fixed thresholds right in every case: {np.round(candidates[always_right], 3)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threshold-study", action="store_true")
    args = parser.parse_args()
    if args.threshold_study:
        threshold_study()
        return

    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    rows = []
    for side in (32, 64):
        scene = region_scene("voronoi", (side, side), seed=0)
        n = side * side
        seconds, cpu, peak, result = measure(
            lambda s=scene: segment(s.attention, s.grid), args.repeats
        )
        ari = adjusted_rand_index(result.labels, scene.labels)
        rows.append(
            (
                f"segment {side}x{side}",
                n,
                "1 image, 256 anchors",
                seconds,
                cpu,
                peak,
                n,
                f"ARI {ari:.3f}",
            )
        )

    for n_images in (2, 8):
        col = moving_collection(n_images, (32, 32), seed=1)
        seconds, cpu, peak, result = measure(
            lambda c=col: cosegment(c.self_maps, c.cross_maps, (32, 32)), args.repeats
        )
        ari = adjusted_rand_index(np.stack(result.labels), np.stack(col.labels))
        anchors = 16 if n_images == 2 else int(np.sqrt(512 / n_images))
        rows.append(
            (
                f"cosegment {n_images} images 32x32",
                1024,
                f"{n_images} images, {anchors}x{anchors} anchors each",
                seconds,
                cpu,
                peak,
                1024,
                f"joint ARI {ari:.3f}, unmatched {result.unmatched}",
            )
        )

    scene = region_scene("blocks", (64, 64), seed=0)
    seconds, cpu, peak, _ = measure(
        lambda: propagate_labels(scene.labels, scene.attention, (64, 64)), args.repeats
    )
    rows.append(("propagate_labels 64x64", 4096, "6 labels", seconds, cpu, peak, 4096, "-"))

    print(f"Machine: {platform.node()} {platform.machine()} {platform.processor() or ''}")
    print(f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; numpy {np.__version__}\n")
    print(f"Load average before the run: {load_before}\n")
    print(
        "| call | N | input | median wall (s) | median CPU (s) | peak extra memory "
        "| in N^2 float32 | quality |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, n, what, seconds, cpu, peak, n_tok, quality in rows:
        mib = peak / 2**20
        print(
            f"| {name} | {n} | {what} | {seconds:.3f} | {cpu:.3f} | {mib:.1f} MiB | "
            f"{peak / (4 * n_tok * n_tok):.2f} | {quality} |"
        )


if __name__ == "__main__":
    main()
