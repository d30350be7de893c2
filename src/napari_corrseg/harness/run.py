"""The ``evaluate`` driver: a benchmark, a method, tables and a precision-coverage curve.

`evaluate` reads a dataset (`napari_corrseg.harness.datasets`), runs one method
(`napari_corrseg.harness.methods`) on every pair, and writes to ``out_dir``:

* ``pck.csv`` and ``pck.md``: PCK per category and overall at each alpha, per image and
  per point, with pair and keypoint counts and the threshold convention;
* ``pairs.csv``: one line per pair (PCK of the pair at each alpha);
* ``points.csv``: one line per keypoint (truth, prediction, distance, confidence);
* ``coverage.csv`` and ``coverage.png``: PCK among the most confident fraction of all
  keypoints, for each kept fraction (does the confidence rank errors last?);
* ``settings.json``: dataset, method, recipe and model identity, for provenance.

The command line registers ``napari-corrseg evaluate`` from here (`register_cli`).
Importing this module is cheap: torch is only loaded with the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Cancelled, CorrsegError, OutputError
from .datasets import DATASETS, KeypointPair, load_image, read_dataset
from .pck import PairResult, PckRow, precision_coverage, summarize_pck
from .report import markdown_table, write_outputs

__all__ = [
    "EvaluationReport",
    "add_evaluate_arguments",
    "evaluate",
    "markdown_table",
    "register_cli",
    "run_evaluate_command",
]

DEFAULT_ALPHAS = (0.05, 0.1, 0.15)


@dataclass
class EvaluationReport:
    """What `evaluate` computed and where it wrote it."""

    dataset: str
    method: str
    threshold_kind: str
    rows: list[PckRow]
    pairs: list[PairResult]
    coverage: np.ndarray
    precision: np.ndarray
    coverage_alpha: float
    seconds_per_pair: float
    files: dict[str, Path] = field(default_factory=dict)

    def row(self, category: str = "all", alpha: float = 0.1) -> PckRow:
        """The table line of one category (``"all"`` by default) at one alpha."""
        for row in self.rows:
            if row.category == category and np.isclose(row.alpha, alpha):
                return row
        raise KeyError(f"no PCK row for category {category!r} at alpha {alpha}")


def _predict_pair(method, pair: KeypointPair, images: dict) -> tuple[PairResult, np.ndarray]:
    if pair.n_points == 0:  # every keypoint was marked missing: nothing to predict
        empty = np.zeros(0)
        result = PairResult(pair.pair_id, pair.category, empty, pair.threshold_size, empty)
        return result, np.zeros((0, 2))
    # Consecutive pairs often share an image: keep the last pair's images decoded.
    needed = (pair.source_path, pair.target_path)
    for path in [p for p in images if p not in needed]:
        del images[path]
    for path in needed:
        if path not in images:
            images[path] = load_image(path)
    prediction = method.predict(images[needed[0]], images[needed[1]], pair.source_points)
    predicted = np.asarray(prediction.points, dtype=np.float64).reshape(-1, 2)
    if predicted.shape != pair.target_points.shape:
        raise RuntimeError(
            f"method {method.name} returned {len(predicted)} points for {pair.n_points} keypoints"
        )
    return PairResult(
        pair_id=pair.pair_id,
        category=pair.category,
        distances=np.linalg.norm(predicted - pair.target_points, axis=1),
        threshold_size=pair.threshold_size,
        confidence=prediction.confidence,
    ), predicted


def evaluate(
    dataset: str,
    root: str | Path,
    out_dir: str | Path,
    *,
    method: str | Any = "attention",
    engine: Any = None,
    model: str = "auto",
    device: str = "auto",
    limit: int | None = None,
    split: str = "test",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    coverage_alpha: float = 0.1,
    method_options: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> EvaluationReport:
    """Evaluate one correspondence method on a keypoint benchmark and write the tables.

    Parameters
    ----------
    dataset : {"spair", "pf-willow", "pf-pascal"}
    root : str or Path
        The dataset folder, in its published layout.
    out_dir : str or Path
        Folder for the result files (created; existing result files are replaced).
    method : str or CorrespondenceMethod
        ``"attention"``, ``"attention+mutual"``, ``"dift"``, or a method object.
    engine : Engine, optional
        Reused if given; otherwise ``load_engine(model, device=device)``.
    model, device : str
        For `napari_corrseg.load_engine` when no engine is given.
    limit : int, optional
        Evaluate only the first ``limit`` pairs.
    split : str
        SPair-71k split (``"test"``, ``"val"``, ``"trn"``).
    alphas : sequence of float
        PCK thresholds to report.
    coverage_alpha : float
        The alpha of the precision-coverage curve.
    method_options : dict, optional
        Passed to `napari_corrseg.harness.methods.make_method`.
    progress : callable, optional
        ``progress(done, total)`` after each pair.
    cancel : callable, optional
        Returns True to stop (raises `Cancelled`).

    Returns
    -------
    EvaluationReport
    """
    from .methods import make_method

    pairs = read_dataset(dataset, root, limit=limit, split=split)  # fail before the model
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create output folder {out_dir}: {error}") from error
    if isinstance(method, str):
        if engine is None:
            from ..engine import load_engine

            engine = load_engine(model, device=device)
        method = make_method(method, engine, **(method_options or {}))
    results, predictions, images = [], [], {}
    started = time.perf_counter()
    for done, pair in enumerate(pairs, start=1):
        if cancel is not None and cancel():
            raise Cancelled("evaluation was cancelled")
        result, predicted = _predict_pair(method, pair, images)
        results.append(result)
        predictions.append(predicted)
        if progress is not None:
            progress(done, len(pairs))
    seconds = (time.perf_counter() - started) / len(pairs)
    correct = np.concatenate([r.correct(coverage_alpha) for r in results])
    confidence = np.concatenate([r.confidence for r in results])
    coverage, precision = precision_coverage(correct, confidence)
    report = EvaluationReport(
        dataset=dataset,
        method=method.name,
        threshold_kind=pairs[0].threshold_kind,
        rows=summarize_pck(results, alphas),
        pairs=results,
        coverage=coverage,
        precision=precision,
        coverage_alpha=float(coverage_alpha),
        seconds_per_pair=seconds,
    )
    identity = getattr(engine, "identity", None) if engine is not None else None
    settings = {
        "dataset": dataset,
        "root": str(root),
        "split": split if dataset == "spair" else None,
        "n_pairs": len(pairs),
        "method": method.describe(),
        "model": identity,
        "alphas": list(alphas),
        "threshold": pairs[0].threshold_kind,
        "seconds_per_pair": seconds,
    }
    report.files = write_outputs(report, pairs, predictions, settings, out_dir, alphas)
    return report


# -- command line ----------------------------------------------------------------------


def add_evaluate_arguments(parser) -> None:
    """Add the ``evaluate`` arguments (the CLI adds --model, --device, --timestep,
    --layers, --seed and --no-cache itself)."""
    from .methods import METHODS

    parser.add_argument(
        "--dataset",
        required=True,
        choices=[*DATASETS, "coseg"],
        help="benchmark layout; 'coseg' = folder with images/ and masks/",
    )
    parser.add_argument("--root", required=True, type=Path, help="dataset folder")
    parser.add_argument(
        "--method",
        default="attention",
        choices=METHODS,
        help="correspondence method (default: attention)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs/images")
    parser.add_argument(
        "--split",
        default="test",
        choices=["test", "val", "trn"],
        help="SPair-71k split (default: test)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        nargs="+",
        default=list(DEFAULT_ALPHAS),
        help="PCK thresholds (default: 0.05 0.1 0.15)",
    )
    parser.add_argument(
        "--dift-image-size",
        type=int,
        default=768,
        help="dift: input side in pixels (default: 768)",
    )
    parser.add_argument(
        "--dift-ensemble", type=int, default=8, help="dift: noise draws averaged (default: 8)"
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="compare the paper's open choices instead of one method: one middle layer vs "
        "the decoder-layer average vs coarse+average, each with and without eq. 2.3's "
        "partition normalisation, one UNet pass per pair; writes sweep.csv and sweep.md",
    )


def run_evaluate_command(args, context) -> int:
    """Run ``napari-corrseg evaluate``; print the Markdown table; return the exit code."""
    from ..cli.common import _load_engine, _parse_layers

    if args.limit is not None and args.limit < 1:
        raise CorrsegError(f"--limit must be a positive number of pairs, got {args.limit}")
    if args.sweep:
        return _run_sweep(args, context)
    if args.dataset == "coseg":
        from .coseg import evaluate_cosegmentation, read_coseg_folder

        read_coseg_folder(args.root, limit=args.limit)  # fail before the model
        engine = _load_engine(args, context)
        result = evaluate_cosegmentation(
            args.root,
            args.out,
            engine=engine,
            limit=args.limit,
            extract_options={
                "layers": _parse_layers(args.layers),
                "timestep": args.timestep,
                "seed": args.seed,
            },
        )
        print(result.markdown, end="")
        context.say(f"wrote {', '.join(str(p) for p in result.files.values())}")
        return 0
    read_dataset(args.dataset, args.root, limit=args.limit, split=args.split)
    engine = _load_engine(args, context)
    if args.method == "dift":
        options = {
            "image_size": args.dift_image_size,
            "ensemble_size": args.dift_ensemble,
            "timestep": args.timestep,
            "seed": args.seed,
        }
    else:
        options = {
            "layers": _parse_layers(args.layers),
            "timestep": args.timestep,
            "seed": args.seed,
        }
    bar = context.progress()
    try:
        report = evaluate(
            args.dataset,
            args.root,
            args.out,
            method=args.method,
            engine=engine,
            limit=args.limit,
            split=args.split,
            alphas=args.alpha,
            method_options=options,
            progress=lambda done, total: bar(f"pairs {done}/{total}", done / total),
        )
    finally:
        bar.close()
    print(markdown_table(report), end="")
    context.say(f"{report.seconds_per_pair:.2f} s per pair; tables and curve in {args.out}")
    return 0


def _run_sweep(args, context) -> int:
    """``evaluate --sweep``: the recipe comparison table (`napari_corrseg.harness.sweep`)."""
    from ..cli.common import _load_engine
    from .sweep import sweep, sweep_markdown

    if args.dataset == "coseg":
        raise CorrsegError("--sweep compares keypoint transfer; use a keypoint dataset, not coseg")
    read_dataset(args.dataset, args.root, limit=args.limit, split=args.split)
    engine = _load_engine(args, context)
    # one PCK threshold for the comparison: 0.1 (the usual one) when it was asked for
    alpha = next((a for a in args.alpha if np.isclose(a, 0.1)), float(args.alpha[0]))
    bar = context.progress()
    try:
        rows = sweep(
            args.dataset,
            args.root,
            args.out,
            engine=engine,
            limit=args.limit,
            split=args.split,
            alpha=alpha,
            timestep=args.timestep,
            seed=args.seed,
            progress=lambda done, total: bar(f"pairs {done}/{total}", done / total),
        )
    finally:
        bar.close()
    print(sweep_markdown(rows, alpha), end="")
    context.say(f"tables in {args.out} (sweep.csv, sweep.md)")
    return 0


def register_cli() -> None:
    """Register ``evaluate`` with `napari_corrseg.cli` (called when the CLI imports us)."""
    from ..cli import Subcommand, register

    register(
        Subcommand(
            "evaluate",
            "PCK of a correspondence method on SPair-71k / PF-WILLOW / PF-PASCAL, or "
            "co-segmentation mIoU on a folder with masks",
            add_evaluate_arguments,
            run_evaluate_command,
        )
    )
