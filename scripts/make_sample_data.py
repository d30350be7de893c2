"""Generate the shipped sample image pair (src/napari_corrseg/data/sample_{a,b}.png).

The pair is drawn here from simple shapes, so it is ours to license (CC0-1.0, see
src/napari_corrseg/data/README.md): the same toy creature (body, head, two ears, two
eyes, a tail) in two poses, sizes, colours and backgrounds, so that correspondences
and shared segments have a known right answer to eyeball. Deterministic; run

    .venv/bin/python scripts/make_sample_data.py

to rebuild the files byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np

SIZE = 256
OUT = Path(__file__).resolve().parents[1] / "src" / "napari_corrseg" / "data"


def _ellipse(rows, cols, centre, radii, angle=0.0):
    r, c = rows - centre[0], cols - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * r + sin * c, -sin * r + cos * c
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= 1.0


def creature(centre, scale, mirror, body_rgb, background, seed):
    """Draw one image; ``centre`` (row, col) of the body, ``scale`` its size."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    rng = np.random.default_rng(seed)
    top, bottom = np.asarray(background[0], float), np.asarray(background[1], float)
    image = top + (bottom - top) * (rows / SIZE)[..., None]
    image += rng.normal(0, 6, image.shape)  # mild texture so no region is flat
    side = -1.0 if mirror else 1.0
    cy, cx = centre
    body = np.asarray(body_rgb, float)
    head_centre = (cy - 30 * scale, cx + side * 38 * scale)
    parts = [
        (
            _ellipse(
                rows,
                cols,
                (cy + 6 * scale, cx - side * 52 * scale),
                (8 * scale, 30 * scale),
                side * 0.6,
            ),
            body * 0.7,
        ),  # tail
        (_ellipse(rows, cols, (cy, cx), (30 * scale, 48 * scale)), body),  # body
        (
            _ellipse(
                rows,
                cols,
                (head_centre[0] - 24 * scale, head_centre[1] - 12 * scale),
                (12 * scale, 7 * scale),
            ),
            body * 0.6,
        ),  # ear 1
        (
            _ellipse(
                rows,
                cols,
                (head_centre[0] - 24 * scale, head_centre[1] + 12 * scale),
                (12 * scale, 7 * scale),
            ),
            body * 0.6,
        ),  # ear 2
        (_ellipse(rows, cols, head_centre, (22 * scale, 22 * scale)), body * 1.15),  # head
    ]
    for mask, colour in parts:
        image[mask] = np.clip(colour, 0, 255)
    for dx in (-8, 8):  # eyes
        eye = _ellipse(
            rows,
            cols,
            (head_centre[0] - 4 * scale, head_centre[1] + dx * scale),
            (4 * scale, 4 * scale),
        )
        image[eye] = (20, 20, 30)
    nose = _ellipse(
        rows,
        cols,
        (head_centre[0] + 8 * scale, head_centre[1] + side * 2 * scale),
        (3 * scale, 4 * scale),
    )
    image[nose] = (200, 60, 80)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def keypoints(centre, scale, mirror):
    """Named (row, col) keypoints of a creature, consistent between the two poses."""
    side = -1.0 if mirror else 1.0
    cy, cx = centre
    hy, hx = cy - 30 * scale, cx + side * 38 * scale
    return [
        ("body", cy, cx),
        ("head", hy, hx),
        ("nose", hy + 8 * scale, hx + side * 2 * scale),
        ("eye_tail_side", hy - 4 * scale, hx - side * 8 * scale),
        ("eye_far_side", hy - 4 * scale, hx + side * 8 * scale),
        ("ear_tail_side", hy - 24 * scale, hx - side * 12 * scale),
        ("ear_far_side", hy - 24 * scale, hx + side * 12 * scale),
        # far end of the tail ellipse (major radius 30, tilted by 0.6 rad)
        (
            "tail_tip",
            cy + 6 * scale + np.sin(0.6) * 30 * scale,
            cx - side * (52 + np.cos(0.6) * 30) * scale,
        ),
    ]


def write_keypoints(path: Path, points) -> None:
    """napari Points CSV: index, axis-0 (row), axis-1 (col), name."""
    lines = ["index,axis-0,axis-1,name"]
    lines += [f"{k},{r:.2f},{c:.2f},{name}" for k, (name, r, c) in enumerate(points)]
    path.write_text("\n".join(lines) + "\n")


POSES = {
    "a": dict(centre=(140, 120), scale=1.0, mirror=False),
    "b": dict(centre=(120, 140), scale=0.8, mirror=True),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    a = creature(
        body_rgb=(220, 140, 50), background=((170, 210, 240), (90, 160, 80)), seed=1, **POSES["a"]
    )
    b = creature(
        body_rgb=(120, 120, 130),
        background=((240, 220, 190), (150, 120, 90)),
        seed=2,
        **POSES["b"],
    )
    iio.imwrite(OUT / "sample_a.png", a)
    iio.imwrite(OUT / "sample_b.png", b)
    for name, pose in POSES.items():
        write_keypoints(OUT / f"sample_{name}_keypoints.csv", keypoints(**pose))
    print(f"wrote the sample pair and its keypoints to {OUT}")


if __name__ == "__main__":
    main()
