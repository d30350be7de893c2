"""The evaluate driver: tables, curve and CLI on tiny synthetic benchmarks."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_corrseg.harness import synthetic_data
from napari_corrseg.harness.datasets import read_spair
from napari_corrseg.harness.methods import Prediction
from napari_corrseg.harness.run import evaluate

SCALE, SHIFT = 0.9, np.array([3.0, -2.0])  # synthetic_data.make_pair's default warp


class _OracleWithKnownErrors:
    """Knows the warp; misplaces keypoint k by k pixels along the rows, confidence -k."""

    name = "oracle"

    def predict(self, source_image, target_image, source_points):
        offsets = np.arange(len(source_points), dtype=float)
        points = SCALE * source_points + SHIFT + np.stack([offsets, 0 * offsets], axis=1)
        return Prediction(points, -offsets)

    def describe(self):
        return {"method": self.name}


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_writes_tables_with_hand_checked_pck(tmp_path):
    root, out = tmp_path / "spair", tmp_path / "out"
    synthetic_data.write_spair(root, n_pairs=3)
    report = evaluate("spair", root, out, method=_OracleWithKnownErrors(), alphas=(0.1, 0.2))
    pairs = read_spair(root)
    for alpha in (0.1, 0.2):
        per_pair = [np.mean(np.arange(p.n_points) <= alpha * p.threshold_size) for p in pairs]
        n_correct = sum(np.sum(np.arange(p.n_points) <= alpha * p.threshold_size) for p in pairs)
        row = report.row("all", alpha)
        assert row.n_pairs == 3 and row.n_points == sum(p.n_points for p in pairs)
        assert row.pck_per_image == pytest.approx(np.mean(per_pair))
        assert row.pck_per_point == pytest.approx(n_correct / row.n_points)
    assert {r.category for r in report.rows} == {"cat", "dog", "all"}

    summary = _read_csv(out / "pck.csv")
    assert len(summary) == 2 * 3
    overall = report.row("all", 0.2).pck_per_point
    assert float(summary[-1]["pck_per_point"]) == pytest.approx(overall)
    assert len(_read_csv(out / "points.csv")) == sum(p.n_points for p in pairs)
    assert len(_read_csv(out / "pairs.csv")) == 3
    markdown = (out / "pck.md").read_text()
    assert "per image" in markdown and "per point" in markdown and "target bbox" in markdown
    assert (out / "coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # confidence = -error: the most confident keypoints are the right ones
    coverage = _read_csv(out / "coverage.csv")
    precision = [float(row["pck@0.1"]) for row in coverage]
    assert precision[0] == 1.0 > precision[-1]
    assert precision[-1] == pytest.approx(report.row("all", 0.1).pck_per_point)


def test_pair_whose_keypoints_are_all_missing_is_counted_not_predicted(tmp_path):
    import json

    root = tmp_path / "spair"
    synthetic_data.write_spair(root, n_pairs=2, categories=("cat",))
    path = sorted((root / "PairAnnotation" / "test").glob("*.json"))[0]
    data = json.loads(path.read_text())
    data["trg_kps"] = [[-1, -1]] * len(data["trg_kps"])
    path.write_text(json.dumps(data))
    report = evaluate("spair", root, tmp_path / "out", method=_OracleWithKnownErrors())
    row = report.row("all", 0.1)
    assert row.n_pairs == 2 and row.n_points == read_spair(root)[1].n_points


def test_evaluate_fails_on_missing_dataset_before_loading_a_model(tmp_path):
    from napari_corrseg.harness.datasets import DatasetError

    with pytest.raises(DatasetError, match="PairAnnotation"):
        evaluate("spair", tmp_path / "nothing", tmp_path / "out", model="no-such-model")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["attention", "attention+mutual", "dift"])
def test_evaluate_end_to_end_on_the_tiny_model(tmp_path, tiny_engine, method):
    root, out = tmp_path / "willow", tmp_path / "out"
    synthetic_data.write_pf_willow(root, n_pairs=2, n_points=4)
    options = {"image_size": 64, "ensemble_size": 1} if method == "dift" else {}
    report = evaluate(
        "pf-willow", root, out, method=method, engine=tiny_engine, method_options=options
    )
    row = report.row("all", 0.1)
    assert (row.n_pairs, row.n_points) == (2, 8)
    assert 0.0 <= row.pck_per_point <= 1.0
    points = _read_csv(out / "points.csv")
    assert len(points) == 8
    assert all(np.isfinite(float(p["pred_row"])) for p in points)
    assert f"`{method}`" in (out / "pck.md").read_text()


@pytest.mark.slow
def test_cli_evaluate_runs_and_reports_bad_roots(tmp_path, capsys):
    from napari_corrseg import cli  # registers evaluate via napari_corrseg.harness.cli

    root, out = tmp_path / "pascal", tmp_path / "out"
    synthetic_data.write_pf_pascal(root, n_pairs=1)
    code = cli.main(
        [
            "evaluate",
            "--dataset",
            "pf-pascal",
            "--root",
            str(root),
            "--out",
            str(out),
            "--model",
            "tiny",
            "--limit",
            "1",
            "--alpha",
            "0.1",
            "-q",
        ]
    )
    assert code == 0
    assert "| **all** | 0.1 | 1 |" in capsys.readouterr().out
    assert (out / "pck.csv").is_file()
    code = cli.main(
        [
            "evaluate",
            "--dataset",
            "pf-willow",
            "--root",
            str(tmp_path / "none"),
            "--out",
            str(out),
            "--model",
            "tiny",
        ]
    )
    error = capsys.readouterr().err
    assert code == 1 and "test_pairs.csv" in error and "Traceback" not in error


def test_cosegmentation_scores_by_hand():
    from napari_corrseg.harness.coseg import score_cosegmentation

    truth = [np.array([[0, 0, 1, 1]]), np.array([[1, 1, 0, 0]])]
    consistent = [np.array([[5, 5, 7, 7]]), np.array([[7, 7, 5, 5]])]
    swapped = [np.array([[5, 5, 7, 7]]), np.array([[5, 5, 7, 7]])]  # ids flip between images
    good = score_cosegmentation(consistent, truth, ["a", "b"])
    assert good.miou == 1.0 and good.miou_collection == 1.0 and good.jaccard == 1.0
    bad = score_cosegmentation(swapped, truth, ["a", "b"])
    assert bad.miou == 1.0  # per-image matching cannot see the inconsistency
    assert bad.miou_collection == pytest.approx(1 / 3)  # 2 of 6 px per id in union
    assert bad.jaccard == pytest.approx(0.5)  # foreground id 7: right in a, wrong in b


@pytest.mark.slow
def test_cosegmentation_folder_end_to_end(tmp_path, tiny_engine):
    pytest.importorskip("napari_corrseg.core.cosegmentation")
    from napari_corrseg.harness.coseg import evaluate_cosegmentation

    root = synthetic_data.write_coseg_folder(tmp_path / "coseg", n_images=2)
    scores = evaluate_cosegmentation(root, tmp_path / "out", engine=tiny_engine)
    assert len(scores.miou_per_image) == 2
    assert 0.0 <= scores.miou_collection <= 1.0
    assert "mIoU collection" in (tmp_path / "out" / "coseg.md").read_text()
