"""A shown viewer with the plugin's results, captured as the docs screenshots are.

The pictures go to a temporary folder: the committed ones under docs/images/ are
regenerated on purpose with ``scripts/make_screenshots.py``, never as a test's side effect.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_corrseg._widgets._screenshots import SCREENSHOTS, make_screenshots
from test_widget_support import _isolated_caches, install_engine  # noqa: F401

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_screenshots_of_the_shown_viewer(make_napari_viewer, monkeypatch, tiny_engine, tmp_path):
    install_engine(monkeypatch, tiny_engine, "tiny")
    viewer = make_napari_viewer(show=True)
    written = make_screenshots(viewer, tmp_path, model="tiny")
    assert [path.name for path in written] == list(SCREENSHOTS)
    import imageio.v3 as iio

    for path in written:
        picture = iio.imread(path)
        assert picture.shape[0] > 400 and picture.shape[1] > 800, path.name
        rgb = picture[..., :3].astype(float)
        assert rgb.mean() > 10 and rgb.std() > 10, f"{path.name} is (nearly) blank"
        # the sample images' colours appear: not just the dark napari theme
        assert len(np.unique(rgb.reshape(-1, 3)[::97], axis=0)) > 50, path.name
