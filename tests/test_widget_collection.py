"""The Collection widget driven as a user drives it, in a real napari viewer (Xvfb).

A collection of 8 images whose tokens come from `TokenEngine` (synthetic queries and
keys with known parts and correspondences): mark keypoints on one image, get proposals
on the 7 others, browse, accept / correct / reject, propose again from the grown set of
references, save, reopen. The tiny model runs the real engine path in
tests/test_widget_collection_tiny.py.
"""

from __future__ import annotations

import csv
import json

import imageio.v3 as iio
import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager

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


@pytest.fixture
def folder(tmp_path):
    """Eight PNG files img0.png ... img7.png."""
    path = tmp_path / "images"
    path.mkdir()
    for index in range(N_IMAGES):
        iio.imwrite(path / f"img{index}.png", collection_image(index))
    return path


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


def test_cancel_during_the_fill_and_during_model_loading(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, folder, records
):
    import threading

    from napari_corrseg._widgets import _engines

    viewer = make_napari_viewer()
    slow = TokenEngine(N_IMAGES, delay=0.4)
    widget = make_widget(viewer, monkeypatch, tmp_path, slow)
    widget.form.source_kind.value = "folder"
    widget.form.folder.value = folder
    worker = widget.load(start_thread=False)
    with qtbot.waitSignal(widget.runner.events.idle, timeout=30_000) as blocker:
        worker.start()
        qtbot.waitUntil(lambda: len(slow.computed) >= 2, timeout=20_000)
        widget.cancel_button.clicked.emit()
    assert blocker.args == ["cancelled"]
    assert any("cancelled" in m for m in messages(records))
    assert widget.session is None and widget.run_button.enabled
    done = len(slow.computed)
    assert 2 <= done < N_IMAGES
    # a second load computes only what is missing
    slow.delay = 0.0
    assert run_and_wait(qtbot, widget, start=lambda: widget.load(start_thread=False)) == "done"
    assert len(slow.computed) == N_IMAGES
    assert f"computed {N_IMAGES - done}, reused {done}" in widget.status.value

    # cancel while the model loads: the run ends at once, the load goes on
    release = threading.Event()

    def slow_loader(model, device):
        release.wait(60)
        return TokenEngine(N_IMAGES)

    monkeypatch.setattr(_engines, "loader", slow_loader)
    widget.ask_unsaved = lambda message: "discard"
    choose_model(widget, "slow")
    worker = widget.load(start_thread=False)
    try:
        with qtbot.waitSignal(widget.runner.events.idle, timeout=30_000) as blocker:
            worker.start()
            qtbot.waitUntil(lambda: "loading model" in widget.progress_bar.native.format())
            widget.cancel_button.clicked.emit()
        assert blocker.args == ["cancelled"]
        assert _engines.loading_engine_keys() == [("slow", "cpu")]
        assert widget.run_button.enabled
    finally:
        release.set()
    qtbot.waitUntil(lambda: _engines.loaded_engine_keys() == [("slow", "cpu")])
    _engines._ENGINE.clear()


def test_a_deleted_input_layer_mid_run_ends_with_a_notification(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, records
):
    viewer = make_napari_viewer()
    for index in range(4):
        viewer.add_image(collection_image(index), name=f"layer {index}", rgb=True,
                         translate=(0, 80 * index))  # fmt: skip
    slow = TokenEngine(4, delay=1.0)
    widget = make_widget(viewer, monkeypatch, tmp_path, slow)
    widget.form.source_kind.value = "layers"
    widget.form.images.value = list(viewer.layers)
    worker = widget.load(start_thread=False)
    with qtbot.waitSignal(widget.runner.events.idle, timeout=30_000) as blocker:
        worker.start()
        qtbot.waitUntil(lambda: "computing tokens" in widget.progress_bar.native.format(),
                        timeout=20_000)  # fmt: skip
        viewer.layers.remove("layer 2")
    assert blocker.args == ["input deleted"]
    warnings = messages(records, NotificationSeverity.WARNING)
    assert any("'layer 2' was deleted during the run" in m for m in warnings), warnings
    assert widget.session is None and widget.run_button.enabled
    assert not plugin_layers(viewer)
    # usable afterwards, on the three layers left; names and placement follow the layers
    slow.delay = 0.0
    widget.form.images.value = list(viewer.layers)
    assert run_and_wait(qtbot, widget, start=lambda: widget.load(start_thread=False)) == "done"
    assert widget.session.names == ["layer 0", "layer 1", "layer 3"]
    wait_shown(qtbot, widget, 2)
    shown = layer(viewer, "collection:image:rgb")
    np.testing.assert_allclose(shown.translate, viewer.layers["layer 3"].translate)
    np.testing.assert_allclose(layer(viewer, "collection:points").translate, (0, 240))


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


def test_closing_keeps_unsaved_changes_and_disconnects(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, folder, records
):
    viewer = make_napari_viewer()
    widget = make_widget(viewer, monkeypatch, tmp_path)
    load_folder(qtbot, widget, folder)
    layer(viewer, "collection:points").add([[20.0, 30.0], [40.0, 12.0]])  # not saved
    from test_widget_edits import plugin_callbacks

    assert plugin_callbacks(viewer)
    viewer.window.remove_dock_widget(widget.native)
    qtbot.waitUntil(lambda: widget.closed)
    assert plugin_callbacks(viewer) == [], "closing the dock disconnects everything"
    kept = [m for m in messages(records) if "unsaved changes" in m]
    assert len(kept) == 1, messages(records)
    folder_kept = kept[0].split("kept in ")[1].split(" (open it")[0]
    record = json.loads((tmp_path / folder_kept / "run.json").read_text())
    assert record["session"]["images"][0]["status"] == "annotated"


def test_cosegment_the_collection_with_shared_ids_and_kept_corrections(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, folder, records
):
    viewer = make_napari_viewer()
    widget = make_widget(viewer, monkeypatch, tmp_path)
    load_folder(qtbot, widget, folder)
    session, tokens = widget.session, widget.engine.tokens
    run_and_wait(qtbot, widget, start=lambda: widget.cosegment(start_thread=False))
    coseg = session.coseg
    # a part of the synthetic truth gets one id in every image it is in
    agreeing, parts = 0, 0
    for part in range(2, 2 + tokens.n_parts):
        ids = []
        for index in range(N_IMAGES):
            mask = tokens.labels(index) == part
            if mask.any():
                ids.append(np.bincount(coseg.labels_grid[index][mask]).argmax())
        parts += 1
        agreeing += len(set(ids)) == 1
    assert agreeing >= parts - 1, (agreeing, parts)
    rows = widget.form.table.data.to_list()
    assert len(rows) == len(coseg.segments) >= 2
    for row, record in zip(rows, coseg.segments, strict=True):
        assert row[0] == str(record["id"]) and row[1] == str(len(record["images"]))
        assert row[2] == "—" or 0.0 <= float(row[2]) <= 1.0
    shown = layer(viewer, "collection:coseg")
    assert shown.name == "co-segmentation of img0"
    assert set(np.unique(shown.data)) == set(np.unique(coseg.labels_grid[0]))

    # a corrected co-segmentation survives a new threshold; the others follow it
    wait_shown(qtbot, widget, 2)
    shown = layer(viewer, "collection:coseg")
    painted = np.array(shown.data)
    painted[:10, :10] = 99
    shown.data = painted
    widget.form.threshold.value = coseg.threshold * 4
    qtbot.waitUntil(lambda: widget.runner.idle and session.coseg is not coseg, timeout=30_000)
    np.testing.assert_array_equal(session.entries[2].coseg_edit, painted)
    np.testing.assert_array_equal(layer(viewer, "collection:coseg").data, painted)
    assert any("kept your corrected co-segmentation of 1 image" in m for m in messages(records))
    assert session.coseg.threshold == pytest.approx(coseg.threshold * 4, rel=0.05)


def test_a_stack_layer_is_a_collection_and_parts_are_proposed(
    make_napari_viewer, qtbot, monkeypatch, tmp_path
):
    viewer = make_napari_viewer()
    stack = np.stack([collection_image(index) for index in range(4)])
    viewer.add_image(stack, name="stack", rgb=True, scale=(1, 2, 2))
    widget = make_widget(viewer, monkeypatch, tmp_path, TokenEngine(4))
    widget.form.source_kind.value = "stack"
    widget.form.stack.value = viewer.layers["stack"]
    widget.form.annotate.value = "parts"
    assert run_and_wait(qtbot, widget, start=lambda: widget.load(start_thread=False)) == "done"
    session, tokens = widget.session, widget.engine.tokens
    assert session.names == [f"stack_{k:04d}" for k in range(4)]
    parts = layer(viewer, "collection:labels")
    np.testing.assert_allclose(parts.scale, (2, 2))
    # paint the truth of image 0 (on its pixels), propose on the 3 others
    from napari_corrseg.tasks.results import grid_labels_to_pixels

    geometry = pixel_geometry()
    parts.data = grid_labels_to_pixels(tokens.labels(0).astype(np.int32), geometry)
    run_and_wait(qtbot, widget, start=lambda: widget.propose(start_thread=False))
    for index in range(1, 4):
        proposal = session.entries[index].labels
        truth = tokens.labels(index)
        assert np.mean(proposal.grid == truth) > 0.8, index
        assert (proposal.confidence_grid >= 0).all() and (proposal.confidence_grid <= 1).all()
    wait_shown(qtbot, widget, 1)
    confidence = layer(viewer, "collection:label-confidence")
    np.testing.assert_allclose(confidence.data, session.entries[1].labels.confidence_grid)
    np.testing.assert_allclose(confidence.contrast_limits, (0, 1))
    np.testing.assert_array_equal(
        layer(viewer, "collection:labels").data,
        grid_labels_to_pixels(session.entries[1].labels.grid, geometry),
    )


def test_nothing_to_propose_or_accept_is_said(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, folder, records
):
    viewer = make_napari_viewer()
    widget = make_widget(viewer, monkeypatch, tmp_path)
    assert not widget.form.propose_button.enabled  # nothing loaded yet
    load_folder(qtbot, widget, folder)
    widget.form.propose_button.clicked.emit()
    errors = messages(records, NotificationSeverity.ERROR)
    assert any("mark keypoints (or paint parts) on at least one image" in m for m in errors)
    widget.form.accept_button.clicked.emit()
    errors = messages(records, NotificationSeverity.ERROR)
    assert any("'img0' has no proposal to accept" in m for m in errors), errors
    assert widget.runner.idle and widget.session.entries[0].status == ""
    # keypoints dragged off the image are left out, and said so
    layer(viewer, "collection:points").add([[10.0, 10.0], [30.0, 500.0]])
    assert run_and_wait(qtbot, widget, start=lambda: widget.propose(start_thread=False)) == (
        "warned"
    )
    warnings = messages(records, NotificationSeverity.WARNING)
    assert any("keypoint(s) 1 on 'img0' lie outside the image" in m for m in warnings)
