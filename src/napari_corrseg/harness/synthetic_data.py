"""Tiny benchmark folders with a known answer, in the published layouts.

Each pair is a textured source image and the same image moved by a known affine warp
(a scale and a shift), with keypoints placed in the source and mapped by that warp. The
folders are written in the SPair-71k, PF-WILLOW, PF-PASCAL and co-segmentation layouts
that `napari_corrseg.harness.datasets` reads, so the readers, PCK and the ``evaluate``
driver can be tested (and tried) without downloading anything. numpy/scipy only.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "SyntheticPair",
    "make_pair",
    "write_coseg_folder",
    "write_pf_pascal",
    "write_pf_willow",
    "write_spair",
]


@dataclass(frozen=True)
class SyntheticPair:
    """A source image, its warped copy and keypoints ``(row, col)`` in both."""

    source: np.ndarray
    target: np.ndarray
    source_points: np.ndarray
    target_points: np.ndarray
    scale: float
    shift: np.ndarray

    def warp(self, points: np.ndarray) -> np.ndarray:
        """Map source ``(row, col)`` pixels to the target: ``scale * p + shift``."""
        return self.scale * np.asarray(points, dtype=np.float64) + self.shift


def _texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    noise = rng.random((*shape, 3))
    smooth = ndimage.gaussian_filter(noise, sigma=(3, 3, 0))
    smooth = (smooth - smooth.min()) / max(np.ptp(smooth), 1e-9)
    return (255 * smooth).astype(np.uint8)


def make_pair(
    shape: tuple[int, int] = (48, 64),
    n_points: int = 6,
    scale: float = 0.9,
    shift: tuple[float, float] = (3.0, -2.0),
    seed: int = 0,
) -> SyntheticPair:
    """A textured image and its copy under ``q = scale * p + shift`` (row, col)."""
    rng = np.random.default_rng(seed)
    source = _texture(shape, rng)
    shift_arr = np.asarray(shift, dtype=np.float64)
    # target(q) = source((q - shift) / scale)
    target = np.stack(
        [
            ndimage.affine_transform(
                source[:, :, c].astype(np.float64),
                np.full(2, 1.0 / scale),
                offset=-shift_arr / scale,
                order=1,
                mode="nearest",
            )
            for c in range(3)
        ],
        axis=2,
    ).astype(np.uint8)
    margin = 0.2 * np.asarray(shape)
    low, high = margin, np.asarray(shape) - 1 - margin
    points = np.round(rng.uniform(low, high, size=(n_points, 2)))
    return SyntheticPair(source, target, points, scale * points + shift_arr, scale, shift_arr)


def _save(path: Path, image: np.ndarray) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image)


def _xy(points: np.ndarray) -> list[list[float]]:
    return [[float(c), float(r)] for r, c in points]


def write_spair(root, n_pairs: int = 3, categories=("cat", "dog"), seed: int = 0):
    """Write a SPair-71k-layout folder; return ``{pair file stem: SyntheticPair}``."""
    root = Path(root)
    written = {}
    for k in range(n_pairs):
        category = categories[k % len(categories)]
        pair = make_pair(seed=seed + k)
        source_name, target_name = f"{k:04d}_a.png", f"{k:04d}_b.png"
        _save(root / "JPEGImages" / category / source_name, pair.source)
        _save(root / "JPEGImages" / category / target_name, pair.target)
        rows, cols = pair.target_points[:, 0], pair.target_points[:, 1]
        stem = f"{k:06d}-{k:04d}_a-{k:04d}_b:{category}"
        annotation = {
            "category": category,
            "src_imname": source_name,
            "trg_imname": target_name,
            "src_kps": _xy(pair.source_points),
            "trg_kps": _xy(pair.target_points),
            "src_bndbox": [0, 0, pair.source.shape[1] - 1, pair.source.shape[0] - 1],
            # a box around the keypoints, 4 px margin: x_min, y_min, x_max, y_max
            "trg_bndbox": [cols.min() - 4, rows.min() - 4, cols.max() + 4, rows.max() + 4],
            "src_imsize": [pair.source.shape[1], pair.source.shape[0], 3],
            "trg_imsize": [pair.target.shape[1], pair.target.shape[0], 3],
        }
        folder = root / "PairAnnotation" / "test"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.json").write_text(json.dumps(annotation))
        written[stem] = pair
    return written


def write_pf_willow(root, n_pairs: int = 3, n_points: int = 10, seed: int = 0):
    """Write a PF-WILLOW-layout folder (``test_pairs.csv`` naming ``PF-WILLOW/...``
    paths, as published); return the pairs in CSV order."""
    root = Path(root)
    header = ["imageA", "imageB"] + [
        f"{a}{k}" for a in ("XA", "YA", "XB", "YB") for k in range(1, n_points + 1)
    ]
    rows, written = [], []
    for k in range(n_pairs):
        category = ("car(G)", "duck(S)")[k % 2]
        pair = make_pair(n_points=n_points, seed=seed + k)
        names = [f"PF-WILLOW/{category}/{k:03d}_{s}.png" for s in ("a", "b")]
        _save(root / Path(names[0]).relative_to("PF-WILLOW"), pair.source)
        _save(root / Path(names[1]).relative_to("PF-WILLOW"), pair.target)
        src, trg = pair.source_points, pair.target_points
        rows.append([*names, *src[:, 1], *src[:, 0], *trg[:, 1], *trg[:, 0]])
        written.append(pair)
    _write_rows(root / "test_pairs.csv", header, rows)
    return written


def write_pf_pascal(root, n_pairs: int = 2, seed: int = 0):
    """Write a PF-PASCAL-layout folder (``test_pairs_pf_pascal.csv``); return the pairs."""
    root = Path(root)
    header = ["source_image", "target_image", "class", "XA", "YA", "XB", "YB"]
    rows, written = [], []
    for k in range(n_pairs):
        pair = make_pair(seed=seed + k)
        names = [f"PF-dataset-PASCAL/JPEGImages/{k:04d}_{s}.png" for s in ("a", "b")]
        _save(root / "JPEGImages" / f"{k:04d}_a.png", pair.source)
        _save(root / "JPEGImages" / f"{k:04d}_b.png", pair.target)

        def joined(values) -> str:
            return ";".join(f"{v:g}" for v in values)

        src, trg = pair.source_points, pair.target_points
        rows.append(
            [
                *names,
                k % 20 + 1,
                joined(src[:, 1]),
                joined(src[:, 0]),
                joined(trg[:, 1]),
                joined(trg[:, 0]),
            ]
        )
        written.append(pair)
    _write_rows(root / "test_pairs_pf_pascal.csv", header, rows)
    return written


def write_coseg_folder(root, n_images: int = 3, shape=(48, 48), seed: int = 0):
    """Write ``images/`` and ``masks/`` (a bright square object on texture, mask 0/255)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for k in range(n_images):
        image = _texture(shape, rng) // 3
        mask = np.zeros(shape, dtype=np.uint8)
        top, left = rng.integers(4, shape[0] // 2, size=2)
        mask[top : top + shape[0] // 3, left : left + shape[1] // 3] = 255
        image[mask > 0] = (230, 60, 40)
        _save(root / "images" / f"im{k}.png", image)
        _save(root / "masks" / f"im{k}.png", mask)
    return root


def _write_rows(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
