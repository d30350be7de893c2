"""napari sample data (File > Open Sample > napari-corrseg): the shipped image pair."""

from __future__ import annotations

import numpy as np

from ..files.sample_data import load_sample_pair

#: Gap, in pixels, between the two images of the side-by-side sample.
SIDE_BY_SIDE_GAP = 16


def sample_pair() -> list[tuple[np.ndarray, dict]]:
    """The sample pair as two RGB image layers on top of each other."""
    images = load_sample_pair()
    return [
        (image, {"name": f"sample {letter}", "rgb": True})
        for image, letter in zip(images, "AB", strict=True)
    ]


def sample_pair_side_by_side() -> list[tuple[np.ndarray, dict]]:
    """The sample pair with B translated to the right of A, so match lines are visible."""
    first, second = load_sample_pair()
    offset = first.shape[1] + SIDE_BY_SIDE_GAP
    return [
        (first, {"name": "sample A", "rgb": True}),
        (second, {"name": "sample B", "rgb": True, "translate": (0, offset)}),
    ]
