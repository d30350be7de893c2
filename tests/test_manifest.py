"""The npe2 manifest: valid, every command importable, sample data and the CSV writer work."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from npe2 import PluginManifest

from napari_corrseg._widgets._layers import PLUGIN_KEY
from napari_corrseg.errors import OutputError


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    return PluginManifest.from_distribution("napari-corrseg")


def test_manifest_validates_and_every_command_imports(manifest):
    from npe2.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["validate", "napari-corrseg", "--imports"])
    assert result.exit_code == 0, result.output
    commands = {command.id: command for command in manifest.contributions.commands}
    for command in commands.values():
        assert callable(_resolve(command)), command.id
    widgets = {widget.display_name for widget in manifest.contributions.widgets}
    assert widgets == {"Correspondence", "Co-segmentation", "Collection"}
    assert {sample.key for sample in manifest.contributions.sample_data} == {
        "pair",
        "pair_side_by_side",
    }


def _resolve(command):
    module, name = command.python_name.split(":")
    return getattr(__import__(module, fromlist=[name]), name)


def test_sample_data_gives_two_rgb_layers_side_by_side():
    from napari_corrseg._widgets.sample import sample_pair, sample_pair_side_by_side

    pair = sample_pair()
    assert [meta["name"] for _, meta in pair] == ["sample A", "sample B"]
    for data, meta in pair:
        assert data.ndim == 3 and data.shape[-1] == 3 and meta["rgb"]
    (first, _), (_, meta_b) = sample_pair_side_by_side()
    assert meta_b["translate"][1] > first.shape[1], "B must sit right of A, not over it"


def _match_layers(n: int = 5):
    from napari.layers import Points

    rng = np.random.default_rng(0)
    source, target = rng.uniform(0, 60, (n, 2)), rng.uniform(0, 60, (n, 2))
    features = {
        "match_id": np.arange(n),
        "confidence": rng.uniform(0, 1, n),
        "cycle_error": rng.uniform(0, 3, n),
        "entropy": rng.uniform(0, 5, n),
    }
    layers = [
        Points(points, features=features, metadata={PLUGIN_KEY: {"role": f"matches:{side}"}})
        for side, points in (("source", source), ("target", target))
    ]
    return layers, source, target, features


def test_writer_saves_both_match_layers_as_one_csv(tmp_path):
    from napari.plugins.io import save_layers
    from npe2 import PluginManager

    from napari_corrseg.files.export import MATCH_COLUMNS

    PluginManager.instance().discover()  # what napari does at start-up
    layers, source, target, features = _match_layers()
    path = tmp_path / "matches.csv"
    written = save_layers(str(path), layers[::-1], plugin="napari-corrseg")
    assert written == [str(path)]
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == MATCH_COLUMNS
    table = np.array(rows[1:], dtype=float)
    np.testing.assert_array_equal(table[:, 0], features["match_id"])
    np.testing.assert_allclose(table[:, 1:3], source, rtol=1e-5)
    np.testing.assert_allclose(table[:, 3:5], target, rtol=1e-5)
    np.testing.assert_allclose(table[:, 5], features["confidence"], rtol=1e-5)


def test_writer_refuses_layers_that_are_not_a_match_pair(tmp_path):
    from napari.layers import Points

    from napari_corrseg._widgets.writers import write_matches_csv

    layers, *_ = _match_layers()
    stranger = Points(np.zeros((5, 2)))
    data = [layers[0].as_layer_data_tuple(), stranger.as_layer_data_tuple()]
    with pytest.raises(OutputError, match="matches on"):
        write_matches_csv(str(tmp_path / "x.csv"), data)
    assert not (tmp_path / "x.csv").exists()
