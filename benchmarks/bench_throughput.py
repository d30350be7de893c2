"""Benchmark throughput: fast encoder, latent cache, planned collection passes, settings.

Full-size SD2.1-base UNet and VAE, and a full-size TAESD (`AutoencoderTiny` with its
default, TAESD, architecture), all with random weights built from configs: speed does not
depend on the weight values. Everything runs in ONE process, in this order, so the ratios
compare cases that met the same load from other processes:

1. ``star-batched``: one source against 7 targets (``pairs="reference"``), fast encoder,
   batch size from the planner; first, so the process's peak RSS (``ru_maxrss``) right
   after it is this case's peak (weights included);
2. ``pair-fast``: one pair at 512 px with the fast encoder (empty latent cache);
3. ``pair-vae``: one pair with the model's VAE;
4. ``star-pairwise``: the same 1-vs-7 task as 7 separate pair extractions sharing the
   latent cache (what a user clicking through targets gets), unless ``--quick``;
5. ``pair-vae-contiguous``: the VAE pair with every weight in the default memory format;
6. settings: a 512 px VAE encode under ``no_grad`` / ``inference_mode`` / channels-last,
   TAESD and the early-exited UNet pass (batch 2) contiguous vs channels-last, and with
   one thread instead of all.

Cases 1-4 use what ``load_engine`` does on a CPU: UNet and encoders channels-last.

Wall and process CPU time are reported; on a shared machine CPU time is steadier.
Results go to ``benchmarks/results/throughput.md`` (the hand-written notes after the
table are kept: everything from ``## Notes`` on).

Usage: ``python benchmarks/bench_throughput.py [--quick]``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

from _random_sd2 import random_components
from _results import write_keeping_notes

RESULTS = Path(__file__).parent / "results" / "throughput.md"
PREDICTION = (
    "Prediction before running: a 512 px VAE encode ~9-13 s and TAESD ~1.5 s on a quiet "
    "machine, the early-exited UNet ~4.5 s per image; so a fast-encoder pair ~12 s (the "
    "10 s target is borderline), a VAE pair ~27-35 s, channels-last saving ~10 % of the "
    "VAE. One source vs 7 targets: 8 encodes, 1 pass (b = 8 fits the default budget), "
    "each added target ~50 % of a lone pair (encode + UNet share of one image; the 40 % "
    "target needs more than batching gives). Peak RSS ~5.5 GiB (3.8 GiB weights)."
)


def _engine(components, encoder=None):
    import torch

    from napari_corrseg.engine import Engine, LatentCache

    identity = {"encoder": "random-taesd", "encoder_revision": "bench"} if encoder else None
    return Engine(
        components,
        torch.device("cpu"),
        torch.float32,
        encoder=encoder,
        encoder_identity=identity,
        latent_cache=LatentCache(),
    )


def _images(count: int):
    import numpy as np

    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:480, 0:640] / 640.0
    out = []
    for _ in range(count):
        phase = rng.random(3) * 6.28
        image = np.stack([0.5 + 0.5 * np.sin(9 * rows + 5 * cols + p) for p in phase], -1)
        out.append((image + 0.05 * rng.random(image.shape)).clip(0, 1).astype(np.float32))
    return out


def _timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the pairwise 1-vs-7 case")
    args = parser.parse_args()

    import torch
    from diffusers import AutoencoderTiny

    rows = []  # (case, wall, cpu, encodes, passes, note)
    components = random_components()
    torch.manual_seed(1)
    taesd = AutoencoderTiny().eval().requires_grad_(False)
    images = _images(8)
    for module in (components.unet, components.vae, taesd):  # load_engine's CPU default
        module.to(memory_format=torch.channels_last)
    rss_weights = _rss_gib()
    print(f"weights loaded, RSS {rss_weights:.2f} GiB", flush=True)

    fast = _engine(components, taesd)
    wall, cpu, _ = _timed(lambda: fast.extract(images, pairs="reference"))
    plan = fast.last_plan
    rss_star = _rss_gib()
    star = (wall, cpu)
    rows.append(("star-batched (1 vs 7, fast)", wall, cpu, fast.encoder_calls, plan.n_passes, ""))
    print(rows[-1], flush=True)

    fast = _engine(components, taesd)
    wall, cpu, _ = _timed(lambda: fast.extract(images[:2]))
    pair_fast = (wall, cpu)
    rows.append(("pair-fast", wall, cpu, fast.encoder_calls, fast.last_plan.n_passes, ""))
    print(rows[-1], flush=True)

    vae = _engine(components)
    wall, cpu, _ = _timed(lambda: vae.extract(images[:2]))
    pair_vae = (wall, cpu)
    rows.append(("pair-vae", wall, cpu, vae.encoder_calls, vae.last_plan.n_passes, ""))
    print(rows[-1], flush=True)

    if not args.quick:
        fast = _engine(components, taesd)

        def pairwise():
            for target in range(1, 8):
                fast.extract([images[0], images[target]], pairs=[(0, 1), (1, 0)])

        wall, cpu, _ = _timed(pairwise)
        rows.append(("star-pairwise (7 calls, fast)", wall, cpu, fast.encoder_calls, 7, ""))
        print(rows[-1], flush=True)

    for module in (components.unet, components.vae, taesd):
        module.to(memory_format=torch.contiguous_format)
    vae = _engine(components)
    wall, cpu, _ = _timed(lambda: vae.extract(images[:2]))
    rows.append(("pair-vae-contiguous", wall, cpu, vae.encoder_calls, 1, "no channels-last"))
    print(rows[-1], flush=True)

    from napari_corrseg.engine.capture import EarlyExit, QueryKeyRecorder, select_layers

    pixels = torch.rand((1, 3, 512, 512)) * 2 - 1
    latents, steps = torch.randn((2, 4, 64, 64)), torch.full((2,), 261)
    context = torch.randn((2, 77, 1024))
    layers = select_layers(components.unet, 512, "auto")

    def unet_pass():
        recorder = QueryKeyRecorder(layers, [0, 1], {})
        with recorder.attached(components.unet):
            try:
                components.unet(latents, steps, encoder_hidden_states=context)
            except EarlyExit:
                pass

    encoder = components.vae
    settings = []
    with torch.no_grad():
        settings.append(("vae no_grad", *_timed(lambda: encoder.encode(pixels))[:2]))
    with torch.inference_mode():
        settings.append(("vae inference_mode", *_timed(lambda: encoder.encode(pixels))[:2]))
        settings.append(("taesd", *_timed(lambda: taesd.encode(pixels))[:2]))
        settings.append(("unet pass, batch 2", *_timed(unet_pass)[:2]))
        for module in (components.unet, encoder, taesd):
            module.to(memory_format=torch.channels_last)
        settings.append(("vae inference_mode+cl", *_timed(lambda: encoder.encode(pixels))[:2]))
        settings.append(("taesd cl", *_timed(lambda: taesd.encode(pixels))[:2]))
        settings.append(("unet pass, batch 2, cl", *_timed(unet_pass)[:2]))
        threads = torch.get_num_threads()
        if threads > 1:  # does the default (all cores) pay?
            torch.set_num_threads(1)
            settings.append(("taesd cl, 1 thread", *_timed(lambda: taesd.encode(pixels))[:2]))
            settings.append(("unet pass, batch 2, cl, 1 thread", *_timed(unet_pass)[:2]))
            torch.set_num_threads(threads)
    for row in settings:
        print(row, flush=True)

    added = [(star[k] - pair_fast[k]) / 6 / pair_fast[k] for k in range(2)]
    _write(rows, settings, plan, rss_weights, rss_star, added, pair_fast, pair_vae)


def _write(rows, settings, plan, rss_weights, rss_star, added, pair_fast, pair_vae) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0]
    lines = [
        "# Throughput benchmark: latent cache, collection passes, fast encoder",
        "",
        f"Date: {now}. Machine: {platform.machine()}, {os.cpu_count()} CPU cores "
        f"({__import__('torch').get_num_threads()} torch threads), Python "
        f"{sys.version.split()[0]}; load average at the end {load:.1f} (shared machine: CPU "
        "time is the steadier measure). Full-size SD2.1-base UNet and VAE and a full-size "
        "TAESD, random weights, float32, 512 px, default layers (three 32x32 decoder "
        "layers), one process, one run per case. Command: "
        "`python benchmarks/bench_throughput.py`.",
        "",
        PREDICTION,
        "",
        "| case | wall (s) | CPU (s) | encodes | UNet passes | note |",
        "|---|---|---|---|---|---|",
    ]
    for case, wall, cpu, encodes, passes, note in rows:
        lines.append(f"| {case} | {wall:.1f} | {cpu:.1f} | {encodes} | {passes} | {note} |")
    ceiling = math.ceil(8 / plan.batch_size)
    lines += [
        "",
        f"- Planner for 8 images: b = {plan.batch_size} (budget {plan.budget_bytes / 2**30:.1f}"
        f" GiB), {plan.n_passes} pass(es) (target ceil(8 / b) = {ceiling}); its estimated "
        f"peak beyond the weights {plan.peak_bytes / 2**30:.2f} GiB.",
        f"- Peak RSS: {rss_weights:.2f} GiB with the weights loaded, {rss_star:.2f} GiB after "
        "the 8-image run (target: within 12 GiB).",
        f"- Time per added target (batched, fast encoder) vs a lone fast pair: "
        f"{100 * added[0]:.0f} % wall, {100 * added[1]:.0f} % CPU (target <= 40 %).",
        f"- Pair targets: fast {pair_fast[0]:.1f} s wall / {pair_fast[1]:.1f} s CPU "
        f"(<= 10 s); VAE {pair_vae[0]:.1f} s wall / {pair_vae[1]:.1f} s CPU (<= 30 s).",
        "",
        "Settings: one 512 px image through an encoder, or one early-exited UNet pass:",
        "",
        "| setting | wall (s) | CPU (s) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {wall:.2f} | {cpu:.2f} |" for name, wall, cpu in settings]
    write_keeping_notes(RESULTS, "\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
