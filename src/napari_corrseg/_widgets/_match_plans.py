"""The Correspondence widget's result layers as plans (built in a worker; no Qt here).

`pair_plan` gives the layers of one pair's matches at a confidence floor (points on both
images, optional lines, optional reliability maps); `query_updates` the two layers of a
point query; `transfer_update` the proposal of a keypoint transfer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..tasks import pipeline
from . import _builders as B
from . import _layers as L
from ._plans import LayerUpdate, Plan
from ._tags import layer_ref

WIDGET = "correspondence"

#: Colormap of each reliability map; True means shown when first created.
METRIC_STYLE = {
    "entropy": ("magma", True),
    "density": ("viridis", False),
    "nims": ("inferno", False),
    "cycle_error": ("turbo", True),
}


def auto_confidence_floor(result: pipeline.PairResult) -> float:
    """The pair's automatic reliability cut (`tasks.pipeline.match_images` reports it)."""
    return float(result.auto_confidence)


def resolve_floor(floor: float | str, result: pipeline.PairResult) -> float:
    """The confidence floor in use: a number, or the automatic one for ``result``."""
    return auto_confidence_floor(result) if floor == "auto" else float(floor)


def extents_overlap(first, second) -> bool:
    """Whether two layers' world extents overlap on the displayed axes."""
    a, b = first.extent.world[:, -2:], second.extent.world[:, -2:]
    return bool(np.all(a[0] < b[1]) and np.all(b[0] < a[1]))


def pair_plan(
    result: pipeline.PairResult,
    pair: tuple,
    floor: float | str,
    lines: bool,
    metrics: bool,
    overlap: bool,
    run_number: int,
    *,
    with_metrics: bool = True,
) -> Plan:
    """The layers of one pair's result at a confidence floor (runs in a worker).

    Parameters
    ----------
    result : PairResult
    pair : (source layer, target layer)
    floor : float or "auto"
        Matches below it are left out (both sides and the lines).
    lines, metrics : bool
        Show the lines / the reliability maps (False removes them).
    overlap : bool
        Whether the two images overlap in the viewer (a hint in the status line).
    run_number : int
    with_metrics : bool
        False leaves the reliability maps as they are (a change of floor or count does
        not change them).
    """
    source, target = pair
    floor = resolve_floor(floor, result)
    keep = np.flatnonzero(result.confidence >= floor)
    features = pd.DataFrame(
        {
            "match_id": keep,
            "confidence": result.confidence[keep],
            "cycle_error": result.cycle_error[keep],
            "entropy": result.entropy[keep],
        }
    )
    colors = L.match_colors(keep)
    refs = (layer_ref(source), layer_ref(target))
    plan = Plan(WIDGET, run=run_number)
    for side, layer, ref, points in (
        ("source", source, refs[0], result.source_points),
        ("target", target, refs[1], result.target_points),
    ):
        plan.updates.append(
            B.match_points(
                points[keep],
                features,
                colors,
                side=side,
                image_layer=layer,
                image_ref=ref,
                info={"ims": float(result.ims), "floor": floor},
            )
        )
    if lines:
        plan.updates.append(
            B.match_lines(
                result.source_points[keep], result.target_points[keep], colors, source, target
            )
        )
    else:
        plan.removes.append({"role": "matches:lines"})
    if with_metrics:
        for name, (colormap, visible) in METRIC_STYLE.items():
            if not metrics:
                plan.removes.append({"role": f"metric:{name}"})
                continue
            metric = result.metrics[name]
            layer, ref = (source, refs[0]) if metric.image == result.source else (target, refs[1])
            plan.updates.append(
                B.grid_map(
                    metric.values,
                    metric.geometry,
                    role=f"metric:{name}",
                    name=f"{name.replace('_', ' ')} on {{image}}",
                    image_layer=layer,
                    image_ref=ref,
                    colormap=colormap,
                    visible=visible,
                    contrast_limits=L.value_range(metric.values),
                    info={"description": metric.description},
                )
            )
    summary = (
        f"{len(keep)} of {len(result)} matches shown (confidence ≥ {floor:.2f}); "
        f"inverse mapping score {result.ims:.2f} grid cells"
    )
    if lines and overlap:
        summary += "; the images overlap: translate the target beside the source to see the lines"
    plan.summary = summary
    plan.inputs = [(source, "source image"), (target, "target image")]
    return plan


def query_updates(found: pipeline.PointQuery, from_layer, to_layer, pixel) -> list[LayerUpdate]:
    """The heatmap over the image queried and the clicked / best-match marks."""
    heatmap = B.grid_map(
        found.heatmap,
        found.target_geometry,
        role="query:heatmap",
        name="query heatmap",
        image_layer=to_layer,
        image_ref=layer_ref(to_layer),
        colormap="inferno",
        contrast_limits=L.value_range(found.heatmap),
        group="query",
        blending="additive",
        opacity=1.0,
    )
    heatmap.keys = {"role": "query:heatmap"}  # one heatmap, whichever side it is on
    ends = np.concatenate(
        [L.pixel_to_world(from_layer, pixel), L.pixel_to_world(to_layer, found.best)]
    )
    size = max(4.0, 0.03 * float(np.max(L.plane_shape(to_layer) * to_layer.scale[-2:])))
    marks = LayerUpdate(
        kind="points",
        data=ends,
        keys={"role": "query:points"},
        name="query",
        placement=None,
        group="query",
        properties={
            "features": pd.DataFrame({"end": ["clicked", "best match"]}),
            "face_color": np.array([[1, 1, 1, 1], [0, 1, 0.4, 1]], dtype=np.float32),
        },
        style={"size": size, "symbol": "cross"},
    )
    return [heatmap, marks]


def transfer_update(
    moved: pipeline.KeypointTransfer,
    user_features: pd.DataFrame,
    points_layer,
    points_name: str,
    target,
) -> LayerUpdate:
    """The proposal of a keypoint transfer on the target, coloured by confidence."""
    features = user_features.copy()
    features["point_id"] = np.arange(len(moved.source_points))
    features["confidence"] = moved.confidence
    features["cycle_error"] = moved.cycle_error
    return B.confidence_points(
        moved.target_points,
        features,
        role="transfer",
        name=f"{points_name} on {{image}}",
        image_layer=target,
        image_ref=layer_ref(target),
        source_ref=layer_ref(points_layer),
        group="transfer",
        info={"from_layer": points_name},
    )


__all__ = [
    "METRIC_STYLE",
    "auto_confidence_floor",
    "extents_overlap",
    "pair_plan",
    "query_updates",
    "resolve_floor",
    "transfer_update",
]
