"""Time and peak extra memory of the correspondence functions on synthetic maps.

Run once, on a quiet machine, from the repository root::

    .venv/bin/python benchmarks/bench_correspondence.py

``--reliability`` adds the precision / recall table of the automatic reliability cut
against fixed cuts (0.1, 0.3, 0.5) per warp kind (issue 15), and ``--choices`` the
comparison of the paper's open choices (layers, eq. 2.3, NIMS's direction) on synthetic
per-head scores; both are written to ``benchmarks/results/correspondence_reliability.md``.

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
from napari_corrseg.core.partition import head_average
from napari_corrseg.synthetic.cases import GOAL_WARPS, goal_pair, occlusion_box, score_matches
from napari_corrseg.synthetic.heads import head_scores
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


#: Fixed cuts the automatic one is compared with.
FIXED_CUTS = (0.1, 0.3, 0.5)
RELIABILITY_NOISE = (0.3, 0.5, 0.8)
RESULTS = "benchmarks/results/correspondence_reliability.md"
PREDICTION = (
    "Predicted before this run (from development runs on 16-32 side grids): the auto cut "
    "lands near 0.05-0.08 and meets the goal at noise 0.3 and 0.5 on every seed (P >= 0.98, "
    "R 0.92-0.99), but not at noise 0.8 (P ~0.94, R ~0.80: there the confidence itself "
    "cannot rank well enough, no cut can); a fixed 0.1 is close to auto at noise 0.5 but "
    "loses recall where the auto cut is lower (noise 0.3, shift), 0.3 keeps a third of the "
    "matchable tokens, 0.5 almost none. Choices: averaging three layers beats one middle "
    "layer clearly at this noise, the coarse layers add nothing (slightly worse), eq. 2.3 "
    "is no better than separate softmaxes, NIMS read the paper's way is below chance."
)


def reliability_table(seeds: int = 5, side: int = 32) -> list[str]:
    """Precision / recall of "auto" and the fixed cuts per warp kind and noise level:
    mean over ``seeds`` pairs, worst pair in brackets (goal: >= 0.95 / >= 0.80)."""
    header = "| warp | cut | " + " | ".join(f"noise {n:g}: P / R" for n in RELIABILITY_NOISE)
    rows = [header + " |", "|---|---|" + "---|" * len(RELIABILITY_NOISE)]
    chosen = {}
    for name in GOAL_WARPS:
        scores = {cut: {noise: [] for noise in RELIABILITY_NOISE} for cut in ("auto", *FIXED_CUTS)}
        for noise in RELIABILITY_NOISE:
            for seed in range(seeds):
                pair = goal_pair(name, (side, side), seed, noise=noise)
                inv = inverse_mapping(pair.a_st, pair.a_ts, pair.grid)
                for cut in scores:
                    found = match(pair.a_st, pair.a_ts, pair.grid, min_confidence=cut, inverse=inv)
                    scores[cut][noise].append(
                        score_matches(pair, found.source_token, found.target)
                    )
                    if cut == "auto":
                        chosen.setdefault((name, noise), []).append(found.min_confidence)
        for cut, by_noise in scores.items():
            cells = []
            for noise in RELIABILITY_NOISE:
                p = [s.precision for s in by_noise[noise]]
                r = [s.recall for s in by_noise[noise]]
                cells.append(f"{np.mean(p):.3f} ({min(p):.3f}) / {np.mean(r):.3f} ({min(r):.3f})")
            label = "auto" if cut == "auto" else f"{cut:g}"
            rows.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    cuts = ", ".join(f"{name} {np.mean(chosen[(name, 0.5)]):.3f}" for name in GOAL_WARPS)
    rows += ["", f"Mean automatic cut at noise 0.5 ({side}x{side}): {cuts}."]
    return rows


def _recipe_maps(layers, partition):
    st = np.mean([head_average(x.cross_st, x.own_s, partition) for x in layers], axis=0)
    ts = np.mean([head_average(x.cross_ts, x.own_t, partition) for x in layers], axis=0)
    return st / st.sum(axis=1, keepdims=True), ts / ts.sum(axis=1, keepdims=True)


def choices_table(seeds: int = 3, side: int = 24, noise: float = 2.0) -> list[str]:
    """The paper's open choices on synthetic per-head scores (`synthetic.heads`): three
    layers (independent draws) plus three coarse ones, 8 heads of which half look at
    their own image only; mean over the goal warps and ``seeds``."""
    grid = (side, side)
    results: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    for warp in GOAL_WARPS.values():
        for seed in range(seeds):
            box = occlusion_box(grid, 0.3, seed=1000 + seed)
            fine = [
                head_scores(grid, warp, occlusion=box, noise=noise, seed=10 * seed + k)
                for k in range(3)
            ]
            coarse = [
                head_scores(
                    grid, warp, occlusion=box, noise=noise, seed=10 * seed + 5 + k, coarse=True
                )
                for k in range(3)
            ]
            for partition in ("separate", "joint"):
                for layers in ("middle", "average", "coarse+average"):
                    if layers == "middle":
                        st, ts = _recipe_maps(fine[1:2], partition)
                    elif layers == "average":
                        st, ts = _recipe_maps(fine, partition)
                    else:
                        coarse_st, coarse_ts = _recipe_maps(coarse, partition)
                        fine_st, fine_ts = _recipe_maps(fine, partition)
                        grids = [coarse[0].grid, grid]
                        st = aggregate_attention([coarse_st, fine_st], grids)
                        ts = aggregate_attention([coarse_ts, fine_ts], grids)
                    truth = fine[0]
                    inv = inverse_mapping(st, ts, grid)
                    every = match(st, ts, grid, min_confidence=0, inverse=inv)
                    kept = match(st, ts, grid, inverse=inv)
                    every_score = score_matches(truth, every.source_token, every.target)
                    kept_score = score_matches(truth, kept.source_token, kept.target)
                    error = np.linalg.norm(
                        every.target - truth.true_target[every.source_token], axis=1
                    )
                    correct = (error <= 1.0) & truth.visible[every.source_token]
                    nims = np.nan_to_num(inv.nims[every.target_token], nan=-np.inf)
                    results.setdefault((layers, partition), []).append(
                        (
                            every_score.recall,
                            kept_score.precision,
                            kept_score.recall,
                            auroc(every.confidence, correct),
                            auroc(nims, correct),
                        )
                    )
    rows = [
        "| layers | partition | matchable tokens matched right | auto cut P | auto cut R | "
        "AUROC confidence | AUROC NIMS (high = good) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (layers, partition), values in results.items():
        mean = np.mean(values, axis=0)
        rows.append(f"| {layers} | {partition} | " + " | ".join(f"{v:.3f}" for v in mean) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 64, 96])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quality", action="store_true", help="also print the confidence-ranking (AUROC) table"
    )
    parser.add_argument(
        "--reliability", action="store_true", help="the auto cut vs fixed cuts (issue 15)"
    )
    parser.add_argument(
        "--choices", action="store_true", help="layers / eq. 2.3 / NIMS on per-head scores"
    )
    parser.add_argument("--no-timing", action="store_true", help="skip the time and memory table")
    args = parser.parse_args()
    if args.reliability or args.choices:
        _reliability_report(args.reliability, args.choices)
    if args.no_timing:
        return

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


def _reliability_report(reliability: bool, choices: bool) -> None:
    import os
    from pathlib import Path

    lines = [
        "# Reliability cut and the paper's open choices (issue 15)",
        "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, numpy {np.__version__}; load "
        f"average {os.getloadavg()[0]:.1f} at the start. Command: `python "
        "benchmarks/bench_correspondence.py --reliability --choices --no-timing`.",
        "",
    ]
    lines += [PREDICTION, ""]
    if reliability:
        started = time.perf_counter()
        lines += [
            "## Automatic reliability cut vs fixed cuts",
            "",
            "Synthetic pairs (`napari_corrseg.synthetic.cases`): 32x32 tokens, 30 % of the "
            "target hidden by a box at a random place, temperature 0.9, logit noise as in "
            "the columns, 5 seeds. P = share of returned matches within one token of the "
            "truth, R = share of matchable source tokens returned and right; mean over the "
            "seeds, worst seed in brackets. Goal: P >= 0.95 and R >= 0.80 on every seed.",
            "",
            *reliability_table(),
        ]
        print("\n".join(lines[-30:]), flush=True)
        lines.append(f"\n({time.perf_counter() - started:.0f} s)\n")
    if choices:
        started = time.perf_counter()
        lines += [
            "## Layers, eq. 2.3 and NIMS on synthetic per-head scores",
            "",
            "`napari_corrseg.synthetic.heads`: 24x24 tokens, 8 heads per layer (4 content "
            "heads, 4 that attend to their own image), per-head logit noise 2.0, 30 % "
            "occlusion, the four warp kinds x 3 seeds, means.",
            "",
            *choices_table(),
        ]
        print("\n".join(lines[-10:]), flush=True)
        lines.append(f"\n({time.perf_counter() - started:.0f} s)\n")
    Path(RESULTS).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
