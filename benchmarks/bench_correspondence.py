"""Time and peak extra memory of the correspondence functions on synthetic maps.

Run once, on a quiet machine, from the repository root::

    .venv/bin/python benchmarks/bench_correspondence.py

Prints a Markdown table. Time is the median of ``--repeats`` calls (wall clock); memory is
the peak of numpy allocations traced by tracemalloc during one call, above what was
allocated before it, in bytes and in units of ``N^2`` float32 values (the input maps
themselves are not counted). Targets (issue 3): at N = 4096, `inverse_mapping` + `match`
under 0.5 s and under 4 N^2 floats extra; `query` under 10 ms.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
from scipy.stats import rankdata

from napari_corrseg.core.correspondence import (
    aggregate_attention,
    inverse_mapping,
    match,
    query,
    transfer_points,
)
from napari_corrseg.synthetic.warps import (
    identity,
    make_pair,
    scaling,
    smooth_warp,
    translation,
)

# (warp, occluded target box, logit noise) of the confidence-ranking study, 32x32 grids
QUALITY_CASES = [
    (identity(), (8, 8, 22, 22), 0.5),
    (translation((3.0, 2.0)), (0, 16, 32, 32), 0.8),
    (smooth_warp(1.5, seed=1), (10, 0, 24, 18), 1.0),
    (scaling(0.8), (4, 18, 14, 28), 0.6),
    (scaling(1.25), (4, 4, 16, 28), 0.8),
]


def measure(function: Callable[[], object], repeats: int) -> tuple[float, int]:
    """Median wall time (s) over ``repeats`` calls and peak traced extra bytes of one."""
    function()  # warm up caches and lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    function()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(times), peak - base


def bench_grid(side: int, repeats: int) -> list[str]:
    """Table rows for one ``side x side`` grid."""
    grid = (side, side)
    n = side * side
    pair = make_pair(
        grid,
        smooth_warp(2.0),
        temperature=1.0,
        noise=0.3,
        occlusion=(0, 0, side // 4, side // 4),
        self_attention=False,
    )
    a_st, a_ts = pair.a_st, pair.a_ts
    inverse = inverse_mapping(a_st, a_ts, grid)
    rng = np.random.default_rng(0)
    point = rng.uniform(0, side - 1, size=2)
    keypoints = rng.uniform(0, side - 1, size=(20, 2))
    half = make_pair(
        (side // 2, side // 2), smooth_warp(1.0), temperature=1.0, self_attention=False
    ).a_st
    cases = {
        "inverse_mapping": lambda: inverse_mapping(a_st, a_ts, grid),
        "match (computes inverse_mapping)": lambda: match(a_st, a_ts, grid),
        "match, max_matches=500, given inverse": lambda: match(
            a_st, a_ts, grid, max_matches=500, inverse=inverse
        ),
        "query (one point)": lambda: query(a_st, point, grid),
        "transfer_points (20 points)": lambda: transfer_points(keypoints, a_st, a_ts, grid),
        "aggregate_attention (side/2 + side grids)": lambda: aggregate_attention(
            [half, a_st], [(side // 2, side // 2), grid]
        ),
    }
    rows = []
    for name, function in cases.items():
        seconds, extra = measure(function, repeats)
        shown = f"{seconds * 1e3:.2f} ms" if seconds < 0.1 else f"{seconds:.3f} s"
        rows.append(
            f"| {name} | {side}x{side} | {n} | {shown} | {extra / 2**20:.1f} MiB | "
            f"{extra / (4 * n * n):.2f} |"
        )
    return rows


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count 1/2)."""
    ranks = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def quality_table(seeds: int = 3) -> list[str]:
    """AUROC of each reliability signal for "match within 1 cell of the truth", averaged
    over `QUALITY_CASES` and ``seeds`` noise draws (higher is better, 0.5 is chance)."""
    names = [
        "confidence (cycle x entropy x density)",
        "hard cycle error (low = good)",
        "soft cycle error (low = good)",
        "forward entropy H(A_st[i]) (low = good)",
        "IME at f(i) (low = good)",
        "MD at f(i) (low = good)",
        "NIMS at f(i) (high = good, the paper's reading)",
    ]
    per_case = []
    for warp, occlusion, noise in QUALITY_CASES:
        scores = {name: [] for name in names}
        for seed in range(seeds):
            pair = make_pair(
                (32, 32), warp, temperature=0.9, noise=noise, occlusion=occlusion, seed=seed
            )
            inv = inverse_mapping(pair.a_st, pair.a_ts, pair.grid)
            found = match(pair.a_st, pair.a_ts, pair.grid, inverse=inv)
            error = np.linalg.norm(found.target - pair.true_target, axis=1)
            correct = (error <= 1.0) & pair.visible
            signals = [
                inv.confidence,
                -inv.cycle_error,
                -inv.soft_cycle_error,
                -inv.forward_entropy,
                -inv.entropy[inv.forward],
                -inv.density[inv.forward].astype(float),
                np.nan_to_num(inv.nims[inv.forward]),
            ]
            for name, signal in zip(names, signals, strict=True):
                scores[name].append(auroc(signal, correct))
        per_case.append((warp.name, {k: float(np.mean(v)) for k, v in scores.items()}))
    header = "| signal | " + " | ".join(name for name, _ in per_case) + " | mean |"
    rows = [header, "|---|" + "---:|" * (len(per_case) + 1)]
    for name in names:
        values = [case[name] for _, case in per_case]
        cells = " | ".join(f"{v:.3f}" for v in values)
        rows.append(f"| {name} | {cells} | {np.mean(values):.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 64, 96])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quality", action="store_true", help="also print the confidence-ranking (AUROC) table"
    )
    args = parser.parse_args()

    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, numpy {np.__version__}")
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n")
    print("| operation | grid | N | time | peak extra memory | extra / N² float32 |")
    print("|---|---|---:|---:|---:|---:|")
    for side in args.sides:
        for row in bench_grid(side, args.repeats):
            print(row)
    if args.quality:
        print("\nAUROC of each signal for correct matches (32x32, occlusion, 3 seeds):\n")
        for row in quality_table():
            print(row)


if __name__ == "__main__":
    main()
