"""``evaluate --sweep``: the paper's open choices measured on a real benchmark, one table.

For every pair the UNet runs once (`napari_corrseg.engine.variants.extract_variants`) and
each recipe -- layer choice (one middle layer, the average of the decoder layers at
``image_size / 16``, those plus the ``image_size / 32`` ones) x partition normalisation
(``separate`` or the paper's eq. 2.3 ``joint``) -- transfers the annotated keypoints.
Per recipe the table reports:

* ``PCK@a``: share of keypoints within ``a`` x the dataset's reference size, per point;
* ``AUROC conf``: how well the confidence ranks right above wrong keypoints (0.5 = chance);
* ``AUROC NIMS``: the same for NIMS at the predicted target token, read as the paper
  reads it (high = good; NaN, where nothing maps, ranks lowest). Below 0.5 the opposite
  reading is the better one;
* ``kept``: share of keypoints at or above the pair's automatic reliability cut
  (`napari_corrseg.core.correspondence.reliability_cut`), and ``PCK kept``: PCK among
  them (does the cut keep the right ones?);
* ``IMS``: mean inverse mapping score of the pairs (grid cells).

Files: ``sweep.csv`` (one line per recipe), ``sweep.md`` (the table), ``sweep.json``
(settings). Imports neither torch nor Qt at import time.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Cancelled, OutputError
from .datasets import load_image, read_dataset
from .pck import correct_mask

__all__ = ["SweepRow", "auroc", "sweep", "sweep_markdown"]


@dataclass(frozen=True)
class SweepRow:
    """One recipe's figures (see the module docstring)."""

    layers: str
    partition: str
    layer_names: str
    n_pairs: int
    n_points: int
    pck: float
    auroc_confidence: float
    auroc_nims: float
    kept: float
    pck_kept: float
    ims: float


def auroc(scores, positive) -> float:
    """Probability that a random positive outscores a random negative (ties count 1/2);
    NaN when either class is empty."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _recipe_scores(maps, source_points: np.ndarray) -> dict[str, np.ndarray | float]:
    from ..core.correspondence import inverse_mapping, reliability_cut
    from ..tasks.pipeline import transfer_keypoints

    moved = transfer_keypoints(maps, 0, 1, source_points)
    inverse = inverse_mapping(maps.cross(0, 1), maps.cross(1, 0), maps.grid)
    h, w = maps.grid
    grid_points = maps.geometries[1].pixel_to_grid(moved.target_points)
    rows = np.clip(np.rint(grid_points[:, 0]), 0, h - 1).astype(np.int64)
    cols = np.clip(np.rint(grid_points[:, 1]), 0, w - 1).astype(np.int64)
    nims = inverse.nims[rows * w + cols]
    return {
        "points": moved.target_points,
        "confidence": moved.confidence,
        "nims": np.where(np.isnan(nims), -np.inf, nims),
        "cut": reliability_cut(inverse).threshold,
        "ims": inverse.ims,
    }


def sweep(
    dataset: str,
    root: str | Path,
    out_dir: str | Path,
    *,
    engine: Any,
    variants: Sequence[tuple[str, str]] | None = None,
    limit: int | None = None,
    split: str = "test",
    alpha: float = 0.1,
    timestep: int = 261,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[SweepRow]:
    """Run every recipe on a keypoint benchmark and write the comparison table.

    Parameters
    ----------
    dataset : {"spair", "pf-willow", "pf-pascal"}
    root : str or Path
        The dataset folder, in its published layout.
    out_dir : str or Path
        Folder for ``sweep.csv``, ``sweep.md`` and ``sweep.json``.
    engine : Engine
        From `napari_corrseg.load_engine` (SD2.1 for figures that mean something).
    variants : sequence of (str, str), optional
        ``(layer choice, partition)`` recipes; default all six.
    limit : int, optional
        Only the first ``limit`` pairs.
    split : str
        SPair-71k split.
    alpha : float
        PCK threshold.
    timestep, seed : int
        Of the UNet pass.
    progress : callable, optional
        ``progress(done, total)`` after each pair.
    cancel : callable, optional
        Returns True to stop (raises `Cancelled`).

    Returns
    -------
    list of SweepRow
        One per recipe, in the order given.
    """
    from ..engine.variants import ALL_VARIANTS, extract_variants, layer_choice

    pairs = read_dataset(dataset, root, limit=limit, split=split)  # fail before the model
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create output folder {out_dir}: {error}") from error
    variants = list(variants or ALL_VARIANTS)
    collected = {
        v: {"correct": [], "confidence": [], "nims": [], "kept": [], "ims": []} for v in variants
    }
    started = time.perf_counter()
    for done, pair in enumerate(pairs, start=1):
        if cancel is not None and cancel():
            raise Cancelled("the sweep was cancelled")
        if pair.n_points:
            source, target = load_image(pair.source_path), load_image(pair.target_path)
            points = np.clip(pair.source_points, 0, np.asarray(source.shape[:2]) - 1)
            recipes = extract_variants(
                engine,
                [source, target],
                variants,
                timestep=timestep,
                seed=seed,
                pairs=[(0, 1), (1, 0)],
            )
            for variant in variants:
                scores = _recipe_scores(recipes[variant], points)
                distances = np.linalg.norm(scores["points"] - pair.target_points, axis=1)
                record = collected[variant]
                record["correct"].append(correct_mask(distances, pair.threshold_size, alpha))
                record["confidence"].append(scores["confidence"])
                record["nims"].append(scores["nims"])
                record["kept"].append(scores["confidence"] >= scores["cut"])
                record["ims"].append(np.atleast_1d(scores["ims"]))
        if progress is not None:
            progress(done, len(pairs))
    rows = []
    for name, partition in variants:
        record = collected[(name, partition)]
        joined = {k: np.concatenate(v) if v else np.zeros(0) for k, v in record.items()}
        correct, kept = joined["correct"].astype(bool), joined["kept"].astype(bool)
        names = [layer.name.split(".transformer")[0] for layer in layer_choice(engine, name)]
        rows.append(
            SweepRow(
                layers=name,
                partition=partition,
                layer_names=" ".join(names),
                n_pairs=len(pairs),
                n_points=int(correct.size),
                pck=float(correct.mean()) if correct.size else float("nan"),
                auroc_confidence=auroc(joined["confidence"], correct),
                auroc_nims=auroc(joined["nims"], correct),
                kept=float(kept.mean()) if kept.size else float("nan"),
                pck_kept=float(correct[kept].mean()) if kept.any() else float("nan"),
                ims=float(np.nanmean(joined["ims"])) if joined["ims"].size else float("nan"),
            )
        )
    settings = {
        "dataset": dataset,
        "root": str(root),
        "split": split if dataset == "spair" else None,
        "n_pairs": len(pairs),
        "alpha": alpha,
        "timestep": timestep,
        "seed": seed,
        "model": getattr(engine, "identity", None),
        "seconds_per_pair": (time.perf_counter() - started) / max(len(pairs), 1),
    }
    _write(out_dir, rows, settings, alpha)
    return rows


def _fmt(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.3f}"


def sweep_markdown(rows: Sequence[SweepRow], alpha: float, settings: dict | None = None) -> str:
    """The comparison as a Markdown table (what the command prints)."""
    lines = []
    if settings:
        lines += [
            f"Sweep on `{settings['dataset']}` ({settings['n_pairs']} pairs), model "
            f"`{(settings.get('model') or {}).get('model', '?')}`, t = {settings['timestep']}.",
            "",
        ]
    lines += [
        f"| layers | partition | points | PCK@{alpha:g} | AUROC conf | AUROC NIMS (high = good)"
        " | kept by auto cut | PCK kept | IMS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.layers} | {row.partition} | {row.n_points} | {_fmt(row.pck)} | "
            f"{_fmt(row.auroc_confidence)} | {_fmt(row.auroc_nims)} | {_fmt(row.kept)} | "
            f"{_fmt(row.pck_kept)} | {_fmt(row.ims)} |"
        )
    layers = {row.layers: row.layer_names for row in rows}
    lines += ["", "Layers: " + "; ".join(f"{k} = {v}" for k, v in layers.items()) + "."]
    return "\n".join(lines) + "\n"


def _write(out_dir: Path, rows: Sequence[SweepRow], settings: dict, alpha: float) -> None:
    try:
        with open(out_dir / "sweep.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(asdict(rows[0])))
            writer.writeheader()
            for row in rows:
                writer.writerow(asdict(row))
        (out_dir / "sweep.md").write_text(sweep_markdown(rows, alpha, settings))
        (out_dir / "sweep.json").write_text(json.dumps(settings, indent=2, default=str))
    except OSError as error:
        raise OutputError(f"cannot write the sweep results to {out_dir}: {error}") from error
