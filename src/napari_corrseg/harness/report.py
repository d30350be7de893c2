"""Result files of `napari_corrseg.harness.run.evaluate`: CSV, Markdown and the curve.

numpy and matplotlib (Agg backend, no display) only.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError

__all__ = ["markdown_table", "write_outputs"]


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    try:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error}") from error


def _fmt(value: float) -> str:
    return "nan" if np.isnan(value) else f"{100 * value:.2f}"


def markdown_table(report) -> str:
    """The PCK table as Markdown, with the averaging and threshold stated above it."""
    lines = [
        f"PCK of `{report.method}` on {report.dataset}: alpha x {report.threshold_kind} "
        "side; **per image** = mean over pairs of each pair's PCK, **per point** = all "
        "keypoints pooled. Values in %.",
        "",
        "| category | alpha | pairs | keypoints | PCK per image | PCK per point |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report.rows:
        name = f"**{row.category}**" if row.category == "all" else row.category
        lines.append(
            f"| {name} | {row.alpha:g} | {row.n_pairs} | {row.n_points} | "
            f"{_fmt(row.pck_per_image)} | {_fmt(row.pck_per_point)} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(report, pairs, predictions, settings, out_dir: Path, alphas) -> dict:
    files = {
        name: out_dir / name
        for name in (
            "pck.csv",
            "pck.md",
            "pairs.csv",
            "points.csv",
            "coverage.csv",
            "coverage.png",
            "settings.json",
        )
    }
    _write_csv(
        files["pck.csv"],
        ["category", "alpha", "n_pairs", "n_points", "pck_per_image", "pck_per_point"],
        [
            [r.category, r.alpha, r.n_pairs, r.n_points, r.pck_per_image, r.pck_per_point]
            for r in report.rows
        ],
    )
    _write_csv(
        files["pairs.csv"],
        ["pair_id", "category", "n_points", "threshold_size", *[f"pck@{a:g}" for a in alphas]],
        [
            [
                r.pair_id,
                r.category,
                r.distances.size,
                r.threshold_size,
                *[r.correct(a).mean() if r.distances.size else float("nan") for a in alphas],
            ]
            for r in report.pairs
        ],
    )
    point_rows = []
    for pair, result, predicted in zip(pairs, report.pairs, predictions, strict=True):
        for k in range(pair.n_points):
            point_rows.append(
                [
                    pair.pair_id,
                    pair.category,
                    k,
                    *pair.source_points[k],
                    *pair.target_points[k],
                    *predicted[k],
                    result.distances[k],
                    result.distances[k] / pair.threshold_size,
                    result.confidence[k],
                ]
            )
    _write_csv(
        files["points.csv"],
        [
            "pair_id",
            "category",
            "keypoint",
            "source_row",
            "source_col",
            "true_row",
            "true_col",
            "pred_row",
            "pred_col",
            "distance_px",
            "distance_over_threshold",
            "confidence",
        ],
        point_rows,
    )
    n_total = sum(r.distances.size for r in report.pairs)
    _write_csv(
        files["coverage.csv"],
        ["coverage", "n_kept", f"pck@{report.coverage_alpha:g}"],
        [
            [c, int(max(np.ceil(c * n_total - 1e-9), 1)), p]
            for c, p in zip(report.coverage, report.precision, strict=True)
        ],
    )
    try:
        files["pck.md"].write_text(markdown_table(report))
        files["settings.json"].write_text(json.dumps(settings, indent=2, default=str))
    except OSError as error:
        raise OutputError(f"cannot write into {out_dir}: {error}") from error
    _plot_coverage(report, files["coverage.png"])
    return files


def _plot_coverage(report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5, 3.5), dpi=120)
    axes = figure.add_subplot()
    axes.plot(100 * report.coverage, 100 * report.precision, marker="o", markersize=3)
    overall = report.precision[-1]
    axes.axhline(100 * overall, color="grey", linestyle=":", linewidth=1, label="keep all")
    axes.set_xlabel("keypoints kept, most confident first (%)")
    axes.set_ylabel(f"PCK@{report.coverage_alpha:g} among kept (%)")
    axes.set_title(f"{report.method} on {report.dataset}", fontsize=10)
    axes.set_xlim(0, 100)
    axes.set_ylim(0, 100)
    axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error}") from error
