"""Co-segmentation scores on a folder of images with ground-truth masks.

Layout: ``root/images/<name>.<ext>`` and ``root/masks/<name>.<ext>`` (same stem; any of
png, jpg, tif, bmp). A mask is an integer label map of the image's size, 0 = background;
a mask holding only 0 and 255 is read as 0/1.

All images are co-segmented together (one UNet pass, `napari_corrseg.tasks.pipeline.
cosegment_images`) and scored with `napari_corrseg.core.evaluation`:

* **mIoU per image**: Hungarian matching of ids in each image separately, then the mean
  over images (says nothing about whether ids agree across images);
* **mIoU collection**: ONE Hungarian matching over all images' pixels together, so a
  segment must carry the same id in every image to score (the co-segmentation claim);
* **Jaccard**: foreground IoU per image, foreground being the predicted ids that the
  collection-wide matching assigns to a non-zero truth id, then the mean over images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError
from .datasets import DatasetError, load_image

__all__ = ["CosegScores", "evaluate_cosegmentation", "read_coseg_folder", "score_cosegmentation"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class CosegScores:
    """Scores of one co-segmentation of a collection."""

    names: list[str]
    miou_per_image: list[float]
    jaccard_per_image: list[float]
    miou_collection: float
    markdown: str = ""
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def miou(self) -> float:
        """Mean over images of the per-image Hungarian mIoU."""
        return float(np.mean(self.miou_per_image))

    @property
    def jaccard(self) -> float:
        """Mean over images of the foreground Jaccard index."""
        return float(np.mean(self.jaccard_per_image))


def read_coseg_folder(root: str | Path, limit: int | None = None) -> list[tuple[Path, Path]]:
    """List ``(image, mask)`` path pairs of a co-segmentation folder, sorted by name."""
    root = Path(root)
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DatasetError(
                f"co-segmentation folder {folder} does not exist; --root must hold images/ "
                "and masks/ with one mask per image (same file stem)"
            )
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    if limit is not None:
        images = images[:limit]
    if len(images) < 2:
        raise DatasetError(f"{image_dir} holds {len(images)} image(s); co-segmentation needs 2+")
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise DatasetError(f"no mask in {mask_dir} for image(s) {', '.join(missing)}")
    return [(p, masks[p.stem]) for p in images]


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """An integer label map of ``shape``; 0/255 masks become 0/1."""
    import imageio.v3 as iio

    try:
        mask = np.asarray(iio.imread(path))
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read mask {path}: {error}") from error
    if mask.ndim == 3 and (mask == mask[:, :, :1]).all():
        mask = mask[:, :, 0]  # grey saved as RGB
    if mask.ndim != 2 or mask.dtype.kind not in "uib":
        raise DatasetError(
            f"mask {path} must be a single-channel integer label image, got shape "
            f"{mask.shape} and dtype {mask.dtype}"
        )
    if mask.shape != tuple(shape):
        raise DatasetError(f"mask {path} is {mask.shape[:2]} but its image is {tuple(shape)}")
    values = np.unique(mask)
    if set(values.tolist()) <= {0, 255}:
        mask = mask > 0
    return mask.astype(np.int64)


def score_cosegmentation(predictions, truths, names) -> CosegScores:
    """Score predicted label maps against truth label maps (see the module docstring)."""
    from ..core.evaluation import hungarian_match, jaccard

    per_image = [hungarian_match(p, t).miou for p, t in zip(predictions, truths, strict=True)]
    collection = hungarian_match(
        np.concatenate([np.ravel(p) for p in predictions]),
        np.concatenate([np.ravel(t) for t in truths]),
    )
    foreground_ids = [pred for truth, pred in collection.pairs.items() if truth != 0]
    jaccards = [
        jaccard(np.isin(p, foreground_ids), np.asarray(t) != 0)
        for p, t in zip(predictions, truths, strict=True)
    ]
    return CosegScores(list(names), per_image, jaccards, collection.miou)


def _markdown(scores: CosegScores, settings: dict[str, Any]) -> str:
    lines = [
        f"Co-segmentation of {len(scores.names)} images ({settings.get('root')}): "
        "mIoU per image = Hungarian matching in each image; mIoU collection = one matching "
        "over all images (ids must agree); Jaccard = foreground IoU. Values in %.",
        "",
        "| image | mIoU (per image) | Jaccard |",
        "|---|---:|---:|",
    ]
    for name, miou, jac in zip(
        scores.names, scores.miou_per_image, scores.jaccard_per_image, strict=True
    ):
        lines.append(f"| {name} | {100 * miou:.2f} | {100 * jac:.2f} |")
    lines.append(f"| **mean** | {100 * scores.miou:.2f} | {100 * scores.jaccard:.2f} |")
    lines += ["", f"mIoU collection: {100 * scores.miou_collection:.2f}"]
    return "\n".join(lines) + "\n"


def evaluate_cosegmentation(
    root: str | Path,
    out_dir: str | Path,
    *,
    engine: Any = None,
    model: str = "auto",
    device: str = "auto",
    limit: int | None = None,
    extract_options: dict[str, Any] | None = None,
) -> CosegScores:
    """Co-segment the folder's images together and score them against the masks.

    Writes ``coseg.csv`` (per image), ``coseg.md`` and ``coseg_settings.json`` to
    ``out_dir``.
    """
    import csv
    import json

    from ..tasks.pipeline import cosegment_images

    listing = read_coseg_folder(root, limit=limit)
    images = [load_image(image_path) for image_path, _ in listing]
    truths = [read_mask(m, im.shape[:2]) for (_, m), im in zip(listing, images, strict=True)]
    if engine is None:
        from ..engine import load_engine

        engine = load_engine(model, device=device)
    maps = engine.extract(images, pairs="all", **(extract_options or {}))
    result = cosegment_images(maps)
    predictions = [np.asarray(labels).astype(np.int64) for labels in result.labels]
    scores = score_cosegmentation(predictions, truths, [p.name for p, _ in listing])
    settings = {
        "root": str(root),
        "n_images": len(listing),
        "extract": extract_options or {},
        "threshold": result.threshold,
        "model": getattr(engine, "identity", None),
    }
    scores.markdown = _markdown(scores, settings)
    out_dir = Path(out_dir)
    files = {n: out_dir / n for n in ("coseg.csv", "coseg.md", "coseg_settings.json")}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(files["coseg.csv"], "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "miou_per_image", "jaccard"])
            for row in zip(
                scores.names, scores.miou_per_image, scores.jaccard_per_image, strict=True
            ):
                writer.writerow(row)
            writer.writerow(["collection", scores.miou_collection, scores.jaccard])
        files["coseg.md"].write_text(scores.markdown)
        files["coseg_settings.json"].write_text(json.dumps(settings, indent=2, default=str))
    except OSError as error:
        raise OutputError(f"cannot write into {out_dir}: {error}") from error
    scores.files = files
    return scores
