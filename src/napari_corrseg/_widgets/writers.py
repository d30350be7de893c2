"""napari writer: a pair of match Points layers saved as one CSV, one row per match.

The file has the same columns as the command line's ``matches.csv``
(`napari_corrseg.files.export.MATCH_COLUMNS`: ``match_id, source_row, source_col, target_row,
target_col, confidence, cycle_error, entropy``), coordinates in image pixels
``(row, col)`` of each layer's own image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OutputError
from ..files.io import write_csv

PLUGIN_KEY = "napari_corrseg"
RELEASED_KEY = "napari_corrseg_released"  # a match layer the user corrected is saved too
FEATURE_COLUMNS = ("confidence", "cycle_error", "entropy")


def _side(meta: dict[str, Any]) -> str | None:
    metadata = meta.get("metadata") or {}
    mark = metadata.get(PLUGIN_KEY) or metadata.get(RELEASED_KEY) or {}
    role = mark.get("role", "") if isinstance(mark, dict) else ""
    return role.split(":", 1)[1] if role.startswith("matches:") else None


def _column(features: Any, name: str, n_rows: int) -> np.ndarray:
    if features is None or name not in features:
        raise OutputError(f"the match layers have no {name!r} feature; rerun the matching")
    values = np.asarray(features[name]).reshape(-1)
    if len(values) != n_rows:
        raise OutputError(f"feature {name!r} has {len(values)} rows for {n_rows} points")
    return values


def write_matches_csv(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """Write the source and target match layers made by the Correspondence widget.

    Parameters
    ----------
    path : str
        Destination ``.csv``.
    layer_data : list of (data, meta, layer_type)
        Exactly two Points layers, the ``matches on ...`` layers of one run.

    Returns
    -------
    list of str
        The path written.
    """
    sides = {}
    for data, meta, layer_type in layer_data:
        side = _side(meta)
        if layer_type != "points" or side not in ("source", "target"):
            raise OutputError(
                "select the two 'matches on ...' Points layers made by the Correspondence "
                "widget to save matches as one CSV"
            )
        sides[side] = (np.asarray(data, dtype=np.float64), meta.get("features"))
    if set(sides) != {"source", "target"}:
        raise OutputError("select both the source and the target match layers")
    (source, source_features), (target, _) = sides["source"], sides["target"]
    if len(source) != len(target):
        raise OutputError(
            f"the source layer has {len(source)} points and the target {len(target)}; "
            "select two match layers of the same run"
        )
    from ..files.export import MATCH_COLUMNS

    ids = _column(source_features, "match_id", len(source))
    columns = [_column(source_features, name, len(source)) for name in FEATURE_COLUMNS]
    rows = [
        [int(ids[k]), *map(float, source[k, -2:]), *map(float, target[k, -2:])]
        + [float(column[k]) for column in columns]
        for k in range(len(source))
    ]
    write_csv(path, MATCH_COLUMNS, rows)
    return [str(path)]
