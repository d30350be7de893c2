"""Wall time and peak memory per image pair: this project's pipeline vs the DIFT recipe.

Runs on the CPU with the full-size SD2.1 architecture (random weights built from the
configs shipped in ``napari_corrseg/engine/configs``: timing does not depend on weight
values) and measures, for one pair of two new images:

1. ``default``: ``engine.extract`` at 512 px, the decoder 32x32 layers, early exit;
2. ``all layers``: the same with all 16 self-attention layers recorded and no early exit;
3. ``dift e=1``: the DIFT recipe (768 px, t = 261, up-block 1) with an ensemble of 1;
4. ``dift e=8``: the same with DIFT's ensemble of 8 (``--skip-dift8`` leaves it out and
   the report extrapolates it from e=1, saying so).

Each row also times the VAE part on its own (it dominates on a CPU), and the cost of
more keypoints: transferring 1 vs 100 keypoints from the already computed maps/features.
Peak memory is the highest resident set size seen while the pipeline runs (sampled
every 5 ms) minus the resident size just before it: what the pipeline adds on top of
the loaded model.

Usage: ``python benchmarks/bench_pipelines.py [--skip-dift8] [--json raw.json] [--tiny]``
prints a Markdown table (results: ``benchmarks/results/pipelines.md``). About 10 minutes
on 2 idle cores; ``--tiny`` is a quick smoke test on the tiny model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
import torch

from napari_corrseg.engine.extract import Engine
from napari_corrseg.engine.features import DiftSettings, extract_dift_features
from napari_corrseg.engine.models import CONFIG_DIR, Components
from napari_corrseg.harness.methods import cosine_argmax_upsampled
from napari_corrseg.tasks.pipeline import transfer_keypoints

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class PeakMemory:
    """Highest RSS above the starting RSS while the block runs (sampled in a thread)."""

    def __enter__(self):
        self.start = _rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.added_gib = (self.peak - self.start) / 2**30


def build_full_size_engine() -> Engine:
    """SD2.1-base architecture, random weights, float32 on the CPU (no text encoder:
    the empty-prompt embedding is a fixed random tensor of the right shape)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    folder = CONFIG_DIR / "sd2-base"
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(json.loads((folder / "unet/config.json").read_text()))
    vae = AutoencoderKL.from_config(json.loads((folder / "vae/config.json").read_text()))
    scheduler = DDIMScheduler.from_config(
        json.loads((folder / "scheduler/scheduler_config.json").read_text())
    )
    for module in (unet, vae):
        module.eval().requires_grad_(False)
    embedding = torch.randn(1, 77, unet.config.cross_attention_dim) * 0.1
    identity = {"model": "sd2-base-random", "dtype": "float32", "tiny": False}
    components = Components(unet, vae, scheduler, embedding, identity, 512)
    return Engine(components, torch.device("cpu"), torch.float32)


def _images():
    rng = np.random.default_rng(0)
    # typical SPair sizes; content does not change the cost
    return [
        rng.random((375, 500, 3)).astype(np.float32),
        rng.random((500, 333, 3)).astype(np.float32),
    ]


def _time(function):
    with PeakMemory() as memory:
        start = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - start
    return result, seconds, memory.added_gib


def _vae_seconds(engine: Engine, images, size: int) -> float:
    from napari_corrseg.core.images import prepare_image, resize_image

    start = time.perf_counter()
    with torch.no_grad():
        for image in images:
            square = resize_image(prepare_image(image), size)
            pixels = torch.from_numpy(square).permute(2, 0, 1)[None] * 2 - 1
            engine.vae.encode(pixels).latent_dist.mean  # noqa: B018 - timing only
    return time.perf_counter() - start


def _keypoint_cost(function, n_repeats: int = 5) -> float:
    start = time.perf_counter()
    for _ in range(n_repeats):
        function()
    return (time.perf_counter() - start) / n_repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="also write raw numbers here")
    parser.add_argument("--skip-dift8", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="smoke test on the tiny model")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    images = _images()
    rng = np.random.default_rng(1)
    points_1 = rng.uniform([10, 10], [360, 320], size=(1, 2))
    points_100 = rng.uniform([10, 10], [360, 320], size=(100, 2))
    started = time.perf_counter()
    if args.tiny:
        from napari_corrseg.engine import load_engine

        engine = load_engine("tiny", device="cpu")
    else:
        engine = build_full_size_engine()
    dift_size = 64 if args.tiny else 768
    all_sides = sorted({layer.resolution for layer in engine.layers})
    print(f"built full-size engine in {time.perf_counter() - started:.0f} s", flush=True)
    rows = {}

    def record(name, seconds, memory, vae, **extra):
        rows[name] = {"seconds": seconds, "added_gib": memory, "vae_seconds": vae, **extra}
        # other processes slow a shared machine down: keep the 1-minute load with the row
        rows[name]["load_average"] = os.getloadavg()[0]
        print(name, json.dumps(rows[name]), flush=True)

    def extract(**options):
        return engine.extract(images, pairs=[(0, 1), (1, 0)], **options)

    def keypoint_costs(transfer) -> dict:
        return {
            "keypoints_1": _keypoint_cost(lambda: transfer(points_1)),
            "keypoints_100": _keypoint_cost(lambda: transfer(points_100)),
        }

    extract()  # warm-up (first-call allocations), not timed
    default_maps, seconds, memory = _time(extract)
    record(
        "default",
        seconds,
        memory,
        _vae_seconds(engine, images, engine.image_size),
        layers=len(default_maps.settings["layers"]),
        **keypoint_costs(lambda points, m=default_maps: transfer_keypoints(m, 0, 1, points)),
    )
    del default_maps
    all_maps, seconds, memory = _time(lambda: extract(layers=all_sides, early_exit=False))
    record(
        "all layers, no early exit",
        seconds,
        memory,
        rows["default"]["vae_seconds"],
        layers=len(all_maps.settings["layers"]),
    )
    del all_maps
    dift_vae = _vae_seconds(engine, images, dift_size)  # the VAE runs once per image
    shapes = [image.shape[:2] for image in images]
    for ensemble in (1,) if args.skip_dift8 else (1, 8):
        settings = DiftSettings(image_size=dift_size, ensemble_size=ensemble, timestep=261)
        feats, seconds, memory = _time(lambda s=settings: extract_dift_features(engine, images, s))
        record(
            f"dift e={ensemble}",
            seconds,
            memory,
            dift_vae,
            feature_shape=list(feats[0].shape),
            **keypoint_costs(lambda points, f=feats: cosine_argmax_upsampled(*f, points, *shapes)),
        )
        del feats
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "image_shapes": [list(image.shape) for image in images],
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(json.dumps(meta))
    print(markdown(rows))


def markdown(rows: dict) -> str:
    """The results as a Markdown table, with ratios to the default pipeline."""
    base = rows["default"]["seconds"]
    lines = [
        "| pipeline | s / pair | x default | VAE s | UNet+rest s | peak added GiB "
        "| 1 keypoint ms | 100 keypoints ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        ms = [
            f"{1000 * row[k]:.1f}" if k in row else "-" for k in ("keypoints_1", "keypoints_100")
        ]
        lines.append(
            f"| {name} | {row['seconds']:.1f} | {row['seconds'] / base:.2f} | "
            f"{row['vae_seconds']:.1f} | {row['seconds'] - row['vae_seconds']:.1f} | "
            f"{row['added_gib']:.2f} | {ms[0]} | {ms[1]} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
