"""The Collection dock widget: annotate a whole collection, one image at a time.

Load a folder, several image layers or a stack (the token store is filled in a worker:
each image through the model once, ever), annotate keypoints or paint parts on one or
several images, get proposals on all the others ranked least confident first, browse,
accept, correct or reject them (references grow: the next proposal starts from every
accepted or corrected image), co-segment the collection, save and reopen the session.

Only the image shown is read; its layers (`_collection_views`) are updated in place as
the user browses. Everything that computes is a call to `napari_corrseg.tasks.collection`
in a worker (`_collection_jobs`); the state is a `_collection_session.CollectionSession`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from magicgui.widgets import Container
from napari.utils.notifications import show_error, show_info

from ..errors import CorrsegError
from ._collection_files import save_session
from ._collection_form import CollectionForm, ask_unsaved, default_store_dir
from ._collection_runs import CollectionRuns
from ._collection_session import CollectionSession
from ._collection_views import (
    ROLE_COSEG,
    ROLE_IMAGE,
    ROLE_IMAGE_RGB,
    ROLE_LABELS,
    ROLE_POINTS,
    WIDGET,
    WORKING_ROLES,
    ViewRequest,
    view_plan,
)
from ._dock import DockWidget
from ._engines import close_scheduler
from ._messages import PREFIX
from ._plans import Plan
from ._tags import edited_data, find_result, mark_read, tag_of


class CollectionWidget(CollectionRuns, DockWidget):
    """Dock widget: proposals, review and co-segmentation over an image collection.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (napari passes it when the widget is opened from the plugin menu).
    """

    widget_name = WIDGET

    def __init__(self, napari_viewer) -> None:
        super().__init__(
            napari_viewer,
            run_text="Load collection",
            run_tooltip="Read the images and fill the token store (each image through the "
            "model once; images already stored are not computed again).",
        )
        self.session: CollectionSession | None = None
        #: ``ask_unsaved(message) -> "save" | "discard" | "cancel"`` (tests replace it).
        self.ask_unsaved = lambda message: ask_unsaved(self.native, message)
        self._shown_shape: tuple | None = None
        self._recoseg_pending = False
        form = self.form = CollectionForm(napari_viewer)
        self.settings = form.settings
        self.extend(
            [
                form.inputs,
                self.runner,
                form.annotation,
                form.propose_button,
                *form.review,
                form.coseg_button,
                Container(widgets=[form.threshold], labels=True),
                form.table,
                *form.saving,
            ]
        )
        self.run_button.changed.connect(lambda *_: self.load())
        form.propose_button.changed.connect(lambda *_: self._guard(self.propose))
        form.coseg_button.changed.connect(lambda *_: self._guard(self.cosegment))
        form.save_button.changed.connect(lambda *_: self._guard(self.save))
        form.open_button.changed.connect(lambda *_: self._guard(self.open_session))
        form.previous_button.changed.connect(lambda *_: self.go(self._index() - 1))
        form.next_button.changed.connect(lambda *_: self.go(self._index() + 1))
        form.worst_button.changed.connect(lambda *_: self.go_least_confident())
        form.accept_button.changed.connect(lambda *_: self.accept())
        form.reject_button.changed.connect(lambda *_: self.reject())
        form.image_slider.changed.connect(self.show)
        form.threshold.value_changed.connect(self._threshold_changed)
        form.annotate.changed.connect(lambda *_: self.show(self._index()))
        self.runner.events.idle.connect(self._on_idle)
        self._update_controls()

    # -- state ------------------------------------------------------------------------

    def _index(self) -> int:
        return self.session.current if self.session is not None else 0

    def _guard(self, action) -> None:
        try:
            action()
        except (CorrsegError, ValueError) as error:
            self.runner.report_error(error)

    def _update_controls(self) -> None:
        ready = self.session is not None and not self.runner.busy
        for button in self.form.session_buttons:
            button.enabled = ready
        self.form.open_button.enabled = not self.runner.busy
        if self.session is not None:
            started = any(e.status not in ("", "annotated") for e in self.session.entries)
            self.form.propose_button.text = (
                f"Propose on the remaining {len(self.session.targets())}"
                if started
                else "Propose on the other images"
            )

    def _on_idle(self, outcome: str) -> None:
        if self.closed:
            return
        self._update_controls()
        if self._recoseg_pending and not self.runner.busy:
            self._recoseg_pending = False
            self._guard(self.cosegment)

    # -- edits in the working layers ----------------------------------------------------

    def _take_edit(self, session: CollectionSession, layer) -> bool:
        mark = tag_of(layer)
        if mark is None or mark.get("session") != session.id or not edited_data(layer):
            return False
        index, role = int(mark["image_index"]), mark["role"]
        if role == ROLE_POINTS:
            features = layer.features
            ids = features["keypoint_id"].to_numpy() if "keypoint_id" in features else None
            session.take_points(index, np.asarray(layer.data), ids)
        elif role == ROLE_LABELS:
            session.take_labels(index, np.asarray(layer.data))
        elif role == ROLE_COSEG:
            session.take_coseg(index, np.asarray(layer.data))
        mark_read(layer)
        return True

    def capture_edits(self) -> int:
        """Take the user's edits of the working layers into the session (GUI thread)."""
        if self.session is None:
            return 0
        taken = 0
        for role in WORKING_ROLES:
            layer = find_result(self.viewer, widget=WIDGET, role=role)
            if layer is not None:
                taken += self._take_edit(self.session, layer)
        return taken

    def _captures(self, session: CollectionSession, index: int, version: int):
        """``role -> LayerUpdate.capture`` for a view of image ``index`` at ``version``."""

        def make(role: str):
            def capture(layer) -> bool:
                if role in WORKING_ROLES:
                    self._take_edit(session, layer)
                return session.entries[index].version == version

            return capture

        return make

    def _request(
        self,
        session: CollectionSession,
        index: int,
        *,
        load: bool,
        annotate: frozenset[str],
        entry=None,
        coseg=None,
    ) -> ViewRequest:
        """What showing image ``index`` needs (any thread: it reads no widget)."""
        entry = entry or session.entries[index]
        images = session.images
        found = coseg if coseg is not None else session.coseg
        return ViewRequest(
            session=session.id,
            index=index,
            entry=entry,
            geometry=session.geometries[index],
            placement=session.placement(index),
            names=session.names,
            coseg=found.labels_grid[index] if found is not None else None,
            annotate=annotate,
            load=(lambda: images.load(index)) if load else None,
        )

    def _image_shown(self, session: CollectionSession, index: int) -> bool:
        for role in (ROLE_IMAGE, ROLE_IMAGE_RGB):
            layer = find_result(self.viewer, widget=WIDGET, role=role)
            mark = tag_of(layer) if layer is not None else None
            if mark and mark.get("session") == session.id and mark.get("image_index") == index:
                return True
        return False

    # -- browsing ---------------------------------------------------------------------

    def go(self, index: int) -> None:
        """Show image ``index`` (clipped to the collection), as the slider does."""
        if self.session is None:
            return
        index = int(np.clip(index, 0, len(self.session) - 1))
        if self.form.image_slider.value != index:
            self.form.image_slider.value = index  # shows it
        else:
            self.show(index)

    def go_least_confident(self) -> None:
        """Show the least confident proposal not reviewed yet."""
        if self.session is None:
            return
        index = self.session.least_confident()
        if index is None:
            show_info(f"{PREFIX}: no proposal is waiting for review")
            return
        self.go(index)

    def show(self, index: Any = None) -> None:
        """Show image ``index`` in the working layers (read in a worker; latest wins)."""
        session = self.session
        if session is None or self.closed:
            return
        index = int(np.clip(self._index() if index is None else int(index), 0, len(session) - 1))

        def make():
            if self.session is not session:
                return None
            self.capture_edits()
            load = not self._image_shown(session, index)
            request = self._request(session, index, load=load, annotate=self.form.annotate_kinds())
            capture = self._captures(session, index, session.entries[index].version)
            summary, run = self.status.value, self.run_number  # the status line stays

            def job() -> Plan:
                plan = view_plan(request, capture, run=run)
                plan.summary = summary
                plan.on_shown = lambda report: self._shown(session, index)
                return plan

            return job

        self.runner.refresh(make, announce=False)

    def _shown(self, session: CollectionSession, index: int) -> None:
        if session is not self.session:
            return
        session.current = index
        slider = self.form.image_slider
        if slider.value != index:
            with slider.changed.blocked():
                slider.value = index
        self.form.position.value = session.describe(index)
        shape = session.entries[index].shape
        if shape != self._shown_shape:
            self._shown_shape = shape
            self.viewer.reset_view()
        self._update_controls()

    # -- reviewing --------------------------------------------------------------------

    def _review(self, act, verb: str) -> bool:
        session = self.session
        if session is None or self.runner.busy:
            return False
        self.capture_edits()
        index = session.current
        entry = session.entries[index]
        if not act(index):
            self.runner.report_error(
                CorrsegError(
                    f"{entry.name!r} has no proposal to {verb} ({entry.status or 'not annotated'})"
                )
            )
            return False
        self.status.value = f"{verb}ed {entry.name!r}"
        following = session.least_confident() if self.form.advance.value else None
        self.go(following if following is not None else index)
        self._update_controls()
        return True

    def accept(self) -> bool:
        """Accept the shown image's proposal: it becomes a reference."""
        return self._review(lambda i: self.session.accept(i), "accept")

    def reject(self) -> bool:
        """Reject the shown image's proposal."""
        return self._review(lambda i: self.session.reject(i), "reject")

    # -- closing ----------------------------------------------------------------------

    def on_close(self) -> None:
        """Keep an unsaved session: it is saved to a recovery folder (never lost). A Dask
        cluster started for the dock is shut down (off the GUI thread: it takes seconds)."""
        threading.Thread(target=close_scheduler, name="napari-corrseg dask close").start()
        session = self.session
        if session is None:
            return
        try:
            self.capture_edits()
        except (RuntimeError, KeyError):  # the viewer is closing: its layers are gone
            pass
        if not session.dirty:
            return
        folder = (
            default_store_dir().parent
            / "collection-sessions"
            / time.strftime("unsaved-%Y%m%d-%H%M%S")
        )
        try:
            save_session(folder, self.snapshot())
        except Exception as error:
            show_error(f"{PREFIX}: the unsaved collection session could not be kept: {error}")
            return
        session.saved_changes = session.changes
        show_info(
            f"{PREFIX}: the collection session had unsaved changes; they were kept in "
            f"{folder} (open it with Open in the Collection widget)"
        )
