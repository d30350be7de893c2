"""Benchmark filling the token store: in process, and on 1 vs 2 Dask workers.

Full-size SD2.1-base UNet and VAE with random weights built from the shipped configs
(speed does not depend on the weight values; nothing is downloaded), float32,
channels-last as ``load_engine`` does on a CPU, 512 px, default layers (the three 32x32
decoder layers), one image per UNet pass (the CPU default). The same few images go
through, in one run, in this order:

1. ``none``: `fill_store` in this process (2 torch threads);
2. ``local:1``: a `LocalCluster` of one worker process with 2 torch threads;
3. ``local:2``: two worker processes with 1 torch thread each.

Each case writes a fresh store. Reported: the fill's wall time (model loading and
cluster start reported apart), time per image, throughput relative to ``none``, peak
resident memory of each worker, the store's size per image (apparent and on disk), and
the float16 cost: maps formed from the stored float16 tokens against the float32 tokens
they were rounded from. Results go to ``benchmarks/results/collection_extract.md`` (the
hand-written notes after the table are kept: everything from ``## Notes`` on).

Usage: ``python benchmarks/bench_collection_extract.py [--images 4]``; ``--tiny`` runs the
same steps on the tiny model in seconds (to check the script, not to measure), writing
nothing.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _results import write_keeping_notes

RESULTS = Path(__file__).parent / "results" / "collection_extract.md"
PREDICTION = (
    "Prediction before running: per image a VAE encode (~14 s) plus one early-exited UNet "
    "pass at batch 1 (~4-5 s), so ~18-20 s per image in process and on one worker of 2 "
    "threads (the worker adds only task overhead, well under 1 %). Two workers of 1 thread "
    "each: each image takes ~1.6-1.9x as long on one thread (2 threads scale poorly here: "
    "benchmarks/results/throughput.md, a UNet pass took 16 s on 1 thread and 23 s on 2 "
    "under load), but two run at once, so throughput 1.0-1.2x one worker's: the 2 cores "
    "are the limit, not Python. Each worker holds its own weights: peak RSS ~4.2 GiB each. "
    "Store: 3 layers x 10 heads x 1024 tokens x 64 x 2 (Q and K) x 2 bytes = 7.86 MB per "
    "image plus ~1.5 kB of metadata."
)


def random_engine(device: str = "cpu"):
    """A full-size SD2.1-base engine with random weights (module-level: Dask ships it)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from napari_corrseg.engine import Engine, LatentCache
    from napari_corrseg.engine.models import Components, shipped_config

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(shipped_config("sd2-base", "unet"))
    vae = AutoencoderKL.from_config(shipped_config("sd2-base", "vae"))
    scheduler = DDPMScheduler.from_config(shipped_config("sd2-base", "scheduler"))
    for module in (unet, vae):
        module.eval().requires_grad_(False)
        module.to(memory_format=torch.channels_last)
    identity = {"model": "random-sd2-base", "revision": "bench", "dtype": "float32"}
    embedding = torch.randn((1, 77, 1024))
    components = Components(unet, vae, scheduler, embedding, identity, 512)
    return Engine(components, torch.device(device), torch.float32, latent_cache=LatentCache())


def tiny_engine(device: str = "cpu"):
    """The tiny model (``--tiny``: checks the script's steps quickly)."""
    from napari_corrseg.engine import load_engine

    return load_engine("tiny", device=device, latent_cache=False)


def _images(folder: Path, n: int) -> list[Path]:
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        rows, cols = np.mgrid[0:512, 0:512]
        image = np.stack([(rows + 40 * k) % 256, (cols * 2) % 256, rows * 0 + 100], -1)
        image = (image + rng.integers(0, 60, image.shape)).clip(0, 255).astype(np.uint8)
        path = folder / f"image_{k}.png"
        iio.imwrite(path, image)
        paths.append(path)
    return paths


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _fp16_cost(kept: dict, backend) -> dict:
    """Maps from float16-rounded tokens against the float32 tokens, first two images."""
    (q0, k0), (_, k1) = list(kept.values())[:2]
    rows = {}
    for name, (q, k) in {"self 0": (q0, k0), "cross 0->1": (q0, k1)}.items():
        exact = backend(q, k)
        rounded = backend(q.astype(np.float16), k.astype(np.float16))
        entropy = -(exact * np.log(np.maximum(exact, 1e-30))).sum(axis=1).mean()
        rows[name] = {
            "max_abs": float(np.abs(rounded - exact).max()),
            "max_value": float(exact.max()),
            "argmax_agree": float(np.mean(rounded.argmax(1) == exact.argmax(1))),
            "entropy_fraction": float(entropy / np.log(exact.shape[1])),
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="check the script on the tiny model")
    args = parser.parse_args(argv)
    factory = tiny_engine if args.tiny else random_engine
    import torch

    from napari_corrseg.collection.store import TokenStore
    from napari_corrseg.tasks.collection import fill_store, open_store
    from napari_corrseg.tasks.distributed import DaskScheduler, SchedulerSpec

    work = Path(tempfile.mkdtemp(prefix="bench-collection-"))
    paths = _images(work, args.images)
    results = []

    # 1. in process
    start = time.perf_counter()
    engine = factory("cpu")
    load_s = time.perf_counter() - start
    kept: dict = {}

    class KeepingStore(TokenStore):  # keeps the float32 tokens for the float16 cost
        def write(self, key, queries, keys, geometry, *, name=None):
            kept[key] = (np.array(queries), np.array(keys))
            return super().write(key, queries, keys, geometry, name=name)

    plain = open_store(work / "store-none", engine)
    store = KeepingStore(plain.path, plain.settings)
    start = time.perf_counter()
    report = fill_store(store, paths, engine)
    wall = time.perf_counter() - start
    assert report.computed == args.images
    results.append(
        {
            "case": "none",
            "workers": 0,
            "threads": torch.get_num_threads(),
            "startup_s": load_s,
            "wall_s": wall,
            "rss": [_peak_rss_gib()],
        }
    )
    apparent = store.size_bytes() / args.images
    on_disk = _disk_bytes(store.root) / args.images
    fp16 = _fp16_cost(kept, engine.attention_backend)
    settings = store.settings
    del engine, store, plain
    kept.clear()
    gc.collect()

    # 2, 3: Dask
    for n_workers in (1, 2):
        start = time.perf_counter()
        scheduler = DaskScheduler.start(
            SchedulerSpec("local", n_workers=n_workers), factory, device="cpu"
        )
        startup = time.perf_counter() - start
        try:
            store = TokenStore(work / f"store-local{n_workers}", settings)
            start = time.perf_counter()
            report = fill_store(store, paths, scheduler=scheduler)
            wall = time.perf_counter() - start
            assert report.computed == args.images, report
            threads = scheduler.client.run(lambda: __import__("torch").get_num_threads())
            rss = scheduler.client.run(
                lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            )
        finally:
            scheduler.close()
        results.append(
            {
                "case": f"local:{n_workers}",
                "workers": n_workers,
                "threads": sorted(threads.values())[0],
                "startup_s": startup,
                "wall_s": wall,
                "rss": sorted(rss.values()),
            }
        )
    load = os.getloadavg()
    text = _table(results, args.images, apparent, on_disk, fp16, load)
    if not args.tiny:  # the hand-written notes (from "## Notes" on) are kept
        write_keeping_notes(RESULTS, text)
    print(text)
    return 0


def _table(results, n_images, apparent, on_disk, fp16, load) -> str:
    base = results[0]["wall_s"]
    lines = [
        "# Token store fill: in process vs 1 and 2 Dask workers",
        "",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}; load average at the end {load[0]:.1f} / {load[1]:.1f} "
        "/ {:.1f} (1 / 5 / 15 min; a shared machine: other processes held cores). "
        "Full-size SD2.1-base UNet and VAE, random weights, float32, channels-last, 512 px, "
        f"default layers, one image per UNet pass, {n_images} images per case, one run. "
        "Command: `python benchmarks/bench_collection_extract.py`.".format(load[2]),
        "",
        PREDICTION,
        "",
        "| case | workers x torch threads | startup (s) | fill wall (s) | per image (s) | "
        "throughput vs none | peak RSS per process (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        workers = "this process" if r["workers"] == 0 else f"{r['workers']} x {r['threads']}"
        if r["workers"] == 0:
            workers += f" ({r['threads']} threads)"
        rss = ", ".join(f"{v:.2f}" for v in r["rss"])
        lines.append(
            f"| {r['case']} | {workers} | {r['startup_s']:.1f} | {r['wall_s']:.1f} | "
            f"{r['wall_s'] / n_images:.1f} | {base / r['wall_s']:.2f}x | {rss} |"
        )
    lines += [
        "",
        "Startup: building the random-weight model (in process) or starting the cluster "
        "and building it on every worker (their plugin's setup). Fill: `fill_store` for "
        "every image (all missing), reading the PNG, VAE encode, UNet pass, store write.",
        "",
        f"Store size per image: {apparent / 1e6:.3f} MB apparent, {on_disk / 1e6:.3f} MB on "
        "disk (file system blocks); predicted 7.866 MB.",
        "",
        "Float16 cost (first two images; maps from float16-rounded tokens vs the float32 "
        "tokens, `TorchAttention`). Random weights give near-uniform attention (row entropy "
        "close to log N), so the argmax agreement here says little; the error bound does:",
        "",
        "| map | max abs error | largest value | argmax agreement | row entropy / log N |",
        "|---|---|---|---|---|",
    ]
    for name, row in fp16.items():
        lines.append(
            f"| {name} | {row['max_abs']:.2e} | {row['max_value']:.2e} | "
            f"{row['argmax_agree']:.1%} | {row['entropy_fraction']:.3f} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
