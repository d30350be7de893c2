"""Draw the figures of docs/method.md from a run on synthetic attention maps.

    .venv/bin/python scripts/make_method_figure.py [--out docs/images]

The pair: a 32x32 grid (N = 1024, the paper's layer size), a 0.8x zoom-out combined with a
smooth wave, noisy logits, and an occluded block in the target. Writes
``method_metrics.png`` (IME, MD and NIMS on the target; cycle error, soft cycle error and
confidence on the source) and ``method_matches.png`` (matches spread over the image,
coloured by confidence).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from napari_corrseg.core.correspondence import inverse_mapping, match
from napari_corrseg.synthetic.warps import Warp, make_pair, scaling, smooth_warp

GRID = (32, 32)
OCCLUSION = (4, 18, 14, 28)  # row_start, col_start, row_stop, col_stop in the target


def example_pair():
    zoom, wave = scaling(0.8), smooth_warp(1.5, seed=4)
    warp = Warp("zoom 0.8 + wave", lambda p, grid: wave(zoom(p, grid), grid))
    return make_pair(GRID, warp, temperature=0.9, noise=0.4, occlusion=OCCLUSION, seed=0)


def outline_occlusion(axis) -> None:
    r0, c0, r1, c1 = OCCLUSION
    axis.add_patch(
        Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, ec="w", lw=1.2, ls="--")
    )


def metrics_figure(pair, inverse, path: Path) -> None:
    images = inverse.as_images()
    panels = [
        ("entropy", "IME (target)", "magma", True),
        ("density", "MD (target)", "viridis", True),
        ("nims", "NIMS = IME / log(1 + MD) (target)", "magma", True),
        ("cycle_error", "cycle error, cells (source)", "inferno", False),
        ("soft_cycle_error", "soft cycle error, cells (source)", "inferno", False),
        ("confidence", "match confidence (source)", "cividis", False),
    ]
    figure, axes = plt.subplots(2, 3, figsize=(12, 7.6), constrained_layout=True)
    for axis, (name, title, cmap, on_target) in zip(axes.ravel(), panels, strict=True):
        image = np.ma.masked_invalid(images[name].astype(float))
        shown = axis.imshow(image, cmap=cmap, interpolation="nearest")
        axis.set_title(title, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
        if on_target:
            outline_occlusion(axis)
        figure.colorbar(shown, ax=axis, shrink=0.8)
    axes[0, 2].text(
        0.5, -0.06, "grey: MD = 0 (NaN)", transform=axes[0, 2].transAxes, ha="center", fontsize=8
    )
    axes[0, 2].set_facecolor("0.6")
    figure.suptitle(
        f"Synthetic pair on a 32x32 grid ({pair.warp.name}, occluded block dashed); "
        f"IMS = {inverse.ims:.2f} cells",
        fontsize=11,
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)


def matches_figure(pair, inverse, path: Path) -> None:
    matches = match(pair.a_st, pair.a_ts, pair.grid, max_matches=120, inverse=inverse)
    figure, axes = plt.subplots(1, 2, figsize=(10, 5.2), constrained_layout=True)
    colours = plt.get_cmap("cividis")(matches.confidence / max(matches.confidence.max(), 1e-9))
    for axis, points, title in (
        (axes[0], matches.source, "source: 120 spread matches"),
        (axes[1], matches.target, "target: refined positions"),
    ):
        axis.scatter(points[:, 1], points[:, 0], c=colours, s=18, edgecolors="k", linewidths=0.3)
        axis.set_xlim(-0.5, GRID[1] - 0.5)
        axis.set_ylim(GRID[0] - 0.5, -0.5)
        axis.set_aspect("equal")
        axis.set_title(title, fontsize=10)
    outline_occlusion(axes[1])
    axes[1].patches[-1].set_edgecolor("k")
    errors = np.linalg.norm(matches.target - pair.true_target[matches.source_token], axis=1)
    correct = (errors <= 1) & pair.visible[matches.source_token]
    axes[1].scatter(
        matches.target[~correct, 1], matches.target[~correct, 0], marker="x", c="r", s=30
    )
    figure.suptitle(
        "Matches coloured by confidence (bright = high); red x: more than 1 cell from the truth",
        fontsize=11,
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pair = example_pair()
    inverse = inverse_mapping(pair.a_st, pair.a_ts, pair.grid)
    metrics_figure(pair, inverse, args.out / "method_metrics.png")
    matches_figure(pair, inverse, args.out / "method_matches.png")
    print(f"wrote {args.out / 'method_metrics.png'} and {args.out / 'method_matches.png'}")


if __name__ == "__main__":
    main()
