"""The Collection widget driven as a user drives it, in a real napari viewer (Xvfb).

A collection of 8 images whose tokens come from `TokenEngine` (synthetic queries and
keys with known parts and correspondences): mark keypoints on one image, get proposals
on the 7 others, browse, accept / correct / reject, propose again from the grown set of
references, save, reopen. Cancel, deleted layers, closing, co-segmentation and stacks
are in tests/test_widget_collection_runs.py; the tiny model runs the real engine path in
tests/test_widget_collection_tiny.py.
"""

from __future__ import annotations

import csv
import json

import imageio.v3 as iio
import numpy as np
import pytest
from napari.utils.notifications import notification_manager

from napari_corrseg._widgets import CollectionWidget
from napari_corrseg._widgets._tags import PLUGIN_KEY
from napari_corrseg.files.io import read_points_table
from test_widget_support import (  # noqa: F401 - the autouse fixture must be imported
    TokenEngine,
    _isolated_caches,
    choose_model,
    collection_image,
    install_engine,
    pixel_geometry,
    plugin_layers,
    run_and_wait,
)

pytestmark = pytest.mark.gui

N_IMAGES = 8


@pytest.fixture
def records(monkeypatch):
    """The notifications shown during the test."""
    monkeypatch.setattr(notification_manager, "records", [])
    return notification_manager.records


def write_folder(tmp_path):
    """Eight PNG files img0.png ... img7.png in ``tmp_path/images``."""
    path = tmp_path / "images"
    path.mkdir()
    for index in range(N_IMAGES):
        iio.imwrite(path / f"img{index}.png", collection_image(index))
    return path


@pytest.fixture
def folder(tmp_path):
    """Eight PNG files img0.png ... img7.png."""
    return write_folder(tmp_path)


def make_widget(viewer, monkeypatch, tmp_path, engine=None) -> CollectionWidget:
    widget = CollectionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    engine = engine or TokenEngine(N_IMAGES)
    install_engine(monkeypatch, engine)
    choose_model(widget)
    widget.form.store.value = tmp_path / "store"
    widget.engine = engine
    return widget


def load_folder(qtbot, widget, folder) -> str:
    widget.form.source_kind.value = "folder"
    widget.form.folder.value = folder
    return run_and_wait(qtbot, widget, start=lambda: widget.load(start_thread=False))


def wait_shown(qtbot, widget, index: int) -> None:
    widget.go(index)
    qtbot.waitUntil(lambda: widget.runner.idle and widget.session.current == index, timeout=10_000)


def layer(viewer, role: str):
    found = plugin_layers(viewer, role)
    found = [f for f in found if f.metadata[PLUGIN_KEY]["role"] == role]
    assert len(found) == 1, [f.name for f in plugin_layers(viewer)]
    return found[0]


def object_centres(engine, image: int) -> np.ndarray:
    """Grid (row, col) of each object's centre on ``image`` and a background point."""
    boxes = engine.tokens.layout(image).boxes.values()
    centres = [[r + (h - 1) / 2, c + (w - 1) / 2] for r, c, h, w in boxes]
    return np.array([*centres, [1.0, 1.0]])


def within_a_token(found_px: np.ndarray, truth_grid: np.ndarray) -> np.ndarray:
    found = pixel_geometry().pixel_to_grid(found_px)
    return np.abs(found - truth_grid).max(axis=1) <= 1.0


def annotate_and_propose(qtbot, viewer, widget, points_grid: np.ndarray) -> None:
    points = layer(viewer, "collection:points")
    points.add(pixel_geometry().grid_to_pixel(points_grid))  # the user clicks them
    assert run_and_wait(qtbot, widget, start=lambda: widget.propose(start_thread=False)) in (
        "done",
        "warned",
    )


def test_eight_images_get_proposals_on_the_seven_others_and_are_saved(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, folder
):
    viewer = make_napari_viewer()
    widget = make_widget(viewer, monkeypatch, tmp_path)
    assert load_folder(qtbot, widget, folder) == "done"
    assert "8 images: computed 8" in widget.status.value
    session = widget.session
    assert session.names == [f"img{k}" for k in range(N_IMAGES)]
    # one image at a time: the first one, its (empty) keypoints layer on top
    image = layer(viewer, "collection:image:rgb")
    np.testing.assert_array_equal(image.data, collection_image(0))
    assert image.metadata[PLUGIN_KEY]["image"] == f"image:{session.keys[0]}"
    assert len(layer(viewer, "collection:points").data) == 0

    truth_points = object_centres(widget.engine, 0)
    annotate_and_propose(qtbot, viewer, widget, truth_points)
    assert session.entries[0].status == "annotated"
    assert [e.status for e in session.entries[1:]] == ["proposed"] * 7
    for target in range(1, N_IMAGES):
        proposal = session.entries[target].points
        truth = widget.engine.tokens.corresponding(0, target, truth_points)
        seen = ~np.isnan(truth[:, 0])
        assert within_a_token(proposal.points[seen], truth[seen]).all(), target
        assert (proposal.confidence >= 0).all() and (proposal.confidence <= 1).all()
        assert (proposal.source[proposal.confidence > 0] == 0).all()
    # browsing shows a proposal, coloured by confidence on fixed limits
    wait_shown(qtbot, widget, 3)
    points = layer(viewer, "collection:points")
    assert points.name == "keypoints on img3"
    np.testing.assert_allclose(points.face_contrast_limits, (0, 1))
    proposal = session.entries[3].points
    marked = np.isfinite(proposal.points).all(axis=1)
    np.testing.assert_allclose(points.data, proposal.points[marked])
    np.testing.assert_allclose(points.features["confidence"], proposal.confidence[marked])
    np.testing.assert_array_equal(layer(viewer, "collection:image:rgb").data, collection_image(3))
    assert "image 4 of 8: img3 · proposed" in widget.form.position.value

    out = tmp_path / "session"
    widget.form.out.value = out
    assert run_and_wait(qtbot, widget, start=lambda: widget.save(start_thread=False)) == "done"
    assert not session.dirty
    with open(out / "summary.csv", newline="") as handle:
        summary = list(csv.DictReader(handle))
    assert sorted(row["image"] for row in summary) == session.names
    scores = [float(row["score"]) for row in summary]
    assert scores == sorted(scores), "least confident first"
    assert {row["image"]: row["status"] for row in summary}["img0"] == "annotated"
    for index in range(N_IMAGES):
        table = read_points_table(out / "points" / f"img{index}.csv", allow_missing=True)
        expected = truth_points if index == 0 else None
        saved = session.entries[index].points.points
        np.testing.assert_allclose(table.points, saved, atol=1e-4, equal_nan=True)
        if expected is not None:
            np.testing.assert_allclose(pixel_geometry().pixel_to_grid(table.points), expected)
        assert set(table.columns) >= {"keypoint_id", "confidence", "source", "cycle_error"}
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "complete" and record["session"]["images"][3]["status"] == (
        "proposed"
    )


def test_review_accept_edit_reject_and_propose_on_the_rest(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, folder
):
    from napari_corrseg._widgets import _collection_jobs

    viewer = make_napari_viewer()
    widget = make_widget(viewer, monkeypatch, tmp_path)
    load_folder(qtbot, widget, folder)
    session, engine = widget.session, widget.engine
    centres = object_centres(engine, 0)
    annotate_and_propose(qtbot, viewer, widget, centres)
    scores = {i: session.entries[i].score for i in range(1, N_IMAGES)}
    order = sorted(scores, key=lambda i: (scores[i], i))

    # navigation: least confident, next, previous
    widget.form.advance.value = True
    widget.go_least_confident()
    qtbot.waitUntil(lambda: widget.runner.idle and session.current == order[0], timeout=10_000)
    following = min(order[0] + 1, N_IMAGES - 1)
    widget.form.next_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.runner.idle and session.current == following, timeout=10_000)
    widget.form.previous_button.clicked.emit()
    expected = following - 1 if following != order[0] else order[0] - 1
    qtbot.waitUntil(lambda: widget.runner.idle and session.current == expected, timeout=10_000)
    widget.go_least_confident()
    qtbot.waitUntil(lambda: widget.runner.idle and session.current == order[0], timeout=10_000)

    # reject the worst: the next least confident is shown
    rejected = order[0]
    widget.form.reject_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.runner.idle and session.current == order[1], timeout=10_000)
    assert session.entries[rejected].status == "rejected"

    # correct the next one: move its first proposed point, add a keypoint image 0 lacks
    edited = order[1]
    geometry = pixel_geometry()
    points = layer(viewer, "collection:points")
    data = np.array(points.data)
    moved_id = int(points.features["keypoint_id"].iloc[0])
    data[0] += 2.0
    points.data = data  # napari's move keeps the features
    layout = engine.tokens.layout(edited)
    part = sorted(layout.boxes)[-1]
    r, c, h, w = layout.boxes[part]
    new_point = np.array([[r + (h - 1) / 2, c + (w - 1) / 2]])  # the centre of that part
    points.add(geometry.grid_to_pixel(new_point))
    widget.form.accept_button.clicked.emit()  # an edit is taken as corrected
    qtbot.waitUntil(lambda: widget.runner.idle and session.current == order[2], timeout=10_000)
    entry = session.entries[edited]
    assert entry.status == "edited" and session.n_keypoints == len(centres) + 1
    np.testing.assert_allclose(entry.points.points[moved_id], data[0])
    np.testing.assert_allclose(entry.points.points[-1], geometry.grid_to_pixel(new_point)[0])

    # accept the third as it is
    accepted = order[2]
    accepted_points = session.entries[accepted].points.points.copy()
    widget.form.accept_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.runner.idle and session.current == order[3], timeout=10_000)
    assert session.entries[accepted].status == "accepted"
    assert widget.form.propose_button.text == f"Propose on the remaining {N_IMAGES - 4}"

    # propose again: the references are 0, the edited and the accepted image; only the
    # remaining images are recomputed
    calls = []
    propose = _collection_jobs.propose

    def spy(session, keypoints, labels, targets, progress, cancel):
        calls.append((sorted(keypoints), list(targets)))
        return propose(session, keypoints, labels, targets, progress, cancel)

    monkeypatch.setattr(_collection_jobs, "propose", spy)
    before = {i: session.entries[i] for i in (rejected, edited, accepted)}
    assert run_and_wait(qtbot, widget, start=lambda: widget.propose(start_thread=False)) in (
        "done",
        "warned",
    )
    remaining = sorted(set(range(1, N_IMAGES)) - {rejected, edited, accepted})
    assert calls == [(sorted([0, edited, accepted]), remaining)]
    for index, entry in before.items():
        assert session.entries[index] is entry, "reviewed images are not recomputed"
    np.testing.assert_allclose(session.entries[accepted].points.points[: len(centres)],
                               accepted_points)  # fmt: skip
    # the keypoint only the corrected image has reaches the rest, from that image
    checked = 0
    for target in remaining:
        proposal = session.entries[target].points
        assert len(proposal.points) == len(centres) + 1
        truth = engine.tokens.corresponding(edited, target, new_point)
        if np.isnan(truth).any():  # that part is missing from this image
            continue
        assert proposal.source[-1] == edited
        assert within_a_token(proposal.points[-1:], truth).all(), target
        checked += 1
    assert checked >= 2


def messages(records, severity=None) -> list[str]:
    return [r.message for r in records if severity is None or r.severity == severity]


def reviewed_session(qtbot, viewer, widget, folder):
    """Load, annotate image 0, propose, reject one, correct one, accept one."""
    load_folder(qtbot, widget, folder)
    session = widget.session
    annotate_and_propose(qtbot, viewer, widget, object_centres(widget.engine, 0))
    widget.form.advance.value = False
    wait_shown(qtbot, widget, 1)
    widget.reject()
    wait_shown(qtbot, widget, 2)
    points = layer(viewer, "collection:points")
    points.data = np.array(points.data) + 1.5  # the user moves every point
    widget.accept()
    wait_shown(qtbot, widget, 3)
    widget.accept()
    wait_shown(qtbot, widget, 5)
    return session


def test_a_saved_session_reopens_as_it_was(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, folder, records
):
    viewer = make_napari_viewer()
    widget = make_widget(viewer, monkeypatch, tmp_path)
    session = reviewed_session(qtbot, viewer, widget, folder)
    assert [e.status for e in session.entries[:4]] == ["annotated", "rejected", "edited",
                                                      "accepted"]  # fmt: skip
    out = tmp_path / "session"
    widget.form.out.value = out
    run_and_wait(qtbot, widget, start=lambda: widget.save(start_thread=False))
    assert not (out / "points" / "img1.csv").exists(), "a rejected proposal is not saved"

    # a new widget (as after restarting napari) reopens it: statuses, points, image shown
    for dock in list(viewer.window._dock_widgets.values()):
        viewer.window.remove_dock_widget(dock)
    viewer.layers.clear()
    reopened = make_widget(viewer, monkeypatch, tmp_path)
    reopened.form.out.value = out
    assert run_and_wait(qtbot, reopened, start=lambda: reopened.open_session(
        start_thread=False)) == "done"  # fmt: skip
    again = reopened.session
    assert again.current == 5 and again.names == session.names
    assert [e.status for e in again.entries] == [e.status for e in session.entries]
    assert again.n_keypoints == session.n_keypoints
    for old, new in zip(session.entries, again.entries, strict=True):
        if old.status == "rejected":
            assert new.points is None
            continue
        np.testing.assert_allclose(new.points.points, old.points.points, atol=1e-4,
                                   equal_nan=True)  # fmt: skip
        np.testing.assert_allclose(new.score, old.score, atol=1e-5, equal_nan=True)
        if old.points.confidence is not None and old.status != "edited":
            np.testing.assert_allclose(new.points.confidence, old.points.confidence, atol=1e-5)
            np.testing.assert_array_equal(new.points.source, old.points.source)
    np.testing.assert_array_equal(layer(viewer, "collection:image:rgb").data, collection_image(5))
    assert not again.dirty and reopened.engine.computed == [], "nothing recomputed"

    # an unsaved change is never dropped silently: opening again asks first
    points = layer(viewer, "collection:points")
    points.add([[10.0, 10.0]])
    asked = []
    reopened.ask_unsaved = lambda message: asked.append(message) or "cancel"
    assert reopened.open_session() is None and len(asked) == 1
    assert reopened.session is again and again.dirty
    reopened.ask_unsaved = lambda message: asked.append(message) or "save"
    with qtbot.waitSignal(reopened.runner.events.idle, timeout=30_000):
        assert reopened.open_session() is None  # saves first, then opens
    qtbot.waitUntil(lambda: reopened.runner.idle and reopened.session is not again,
                    timeout=30_000)  # fmt: skip
    assert len(asked) == 2
    assert reopened.session.entries[5].status == "edited", "the saved change came back"
