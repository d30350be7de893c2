"""Shared fixtures and helpers of the widget tests (imported by tests/test_widget_*.py).

`SyntheticEngine` stands in for the model where a test needs a known right answer or
control over timing: its maps come from `napari_corrseg.synthetic` (a known translation
for two images, moving objects for more), and it can be made slow (checking cancel as a
real engine does) or made to fail.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_corrseg.core.maps import AttentionMaps, ImageGeometry
from napari_corrseg.errors import Cancelled

GRID = (16, 16)
#: The synthetic pair's warp: target = source shifted by this many tokens (row, col).
SHIFT_TOKENS = (0.0, 2.0)


class SyntheticEngine:
    """An engine-shaped object whose maps are synthetic attention with a known answer."""

    is_tiny = False

    def __init__(self, *, delay: float = 0.0, fail: BaseException | None = None) -> None:
        self.delay = delay
        self.fail = fail
        self.calls = 0
        self.identity = {"model": "synthetic", "delay": delay}

    def extract(self, images, *, layers="auto", timestep=261, seed=0, pairs="all",
                progress=None, cancel=None):  # fmt: skip
        from napari_corrseg.synthetic.regions import moving_collection
        from napari_corrseg.synthetic.warps import make_pair, translation

        self.calls += 1
        progress = progress or (lambda stage, fraction: None)
        progress("encode", 0.0)
        steps = max(1, int(self.delay / 0.02))
        for step in range(steps):  # a long "forward pass" that checks cancel
            if cancel is not None and cancel():
                raise Cancelled("cancelled during the forward pass")
            if self.delay:
                time.sleep(self.delay / steps)
            progress("forward", (step + 1) / steps)
        if self.fail is not None:
            raise self.fail
        geometries = [ImageGeometry(tuple(np.shape(im)[:2]), GRID) for im in images]
        if len(images) == 2:
            pair = make_pair(GRID, translation(SHIFT_TOKENS), temperature=0.6, seed=seed)
            maps = {(0, 0): pair.a_ss, (1, 1): pair.a_tt, (0, 1): pair.a_st, (1, 0): pair.a_ts}
        else:
            scene = moving_collection(len(images), GRID, seed=seed)
            maps = {(i, i): m for i, m in enumerate(scene.self_maps)}
            maps.update(scene.cross_maps)
        return AttentionMaps(GRID, geometries, maps, {"model": "synthetic"})


@pytest.fixture(autouse=True)
def _isolated_caches(monkeypatch, tmp_path):
    """Every test gets an empty disk cache and an empty in-memory map cache."""
    from napari_corrseg._widgets import _engines

    monkeypatch.setenv("NAPARI_CORRSEG_CACHE_DIR", str(tmp_path / "cache"))
    _engines.MAPS_CACHE.clear()
    yield
    _engines.MAPS_CACHE.clear()


def install_engine(monkeypatch, engine, model: str = "synthetic", device: str = "cpu") -> None:
    """Make ``get_engine(model, device)`` return ``engine`` for this test."""
    from napari_corrseg._widgets import _engines

    monkeypatch.setitem(_engines._ENGINE, (model, device), engine)


def choose_model(widget, model: str = "synthetic", device: str = "cpu") -> None:
    """Type the model name into a widget's settings (as a user would)."""
    widget.settings.model.value = model
    widget.settings.device.value = device


def run_and_wait(qtbot, widget, timeout: int = 120_000, start=None):
    """Start a run the way the Run button does (or ``start()``), wait until it is shown.

    Returns the outcome (``"done"``, ``"warned"``, ``"cancelled"``, ``"input deleted"``,
    ``"failed"``).
    """
    start = start or (lambda: widget.run(start_thread=False))
    with qtbot.waitSignal(widget.runner.events.idle, timeout=timeout) as blocker:
        worker = start()
        assert worker is not None, f"run refused to start: {widget.status.value}"
        worker.start()
    return blocker.args[0]


def settle(qtbot, widget, timeout: int = 30_000) -> None:
    """Flush debounced controls and wait until the widget has nothing left to show."""
    for name in ("_rematch_soon", "_refloor_soon", "_resegment_soon"):
        debounced = getattr(widget, name, None)
        if debounced is not None:
            debounced.flush()
    qtbot.waitUntil(lambda: widget.runner.idle, timeout=timeout)


def textured_image(shape, seed: int) -> np.ndarray:
    """A smooth random RGB image (uint8): something the tiny model can encode."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(8, 8, 3)).astype(np.float64)
    rows = np.linspace(0, 7, shape[0]).astype(int)
    cols = np.linspace(0, 7, shape[1]).astype(int)
    return small[np.ix_(rows, cols)].astype(np.uint8)


def plugin_layers(viewer, prefix: str = "") -> list:
    """The viewer's plugin-made layers whose role starts with ``prefix``."""
    from napari_corrseg._widgets._tags import PLUGIN_KEY

    return [
        layer
        for layer in viewer.layers
        if isinstance(layer.metadata.get(PLUGIN_KEY), dict)
        and layer.metadata[PLUGIN_KEY].get("role", "").startswith(prefix)
    ]


class TokenEngine:
    """An engine-shaped object that fills a token store with synthetic queries and keys.

    Image ``i`` of a test collection carries its number in pixel ``[0, 0, 0]``
    (`collection_image`); its tokens are image ``i`` of a
    `napari_corrseg.synthetic.tokens.TokenCollection`, whose parts and correspondences
    are known (``engine.tokens``). ``delay`` seconds per image, checking cancel.
    """

    is_tiny = False
    image_size = 64

    def __init__(self, n_images: int = 8, *, grid=GRID, delay: float = 0.0) -> None:
        from napari_corrseg.synthetic.tokens import TokenCollection

        self.tokens = TokenCollection(n_images, grid, layers=1, cache_items=n_images)
        self.grid = tuple(grid)
        self.delay = delay
        self.computed: list[int] = []
        self.identity = {"model": "synthetic-tokens", "images": n_images, "grid": list(grid)}

    def query_key_shape(self, layers="auto") -> tuple[int, ...]:
        tokens = self.tokens
        return (1, tokens.heads, tokens.n_tokens, tokens.head_dim)

    def iter_query_key(self, images, *, layers="auto", timestep=261, seed=0, batch_size=None,
                       memory_budget=None, progress=None, cancel=None):  # fmt: skip
        for position, image in enumerate(images):
            steps = max(1, int(self.delay / 0.02))
            for _ in range(steps):
                if cancel is not None and cancel():
                    raise Cancelled("extraction was cancelled")
                if self.delay:
                    time.sleep(self.delay / steps)
            index = int(np.asarray(image)[0, 0, 0])
            queries, keys = self.tokens.query_key(index)
            self.computed.append(index)
            yield position, queries, keys, ImageGeometry(np.shape(image)[:2], self.grid)


def collection_image(index: int, shape=(64, 64)) -> np.ndarray:
    """Image ``index`` of a test collection: textured RGB, its number in pixel [0, 0, 0]."""
    image = textured_image(shape, 100 + index)
    image[0, 0, 0] = index
    return image


def pixel_geometry(shape=(64, 64)) -> ImageGeometry:
    """The geometry of a test collection image on the synthetic grid."""
    return ImageGeometry(tuple(shape), GRID)
