"""PNG figures for the command line: match pictures, metric maps, label overlays.

Every figure whose colours encode a number (confidence, a metric) has a colour bar, and
every figure made with the tiny random-weight model carries `TINY_NOTICE` in red
(``notice=TINY_NOTICE``; `napari_corrseg.files.export` passes it), so a picture passed
on without its terminal output still says it is not a real result. matplotlib with the
Agg canvas only (no pyplot state, no display)."""

from __future__ import annotations

import io as _io
from pathlib import Path

import numpy as np

from ..core.maps import ImageGeometry
from .io import display_rgb, write_bytes

#: Drawn on every figure made with the tiny random-weight model.
TINY_NOTICE = "TINY RANDOM MODEL (no Stable Diffusion weights): NOT a real result"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path, notice: str | None = None) -> Path:
    if notice:
        figure.text(
            0.5, 0.005, notice, ha="center", va="bottom", color="red", fontsize=11,
            fontweight="bold",
        )  # fmt: skip
    buffer = _io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return write_bytes(path, buffer.getvalue())


def _extent(geometry: ImageGeometry) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) of a grid map over its image's pixels."""
    height, width = geometry.image_shape
    return (-0.5, width - 0.5, height - 0.5, -0.5)


def match_picture(
    path: str | Path,
    source_image: np.ndarray,
    target_image: np.ndarray,
    source_points: np.ndarray,
    target_points: np.ndarray,
    confidence: np.ndarray,
    *,
    max_lines: int = 60,
    title: str = "",
    notice: str | None = None,
) -> Path:
    """Side-by-side picture with a line per match, most confident ``max_lines`` only,
    coloured by confidence (with a colour bar)."""
    from matplotlib import colormaps
    from matplotlib.patches import ConnectionPatch

    source_rgb, target_rgb = display_rgb(source_image), display_rgb(target_image)
    figure = _figure(10, 5)
    left, right = figure.subplots(1, 2)
    left.imshow(source_rgb)
    right.imshow(target_rgb)
    for axis, name in ((left, "source"), (right, "target")):
        axis.set_axis_off()
        axis.set_title(name)
    order = np.argsort(-np.asarray(confidence))[:max_lines]
    cmap = colormaps["viridis"]
    for k in order:
        colour = cmap(float(np.clip(confidence[k], 0, 1)))
        (sr, sc), (tr, tc) = source_points[k], target_points[k]
        line = ConnectionPatch(
            xyA=(sc, sr),
            coordsA=left.transData,
            xyB=(tc, tr),
            coordsB=right.transData,
            color=colour,
            linewidth=0.8,
            alpha=0.8,
        )
        figure.add_artist(line)
        left.plot(sc, sr, "o", color=colour, markersize=3)
        right.plot(tc, tr, "o", color=colour, markersize=3)
    _confidence_bar(figure, [left, right])
    figure.suptitle(
        title or f"{len(order)} most confident of {len(confidence)} matches (colour = confidence)"
    )
    return _save(figure, path, notice)


def _confidence_bar(figure, axes) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(Normalize(0, 1), colormaps["viridis"])
    bar = figure.colorbar(mappable, ax=axes, fraction=0.025, pad=0.02)
    bar.set_label("confidence (0 to 1)")


def metric_picture(
    path: str | Path,
    image: np.ndarray,
    values: np.ndarray,
    geometry: ImageGeometry,
    *,
    title: str,
    label: str,
    notice: str | None = None,
) -> Path:
    """A grid map drawn over its image, with a colour bar."""
    figure = _figure(6, 5)
    axis = figure.subplots()
    axis.imshow(display_rgb(image))
    shown = np.ma.masked_invalid(np.asarray(values, dtype=np.float64))
    artist = axis.imshow(
        shown, extent=_extent(geometry), alpha=0.6, cmap="magma", interpolation="nearest"
    )
    colourbar = figure.colorbar(artist, ax=axis, fraction=0.046, pad=0.04)
    colourbar.set_label(label)
    axis.set_title(title, fontsize=9)
    axis.set_axis_off()
    return _save(figure, path, notice)


def labels_picture(
    path: str | Path,
    images: list[np.ndarray],
    labels: list[np.ndarray],
    *,
    title: str = "",
    notice: str | None = None,
) -> Path:
    """Label maps over their images; the same id gets the same colour in every panel
    (colours name segments, not amounts, so there is no colour bar)."""
    from matplotlib import colormaps

    top = max([int(np.max(lab)) for lab in labels] + [1])
    colours = colormaps["tab20"](np.arange(top + 1) % 20)[:, :3]
    figure = _figure(4 * len(images), 4)
    axes = np.atleast_1d(figure.subplots(1, len(images)))
    for k, (axis, image, lab) in enumerate(zip(axes, images, labels, strict=True)):
        rgb = display_rgb(image).astype(np.float64) / 255
        overlay = colours[np.clip(lab, 0, top)]
        axis.imshow(0.45 * rgb + 0.55 * overlay)
        axis.set_axis_off()
        axis.set_title(f"image {k}")
    if title:
        figure.suptitle(title)
    return _save(figure, path, notice)


def keypoints_picture(
    path: str | Path,
    source_image: np.ndarray,
    target_image: np.ndarray,
    source_points: np.ndarray,
    target_points: np.ndarray,
    confidence: np.ndarray,
    *,
    notice: str | None = None,
) -> Path:
    """Source keypoints and where they landed, numbered alike, coloured by the
    transfer's confidence (with a colour bar)."""
    figure = _figure(10, 5)
    left, right = figure.subplots(1, 2)
    for axis, image, points, name in (
        (left, source_image, source_points, "source keypoints"),
        (right, target_image, target_points, "transferred (colour = confidence)"),
    ):
        axis.imshow(display_rgb(image))
        axis.scatter(
            points[:, 1],
            points[:, 0],
            c=np.clip(confidence, 0, 1),
            cmap="viridis",
            vmin=0,
            vmax=1,
            s=30,
            edgecolors="white",
        )
        for k, (r, c) in enumerate(points):
            axis.annotate(
                str(k),
                (c, r),
                color="white",
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        axis.set_title(name)
        axis.set_axis_off()
    _confidence_bar(figure, [left, right])
    return _save(figure, path, notice)
