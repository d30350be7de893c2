"""Correspondence methods behind one interface, for side-by-side evaluation.

A method takes a source image, a target image and source keypoints in pixels, and
returns one predicted target point per keypoint with a confidence (higher is surer).
All methods run on the same engine (model, device, dtype) and image preprocessing.

* ``attention``: this project. One UNet pass over both images records the cross
  self-attention; each keypoint goes to the argmax of its row of ``A_st``, with the
  cycle-consistency confidence (`napari_corrseg.tasks.pipeline.transfer_keypoints`).
* ``attention+mutual``: the same maps, but only mutual nearest neighbours (tokens whose
  forward-backward cycle returns exactly) are trusted; each keypoint takes the
  displacement of the nearest mutual match, and its confidence is that match's
  confidence divided by ``1 + distance`` to it (in grid cells).
* ``dift``: DIFT features (`napari_corrseg.engine.features`), cosine nearest neighbour
  as DIFT's ``eval_spair.py`` does it: both feature maps bilinearly upsampled to their
  image's size, the source feature read at the keypoint pixel, the argmax over every
  target pixel. Confidence is the best cosine similarity.

This module imports neither torch nor Qt; the engine is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = [
    "METHODS",
    "AttentionMethod",
    "CorrespondenceMethod",
    "DiftMethod",
    "Prediction",
    "bilinear_matrix",
    "cosine_argmax_upsampled",
    "make_method",
]

#: Names accepted by `make_method` and the command line.
METHODS = ("attention", "attention+mutual", "dift")


@dataclass(frozen=True)
class Prediction:
    """Predicted target keypoints: ``points`` ``(P, 2)`` pixels (row, col), ``confidence``
    ``(P,)``."""

    points: np.ndarray
    confidence: np.ndarray


class CorrespondenceMethod(Protocol):
    """What `napari_corrseg.harness.run.evaluate` needs from a method."""

    name: str

    def predict(
        self, source_image: np.ndarray, target_image: np.ndarray, source_points: np.ndarray
    ) -> Prediction: ...

    def describe(self) -> dict[str, Any]: ...


# -- attention -------------------------------------------------------------------------


@dataclass
class AttentionMethod:
    """Cross self-attention argmax with cycle-consistency confidence (this project).

    Parameters
    ----------
    engine : Engine
        From `napari_corrseg.load_engine`.
    mutual : bool
        Trust only mutual nearest neighbours (``attention+mutual``).
    extract_options : dict
        Passed to ``engine.extract`` (``layers``, ``timestep``, ``seed``).
    """

    engine: Any
    mutual: bool = False
    extract_options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "attention+mutual" if self.mutual else "attention"

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, **self.extract_options}

    def predict(self, source_image, target_image, source_points) -> Prediction:
        from ..tasks.pipeline import match_images, transfer_keypoints

        maps = self.engine.extract(
            [source_image, target_image], pairs=[(0, 1), (1, 0)], **self.extract_options
        )
        points = np.asarray(source_points, dtype=np.float64).reshape(-1, 2)
        # annotations sometimes sit a pixel outside the image; the maps end at its border
        points = np.clip(points, 0, np.asarray(np.shape(source_image)[:2]) - 1)
        moved = transfer_keypoints(maps, 0, 1, points)
        if not self.mutual:
            return Prediction(moved.target_points, moved.confidence)
        found = match_images(maps, 0, 1, mutual=True, min_confidence=0)
        if len(found) == 0:  # no cycle closes: fall back, with no confidence
            return Prediction(moved.target_points, np.zeros(len(points)))
        return _follow_nearest_match(
            maps.geometries[0].pixel_to_grid(points),
            found.source_grid_points,
            found.target_grid_points,
            found.confidence,
            maps.grid,
            maps.geometries[1],
        )


def _follow_nearest_match(
    points_grid, match_source, match_target, match_confidence, grid, target_geometry
) -> Prediction:
    """Move each point by the displacement of its nearest trusted match (grid units)."""
    gaps = np.linalg.norm(points_grid[:, None, :] - match_source[None, :, :], axis=2)
    nearest = gaps.argmin(axis=1)
    distance = gaps[np.arange(len(points_grid)), nearest]
    moved = match_target[nearest] + (points_grid - match_source[nearest])
    moved = np.clip(moved, 0.0, np.asarray(grid, dtype=np.float64) - 1.0)
    confidence = np.asarray(match_confidence, dtype=np.float64)[nearest] / (1.0 + distance)
    return Prediction(target_geometry.grid_to_pixel(moved), confidence)


# -- DIFT ------------------------------------------------------------------------------


def _bilinear_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower input index and weight of the upper neighbour for each output position.

    Output pixel ``y`` samples input position ``(y + 0.5) * n_in / n_out - 0.5``, clamped
    at the border (torch's ``align_corners=False``): pixel centres land on cell centres,
    as `ImageGeometry` has it.
    """
    position = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    low = np.floor(position).astype(np.int64)
    return low, position - low


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of torch's bilinear upsampling (``align_corners=False``)."""
    low, upper_weight = _bilinear_taps(n_out, n_in)
    matrix = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, low), 1.0 - upper_weight)
    np.add.at(matrix, (rows, np.minimum(low + 1, n_in - 1)), upper_weight)
    return matrix


def _upsampled_norms(features: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` norms of the bilinearly upsampled ``(C, h, w)`` features, exactly.

    Each upsampled vector mixes the 2x2 cells around it, so its squared norm is a
    quadratic form in the 4 weights over the Gram matrix of those cells: 10 channel dot
    products per cell instead of ``C`` values per output pixel.
    """
    _, h, w = features.shape
    row_low, row_up = _bilinear_taps(shape[0], h)
    col_low, col_up = _bilinear_taps(shape[1], w)
    down, right = np.minimum(np.arange(h) + 1, h - 1), np.minimum(np.arange(w) + 1, w - 1)
    corners = [
        features,
        features[:, :, right],
        features[:, down, :],
        features[:, down][:, :, right],
    ]
    gram = np.empty((4, 4, h, w), dtype=np.float64)
    for k in range(4):
        for m in range(k, 4):
            gram[k, m] = gram[m, k] = np.einsum("chw,chw->hw", corners[k], corners[m])
    gram = gram[:, :, row_low[:, None], col_low[None, :]]  # (4, 4, H, W)
    row_w = np.stack([1.0 - row_up, row_up])[:, :, None]  # (2, H, 1)
    col_w = np.stack([1.0 - col_up, col_up])[:, None, :]  # (2, 1, W)
    weights = (row_w[:, None] * col_w[None, :]).reshape(4, *shape)  # corner order above
    squared = np.einsum("kYX,kmYX,mYX->YX", weights, gram, weights)
    return np.sqrt(np.maximum(squared, 0.0))


def cosine_argmax_upsampled(
    source_features: np.ndarray,
    target_features: np.ndarray,
    source_points: np.ndarray,
    source_shape: tuple[int, int],
    target_shape: tuple[int, int],
) -> Prediction:
    """DIFT's nearest neighbour, on features upsampled to full image size.

    Equivalent to upsampling both ``(C, h, w)`` maps bilinearly to their image's
    ``(H, W)``, reading the source feature at each (rounded) keypoint pixel and taking
    the target pixel of highest cosine similarity, but without building the upsampled
    target map (``C x H x W``, ~0.8 GB for SD2.1 at 500 px): the numerator is upsampled
    per keypoint and the norms come from 2x2 Gram matrices (`_upsampled_norms`).

    Returns
    -------
    Prediction
        Target pixel ``(row, col)`` of the best match; confidence = its cosine.
    """
    channels = source_features.shape[0]
    if target_features.shape[0] != channels:
        raise ValueError(
            f"source has {channels} feature channels, target {target_features.shape[0]}"
        )
    (src_h, src_w), (trg_h, trg_w) = source_shape, target_shape
    pixels = np.rint(np.asarray(source_points, dtype=np.float64)).astype(np.int64)
    pixels = np.clip(pixels, 0, [src_h - 1, src_w - 1])
    rows_s = bilinear_matrix(src_h, source_features.shape[1])[pixels[:, 0]]  # (P, h)
    cols_s = bilinear_matrix(src_w, source_features.shape[2])[pixels[:, 1]]  # (P, w)
    vectors = np.einsum("ph,chw,pw->pc", rows_s, source_features, cols_s, optimize=True)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    target_features = np.asarray(target_features, dtype=np.float32)
    norms = _upsampled_norms(target_features, (trg_h, trg_w))
    rows_t = bilinear_matrix(trg_h, target_features.shape[1])  # (H, h)
    cols_t = bilinear_matrix(trg_w, target_features.shape[2])  # (W, w)
    dots = np.tensordot(vectors.astype(np.float32), target_features, axes=(1, 0))  # (P, h, w)
    dots = (rows_t @ dots) @ cols_t.T  # (P, H, W)
    cosine = dots / np.maximum(norms, 1e-12)[None]
    flat = cosine.reshape(len(pixels), -1)
    best = flat.argmax(axis=1)
    points = np.stack(np.divmod(best, trg_w), axis=1).astype(np.float64)
    return Prediction(points, flat[np.arange(len(pixels)), best].astype(np.float64))


@dataclass
class DiftMethod:
    """DIFT baseline: up-block features, cosine nearest neighbour.

    Parameters
    ----------
    engine : Engine
        From `napari_corrseg.load_engine`.
    settings : DiftSettings, optional
        The recipe (``napari_corrseg.engine.features.DiftSettings``); DIFT's defaults
        if omitted: 768 px, t = 261, up-block 1, ensemble of 8.
    """

    engine: Any
    settings: Any = None
    name: str = "dift"

    def __post_init__(self) -> None:
        from ..engine.features import DiftSettings

        if self.settings is None:
            self.settings = DiftSettings()

    def describe(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"method": self.name, **asdict(self.settings)}

    def predict(self, source_image, target_image, source_points) -> Prediction:
        from ..engine.features import extract_dift_features

        source_features, target_features = extract_dift_features(
            self.engine, [source_image, target_image], self.settings
        )
        return cosine_argmax_upsampled(
            source_features,
            target_features,
            np.asarray(source_points, dtype=np.float64).reshape(-1, 2),
            tuple(np.shape(source_image)[:2]),
            tuple(np.shape(target_image)[:2]),
        )


def make_method(name: str, engine: Any, **options: Any) -> CorrespondenceMethod:
    """Build a method by name (see `METHODS`).

    Parameters
    ----------
    name : {"attention", "attention+mutual", "dift"}
    engine : Engine
    **options
        ``attention*``: passed to ``engine.extract`` (``layers``, ``timestep``, ``seed``).
        ``dift``: fields of `DiftSettings` (``image_size``, ``ensemble_size``, ...).
    """
    if name in ("attention", "attention+mutual"):
        return AttentionMethod(engine, mutual=name.endswith("mutual"), extract_options=options)
    if name == "dift":
        from ..engine.features import DiftSettings

        return DiftMethod(engine, DiftSettings(**options))
    raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
