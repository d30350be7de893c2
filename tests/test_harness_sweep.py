"""``evaluate --sweep``: every recipe of the paper's open choices, one table, one command."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_corrseg.harness import synthetic_data
from napari_corrseg.harness.sweep import SweepRow, auroc, sweep, sweep_markdown


def test_auroc_by_hand():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert np.isnan(auroc([0.3, 0.4], [True, True]))


def test_markdown_table_names_every_recipe_and_its_layers():
    rows = [
        SweepRow(
            "middle", "separate", "up_blocks.2.attentions.1", 2, 10, 0.5, 0.7, 0.4, 0.6, 0.75, 3.2
        ),
        SweepRow("average", "joint", "a b c", 2, 10, 0.6, float("nan"), 0.5, 0.5, 0.8, 2.9),
    ]
    text = sweep_markdown(rows, 0.1)
    assert "| middle | separate | 10 | 0.500 | 0.700 | 0.400 | 0.600 | 0.750 | 3.200 |" in text
    assert "| average | joint | 10 | 0.600 | n/a |" in text
    assert "PCK@0.1" in text and "middle = up_blocks.2.attentions.1" in text


@pytest.mark.slow
def test_sweep_runs_every_recipe_on_a_tiny_benchmark(tmp_path, tiny_engine):
    root = tmp_path / "willow"
    synthetic_data.write_pf_willow(root, n_pairs=2, n_points=4)
    calls = []
    handle = tiny_engine.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        rows = sweep("pf-willow", root, tmp_path / "out", engine=tiny_engine)
    finally:
        handle.remove()
    assert len(calls) == 2, "one UNet pass per pair, whatever the number of recipes"
    assert [(r.layers, r.partition) for r in rows] == [
        (layers, partition)
        for layers in ("middle", "average", "coarse+average")
        for partition in ("separate", "joint")
    ]
    for row in rows:
        assert row.n_points == 8 and 0 <= row.pck <= 1 and 0 <= row.kept <= 1
        assert np.isfinite(row.ims)
    with open(tmp_path / "out" / "sweep.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 6 and table[0]["layers"] == "middle"
    assert "| coarse+average | joint |" in (tmp_path / "out" / "sweep.md").read_text()


@pytest.mark.slow
def test_cli_evaluate_sweep_prints_one_table(tmp_path, capsys):
    from napari_corrseg import cli

    root, out = tmp_path / "pascal", tmp_path / "out"
    synthetic_data.write_pf_pascal(root, n_pairs=1)
    args = ["evaluate", "--dataset", "pf-pascal", "--root", str(root), "--out", str(out)]
    code = cli.main([*args, "--model", "tiny", "--sweep", "--alpha", "0.1", "-q"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| layers | partition | points | PCK@0.1 |" in printed
    assert printed.count("| separate |") == 3 and printed.count("| joint |") == 3
    assert (out / "sweep.csv").is_file() and (out / "sweep.json").is_file()
    code = cli.main(
        ["evaluate", "--dataset", "coseg", "--root", str(root), "--out", str(out), "--sweep"]
    )
    error = capsys.readouterr().err
    assert code != 0 and "--sweep" in error and "Traceback" not in error
