"""The demo's rendered picture of napari (starts its own Xvfb; tens of seconds)."""

from __future__ import annotations

import json
import shutil

import imageio.v3 as iio
import pytest

from napari_corrseg import cli

pytestmark = [pytest.mark.slow, pytest.mark.gui]


@pytest.fixture
def run(tmp_path, monkeypatch, capsys, tiny_engine):
    import napari_corrseg.engine as engine_module

    monkeypatch.setattr(engine_module, "load_engine", lambda *a, **k: tiny_engine)
    monkeypatch.setenv("NAPARI_CORRSEG_CACHE_DIR", str(tmp_path / "cache"))

    def invoke(*args):
        code = cli.main([str(a) for a in args])
        return code, capsys.readouterr().err

    return invoke


@pytest.mark.gui
@pytest.mark.skipif(not shutil.which("Xvfb"), reason="needs Xvfb to draw napari")
def test_demo_renders_a_picture_of_napari(run, tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)  # the demo starts its own Xvfb
    out = tmp_path / "demo"
    code, err = run("demo", "--out", out, "--model", "tiny")
    assert code == 0, err
    picture = iio.imread(out / "napari.png")
    assert picture.ndim == 3 and picture.shape[0] > 300 and picture.shape[1] > 500
    assert picture[..., :3].std() > 10  # not a blank (black) screenshot
    assert "napari.png" in json.loads((out / "run.json").read_text())["outputs"]
