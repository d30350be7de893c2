"""Time and peak memory of co-segmentation and transfer over collections of 16 to 1,024 images.

Run once, on a machine as quiet as you can find, from the repository root::

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_collection.py

Inputs: `napari_corrseg.synthetic.tokens.TokenCollection` at SD2's 32 x 32 grid with 10
heads of 64 (one layer unless ``--layers``), stored in float16 on disk as the token
store keeps them (a memory-mapped file: maps are formed from tokens read per image, as
from the store). The smaller collections are the first images of the largest one.

Measured per collection size: wall and CPU time of `nc.cosegment(maps)` and of
`nc.transfer_collection` (keypoints and labels of image 0 to every other image), the
peak of memory allocated during the call as traced by tracemalloc (numpy arrays and
Python objects; the memory-mapped tokens are not allocations and are not counted), the
growth per doubling of n, and the quality: worst-image ARI, whether every part has one
id over the collection, the part of image 0 alone flagged, keypoints within one token.
Also: the float16 accuracy cost (maps, matches and co-segmentation from float16 against
float32 tokens) and, for comparison with issue 13's figures, `moving_collection`.
Writes ``benchmarks/results/collection.md``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

import napari_corrseg as nc
from napari_corrseg.core.evaluation import adjusted_rand_index
from napari_corrseg.core.lazy_maps import numpy_attention
from napari_corrseg.synthetic.regions import moving_collection
from napari_corrseg.synthetic.tokens import TokenCollection

GRID = (32, 32)
RESULTS = Path(__file__).parent / "results" / "collection.md"
#: Written before the first run (see docs/benchmarks.md); kept verbatim in the results.
PREDICTION = """\
Predicted before running (2 shared cores, one BLAS thread): a cross map from 10 heads of
64 at 32 x 32 costs about 35 ms, so co-segmentation costs about 0.45 s per image (one
self map, about 9.5 cross maps over ~4.5 links, segmentation and matching): about 7 s at
16 images, 30 s at 64, 2 min at 256 and 8 min at 1,024, a growth of 1.9-2.05x per
doubling. Peak memory is the map cache (16 maps x 4 MiB) plus ~40 KB per image of
segment summaries and link evidence: ~70 MiB at 16 images, ~120 MiB at 1,024, growth
well under 1.3x per doubling. Worst-image ARI 1.0 at every n (maybe 0.99 at 1,024, where
a rare image may lose a few boundary tokens in its own segmentation). Transfer: 2 cross
maps per target, ~80 ms per target, memory flat. Float16 tokens: max |A16 - A32| ~2e-4,
row arg-max and matches agree for > 99.9 % of tokens, identical co-segmentation."""


def _store(collection: TokenCollection, folder: Path):
    """Write every image's float16 tokens to memory-mapped files; return a provider."""
    q0, _ = collection.query_key(0)
    shape = (collection.n_images, *q0.shape)
    queries = np.lib.format.open_memmap(folder / "q.npy", "w+", np.float16, shape)
    keys = np.lib.format.open_memmap(folder / "k.npy", "w+", np.float16, shape)
    for i in range(collection.n_images):
        queries[i], keys[i] = collection.query_key(i)
    queries.flush()
    keys.flush()
    return queries, keys


def _maps(queries, keys, n_images: int):
    return nc.AttentionMaps.from_query_key(
        lambda i: (queries[i], keys[i]), grid=GRID, n_images=n_images
    )


def measure(function):
    """Wall seconds, CPU seconds, peak traced bytes and the result of one call."""
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    start, cpu = time.perf_counter(), time.process_time()
    result = function()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return wall, cpu, peak, result


def _quality(result, collection, n_images) -> dict:
    truths = [collection.labels(i) for i in range(n_images)]
    aris = [adjusted_rand_index(p, t) for p, t in zip(result.labels, truths, strict=True)]
    found: dict[int, set[int]] = {}
    for pred, truth in zip(result.labels, truths, strict=True):
        for part in np.unique(truth):
            values, counts = np.unique(pred[truth == part], return_counts=True)
            found.setdefault(int(part), set()).add(int(values[np.argmax(counts)]))
    one_id = all(len(v) == 1 for v in found.values())
    lone = found[collection.unique_ids[0]]
    return {
        "worst": min(aris),
        "below": sum(a < 0.999 for a in aris),
        "one_id": one_id and len({next(iter(v)) for v in found.values()}) == len(found),
        "lone": len(lone) == 1 and result.unmatched == [next(iter(lone))],
    }


def _keypoints(collection):
    boxes = collection.layout(0).boxes.values()
    centres = [[r + (sh - 1) / 2, c + (sw - 1) / 2] for r, c, sh, sw in boxes]
    return np.array([*centres, [1.0, 1.0], [1.0, 30.0], [30.0, 1.0], [30.0, 30.0]])


def _transfer_quality(result, collection, points) -> float:
    hits, total = 0, 0
    for target, proposal in result.points.items():
        truth = collection.corresponding(0, target, points)
        seen = ~np.isnan(truth[:, 0])
        hits += int((np.abs(proposal.target[seen] - truth[seen]).max(axis=1) <= 1).sum())
        total += int(seen.sum())
    return hits / max(total, 1)


def map_cost(collection) -> dict[int, float]:
    """Median seconds of one cross map from float16 tokens, 1 and 3 layers."""
    out = {}
    for layers in (1, 3):
        q, _ = collection.query_key(0)
        _, k = collection.query_key(1)
        q = np.stack([q] * layers).astype(np.float16)
        k = np.stack([k] * layers).astype(np.float16)
        times = []
        for _ in range(7):
            start = time.perf_counter()
            numpy_attention(q, k)
            times.append(time.perf_counter() - start)
        out[layers] = float(np.median(times))
    return out


def fp16_study(n_images: int = 32) -> dict:
    """What float16 storage of queries and keys costs."""
    full = TokenCollection(n_images, GRID, layers=3, cache_items=8)

    def half(i):
        return tuple(a.astype(np.float16) for a in full.query_key(i))

    worst, worst_row, agree, match_agree, point_shift = 0.0, 0.0, [], [], 0.0
    maps32 = full.maps()
    maps16 = nc.AttentionMaps.from_query_key(half, grid=GRID, n_images=n_images)
    for i in range(0, 20, 2):
        a32, a16 = maps32.cross(i, i + 1), maps16.cross(i, i + 1)
        b32, b16 = maps32.cross(i + 1, i), maps16.cross(i + 1, i)
        worst = max(worst, float(np.abs(a32 - a16).max()))
        worst_row = max(worst_row, float(np.abs(a32 - a16).sum(axis=1).max()))
        agree.append(np.mean(a32.argmax(1) == a16.argmax(1)))
        m32, m16 = nc.match(a32, b32, GRID), nc.match(a16, b16, GRID)
        match_agree.append(np.mean(m32.target_token == m16.target_token))
        point_shift = max(point_shift, float(np.abs(m32.target - m16.target).max()))
    co32, co16 = nc.cosegment(maps32), nc.cosegment(maps16)
    same = np.mean([np.array_equal(a, b) for a, b in zip(co32.labels, co16.labels, strict=True)])
    joint = adjusted_rand_index(np.stack(co32.labels), np.stack(co16.labels))
    return {
        "max_abs": worst,
        "max_row_l1": worst_row,
        "argmax": float(np.mean(agree)),
        "match": float(np.mean(match_agree)),
        "shift": point_shift,
        "identical_images": float(same),
        "joint_ari": float(joint),
        "n_images": n_images,
    }


def moving_study(sizes=(4, 16, 32, 64)) -> list[tuple[int, float, bool]]:
    rows = []
    for n_images in sizes:
        scene = moving_collection(n_images, (16, 16), seed=0)
        result = nc.cosegment(scene.self_maps, scene.cross_maps, (16, 16))
        worst = min(
            adjusted_rand_index(p, t) for p, t in zip(result.labels, scene.labels, strict=True)
        )
        rows.append((n_images, worst, len(result.unmatched) == 1))
        del scene
    return rows


def _growth(values: list[float], sizes: list[int]) -> list[str]:
    out = ["-"]
    for k in range(1, len(values)):
        doublings = np.log2(sizes[k] / sizes[k - 1])
        out.append(f"{(values[k] / values[k - 1]) ** (1 / doublings):.2f}x")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--skip-studies", action="store_true", help="no fp16/moving study")
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    started = datetime.now(UTC)
    collection = TokenCollection(max(sizes), GRID)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-collection-") as folder:
        queries, keys = _store(collection, Path(folder))
        costs = map_cost(collection)
        print(f"one cross map: {costs}", flush=True)
        points = _keypoints(collection)
        for n_images in sizes:
            wall, cpu, peak, result = measure(
                lambda n=n_images: nc.cosegment(_maps(queries, keys, n))
            )
            quality = _quality(result, collection, n_images)
            t_wall, t_cpu, t_peak, moved = measure(
                lambda n=n_images: nc.transfer_collection(
                    _maps(queries, keys, n),
                    keypoints={0: points},
                    labels={0: collection.labels(0)},
                )
            )
            rows.append(
                {
                    "n": n_images,
                    "wall": wall,
                    "cpu": cpu,
                    "peak": peak,
                    **quality,
                    "t_wall": t_wall,
                    "t_cpu": t_cpu,
                    "t_peak": t_peak,
                    "t_hits": _transfer_quality(moved, collection, points),
                    "t_first": moved.ranking[0],
                }
            )
            print(rows[-1], flush=True)
    if args.skip_studies:
        fp16 = dict.fromkeys(
            ("max_abs", "max_row_l1", "argmax", "match", "shift", "identical_images"), 0.0
        )
        fp16 |= {"joint_ari": 0.0, "n_images": 0}
        moving = []
    else:
        fp16 = fp16_study()
        print(fp16, flush=True)
        moving = moving_study()
        print(moving, flush=True)
    load_after = " ".join(f"{v:.1f}" for v in os.getloadavg())
    write(args.out, rows, costs, fp16, moving, started, load_before, load_after, sizes)


def write(path, rows, costs, fp16, moving, started, load_before, load_after, sizes) -> None:
    mib = 1 << 20
    n = [r["n"] for r in rows]
    co_time, co_mem = _growth([r["wall"] for r in rows], n), _growth([r["peak"] for r in rows], n)
    co_cpu = _growth([r["cpu"] for r in rows], n)
    tr_time, tr_mem = (
        _growth([r["t_wall"] for r in rows], n),
        _growth([r["t_peak"] for r in rows], n),
    )
    lines = [
        "# Collections: co-segmentation and transfer from 16 to 1,024 images (issue 13)",
        "",
        "Script: `benchmarks/bench_collection.py` (`OPENBLAS_NUM_THREADS=1 PYTHONPATH=src "
        ".venv/bin/python benchmarks/bench_collection.py`).",
        "",
        f"Machine: development VM, 2 cores shared with other sessions ({platform.processor() or platform.machine()}), "  # noqa: E501
        f"numpy {np.__version__}, no GPU, one BLAS thread. Load average (1, 5, 15 min) "
        f"before: {load_before}; after: {load_after}. Date: {started:%Y-%m-%d %H:%M} UTC.",
        "",
        "Inputs: `TokenCollection` at 32 x 32 with 10 heads of 64, one layer, float16 "
        "tokens memory-mapped from disk (as read from the token store); the smaller "
        "collections are the first images of the largest. Time: one call, wall clock and "
        "CPU (this process). Memory: peak allocated during the call (tracemalloc: numpy "
        "and Python objects; the memory-mapped tokens are not counted), tracemalloc on "
        "during the timed call. A cross map from one layer costs "
        f"{costs[1] * 1e3:.0f} ms here, from three layers {costs[3] * 1e3:.0f} ms: with "
        "the store's three 32 x 32 layers every time below grows by about that ratio.",
        "",
        "## Prediction",
        "",
        PREDICTION,
        "",
        "## Co-segmentation (`nc.cosegment(maps)`)",
        "",
        "| images | wall (s) | CPU (s) | wall per image (s) | growth per doubling (wall / CPU) "
        "| peak memory | growth per doubling | worst-image ARI | images below 0.999 | one id "
        "per part | lone part flagged |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, r in enumerate(rows):
        lines.append(
            f"| {r['n']} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['wall'] / r['n']:.3f} | "
            f"{co_time[k]} / {co_cpu[k]} | {r['peak'] / mib:.1f} MiB | {co_mem[k]} | "
            f"{r['worst']:.3f} | {r['below']} | {'yes' if r['one_id'] else 'NO'} | "
            f"{'yes' if r['lone'] else 'NO'} |"
        )
    lines += [
        "",
        "Goal: growth <= 2.2x time and <= 2.1x memory per doubling; worst-image ARI at "
        "every n equal to that at 16 images.",
        "",
        "## Transfer (`nc.transfer_collection`: 7-8 keypoints and the labels of image 0 to "
        "every other image)",
        "",
        "| images | wall (s) | CPU (s) | growth per doubling | peak memory | growth per "
        "doubling | keypoints within one token | ranked first (image, score) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, r in enumerate(rows):
        first = f"{r['t_first'][0]}, {r['t_first'][1]:.3f}"
        lines.append(
            f"| {r['n']} | {r['t_wall']:.1f} | {r['t_cpu']:.1f} | {tr_time[k]} | "
            f"{r['t_peak'] / mib:.1f} MiB | {tr_mem[k]} | {100 * r['t_hits']:.1f} % | "
            f"{first} |"
        )
    lines += [
        "",
        "## Float16 queries and keys: what storage in float16 costs",
        "",
        "Maps from float16 tokens against float32 tokens of the same synthetic images (3 "
        f"layers, 10 heads of 64, 32 x 32; 10 image pairs; co-segmentation of "
        f"{fp16['n_images']} images):",
        "",
        "| measure | value |",
        "|---|---|",
        f"| max abs(A16 - A32), any entry | {fp16['max_abs']:.2e} |",
        f"| max row L1 distance sum abs(A16 - A32) | {fp16['max_row_l1']:.2e} |",
        f"| rows whose arg-max agrees | {100 * fp16['argmax']:.2f} % |",
        f"| `nc.match` target tokens that agree | {100 * fp16['match']:.2f} % |",
        f"| largest shift of a refined match | {fp16['shift']:.3f} grid cells |",
        f"| co-segmentation: images with identical labels | "
        f"{100 * fp16['identical_images']:.1f} % |",
        f"| co-segmentation: ARI between the two label sets, all images | "
        f"{fp16['joint_ari']:.4f} |",
        "",
        "## `moving_collection` (dense maps, 16 x 16; issue 13 measured the old joint "
        "clustering at 1.0 / 1.0 / 0.92 / 0.60 worst-image ARI at 4 / 16 / 32 / 64 images)",
        "",
        "| images | worst-image ARI | one unmatched id (the lone object) |",
        "|---|---|---|",
    ]
    for n_images, worst, lone in moving:
        lines.append(f"| {n_images} | {worst:.3f} | {'yes' if lone else 'NO'} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
