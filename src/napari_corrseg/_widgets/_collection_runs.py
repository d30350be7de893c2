"""The Collection dock's runs: load, propose, co-segment, save and reopen.

`CollectionRuns` is a part of `napari_corrseg._widgets.collection.CollectionWidget`
(a mixin): each method reads the form and the session on the GUI thread, starts one job
of `_collection_jobs` in the run controls' worker, and takes its result as the new state
once its layers are shown (``Plan.on_shown``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer

from ..errors import CorrsegError
from ..tasks.collection import list_image_files
from ..tasks.collection_inputs import distinct_names
from . import _collection_jobs as J
from . import _layers as L
from ._collection_files import save_session
from ._collection_form import SEGMENT_COLUMNS, default_store_dir
from ._collection_session import CollectionSession
from ._collection_views import WIDGET, view_plan
from ._messages import PREFIX, warn_tiny
from ._plans import Plan
from ._tags import tag_of


def safe_names(names: list[str]) -> list[str]:
    """Layer names made usable as file names, each once (``a``, ``a-2``...)."""
    return distinct_names(
        re.sub(r"[^\w.\- ]+", "_", str(name)).strip(" .") or "image" for name in names
    )


class CollectionRuns:
    """The runs of the Collection dock (mixed into `CollectionWidget`)."""

    session: CollectionSession | None

    def _may_replace(self, action: str, retry) -> bool:
        """True when the session may be replaced: saved, or the user said so."""
        if self.session is None:
            return True
        self.capture_edits()
        if not self.session.dirty:
            return True
        answer = self.ask_unsaved(
            f"The collection session has unsaved changes. Save them before you {action}?"
        )
        if answer == "discard":
            return True
        if answer == "save":
            folder = self.form.out.value or self.session.saved_to
            if folder is None:
                raise CorrsegError("choose a session folder to save to, then try again")
            self.save(folder, then=retry)
        return False

    def _load_request(self) -> J.LoadRequest:
        from ..tasks.distributed import parse_scheduler

        kind = self.form.source_kind.value
        settings = self.settings.values()
        store_dir = self.form.store.value or default_store_dir()
        scheduler = self.form.compute_on.value.strip() or "none"
        parse_scheduler(scheduler)  # a malformed value is said now, before any work
        if kind == "folder":
            folder = self.form.folder.value
            if folder is None:
                raise CorrsegError("choose the folder of images (images from: a folder)")
            paths = list_image_files([folder])
            if len(paths) < 2:
                raise CorrsegError(f"folder {folder} holds one image; a collection needs two")
            origin = {"kind": "folder", "folder": str(folder)}
            request = J.LoadRequest(kind, paths, None, None, origin, store_dir, settings)
            request.scheduler = scheduler
            return request
        if kind == "layers":
            layers = [layer for layer in self.viewer.layers if layer in self.form.images.value]
            if len(layers) < 2:
                raise CorrsegError("select two or more image layers in the images list")
            planes = [L.image_plane(layer, self.viewer, materialize=False) for layer in layers]
            placements = [L.plane_scale_translate(layer) for layer in layers]
        else:
            stack = self.form.stack.value
            if stack is None:
                raise CorrsegError("choose the stack layer (images from: a stack layer)")
            layers, planes = [stack], L.stack_planes(stack, materialize=False)
            placements = [L.plane_scale_translate(stack)] * len(planes)
        names = (
            safe_names([layer.name for layer in layers])
            if kind == "layers"
            else [f"{safe_names([stack.name])[0]}_{k:04d}" for k in range(len(planes))]
        )
        placements = [(tuple(map(float, s)), tuple(map(float, t))) for s, t in placements]
        origin = {"kind": kind, "layers": [layer.name for layer in layers]}
        request = J.LoadRequest(kind, planes, names, placements, origin, store_dir, settings)
        request.scheduler = scheduler
        request.origin["input_layers"] = layers
        return request

    def load(self, *, start_thread: bool = True):
        """Load the chosen images and fill the token store (worker); returns the worker."""
        if self.runner.busy:
            return None
        try:
            if not self._may_replace("load another collection", lambda: self.load()):
                return None
            request = self._load_request()
        except (CorrsegError, ValueError) as error:
            self.runner.report_error(error)
            return None
        layers = request.origin.pop("input_layers", [])
        self.run_number += 1

        annotate, run = self.form.annotate_kinds(), self.run_number

        def job(progress, cancel) -> Plan:
            session, report = J.load_collection(request, progress, cancel)
            plan = view_plan(
                self._request(session, 0, load=True, annotate=annotate),
                self._captures(session, 0, 0),
                run=run,
            )
            size = f"; {request.fill_plan[0].describe()}" if request.fill_plan else ""
            plan.summary = f"{report.describe()}{size}"
            plan.on_shown = lambda shown: self._took_session(session)
            return plan

        worker = self.runner.start(
            job,
            inputs=[(layer, "image") for layer in layers],
            image_names=request.names or [],
            describe="loading the collection",
            start_thread=start_thread,
        )
        self._update_controls()
        return worker

    def _took_session(self, session: CollectionSession) -> None:
        self.session = session
        slider = self.form.image_slider
        with slider.changed.blocked():
            slider.max = len(session) - 1
            slider.value = session.current
        self._shown_shape = None
        self._show_segments()
        self._shown(session, session.current)

    def propose(self, *, start_thread: bool = True):
        """Proposals on every image not reviewed yet, from the references (worker)."""
        session = self._ready()
        self.capture_edits()
        keypoints, labels, problems = session.sources()
        if not keypoints and not labels:
            raise CorrsegError(
                "mark keypoints (or paint parts) on at least one image first, in its "
                "'keypoints on ...' (or 'parts on ...') layer"
            )
        targets = session.targets()
        if not targets:
            raise CorrsegError("every image is annotated or reviewed: nothing to propose on")
        versions = {t: session.entries[t].version for t in targets}
        current = session.current
        version = session.entries[current].version
        self.run_number += 1
        n_sources = len(set(keypoints) | set(labels))

        annotate, run = self.form.annotate_kinds(), self.run_number

        def job(progress, cancel) -> Plan:
            proposals, warnings = J.propose(session, keypoints, labels, targets, progress, cancel)
            request = self._request(
                session, current, load=False, annotate=annotate, entry=proposals.get(current)
            )
            plan = view_plan(request, self._captures(session, current, version), run=run)
            worst = min(proposals.values(), key=lambda e: np.nan_to_num(e.score, nan=-1.0))
            plan.summary = (
                f"proposed on {len(proposals)} images from {n_sources} reference(s); "
                f"least confident {worst.name!r} ({worst.score:.2f})"
            )
            plan.warnings = [*problems, *warnings]
            plan.on_shown = lambda shown: self._took_proposals(session, proposals, versions)
            return plan

        worker = self.runner.start(
            job, image_names=session.names, describe="proposing", start_thread=start_thread
        )
        self._update_controls()
        return worker

    def _took_proposals(self, session, proposals, versions) -> None:
        stored = session.take_proposals(proposals, versions)
        if stored < len(proposals):
            show_info(
                f"{PREFIX}: kept your edits of {len(proposals) - stored} image(s) made during "
                "the run; their new proposals were dropped"
            )
        if session.tiny:
            warn_tiny("proposals")
        self._shown(session, session.current)

    def cosegment(self, *, start_thread: bool = True):
        """Co-segment the whole collection from the token store (worker)."""
        session = self._ready()
        threshold, current = self.form.threshold.value, session.current
        version = session.entries[current].version
        self.run_number += 1

        annotate, run = self.form.annotate_kinds(), self.run_number

        def job(progress, cancel) -> Plan:
            coseg = J.cosegment(session, threshold, progress, cancel)
            request = self._request(session, current, load=False, annotate=annotate, coseg=coseg)
            plan = view_plan(request, self._captures(session, current, version), run=run)
            shared = sum(1 for s in coseg.segments if s.get("shared"))
            plan.summary = (
                f"{len(coseg.segments)} segments ({shared} shared), threshold "
                f"{coseg.threshold:.3f}{' (auto)' if threshold == 'auto' else ''}"
            )
            if coseg.no_clear_structure:
                plan.warnings.append(
                    "no clear structure: the attention does not separate into parts, so the "
                    "segments are not to be trusted"
                )
            elif shared == 0:
                plan.warnings.append(
                    "no segment is shared between images: the ids do not correspond; raise "
                    "the threshold to merge more"
                )
            plan.on_shown = lambda shown: self._took_coseg(session, coseg)
            return plan

        worker = self.runner.start(
            job, image_names=session.names, describe="co-segmentation", start_thread=start_thread
        )
        self._update_controls()
        return worker

    def _took_coseg(self, session, coseg) -> None:
        session.set_coseg(coseg)
        edited = sum(1 for e in session.entries if e.coseg_edit is not None)
        if edited:
            show_info(
                f"{PREFIX}: kept your corrected co-segmentation of {edited} image(s); the new "
                "one is shown on the others"
            )
        if session.tiny:
            warn_tiny("segments")
        self._show_segments()
        self._shown(session, session.current)

    def _show_segments(self) -> None:
        coseg = self.session.coseg if self.session is not None else None
        rows = []
        for record in coseg.segments if coseg is not None else []:
            consistency = record.get("consistency")
            number = np.nan if consistency is None else float(consistency)
            rows.append(
                [
                    str(record.get("id", "")),
                    str(len(record.get("images", []))),
                    "—" if not np.isfinite(number) else f"{number:.3f}",
                ]
            )
        self.form.table.value = {
            "data": rows,
            "index": list(range(len(rows))),
            "columns": list(SEGMENT_COLUMNS),
        }
        if coseg is not None:
            self.form.threshold.show_auto(coseg.threshold)

    def _threshold_changed(self, *_: Any) -> None:
        if self.session is None or self.session.coseg is None:
            return
        if self.runner.busy:
            self._recoseg_pending = True
        else:
            self._guard(self.cosegment)

    def _ready(self) -> CollectionSession:
        if self.session is None:
            raise CorrsegError("load a collection first (Load collection)")
        if self.runner.busy:
            raise CorrsegError("wait for the run to finish")
        return self.session

    def snapshot(self) -> dict[str, Any]:
        """What saving needs, taken on the GUI thread (entries are never changed in
        place, so the worker may read them while the user goes on)."""
        session = self.session
        sources = [
            str(source) if not hasattr(source, "shape") else None
            for source in session.images.sources
        ]
        return {
            "entries": list(session.entries),
            "geometries": list(session.geometries),
            "n_keypoints": session.n_keypoints,
            "coseg": session.coseg,
            "origin": session.origin,
            "store_path": session.store_path,
            "store_settings": session.store_settings,
            "model": session.model,
            "sources": sources,
            "current": session.current,
        }

    def save(self, folder=None, *, then=None, start_thread: bool = True):
        """Save the session to ``folder`` (default: the session folder field)."""
        session = self._ready()
        folder = folder or self.form.out.value
        if folder is None:
            raise CorrsegError("choose a session folder to save to")
        self.capture_edits()
        snapshot, changes, run = self.snapshot(), session.changes, self.run_number

        def job(progress, cancel) -> Plan:
            progress("save", 0.0)
            report, _ = save_session(folder, snapshot)
            counts = session.counts()
            plan = Plan(WIDGET, run=run)
            plan.summary = (
                f"saved {len(snapshot['entries'])} images ({counts['annotated']} annotated, "
                f"{counts['accepted'] + counts['edited']} accepted, {counts['rejected']} "
                f"rejected, {counts['proposed']} to review) to {report.folder}"
            )
            plan.on_shown = lambda shown: self._saved(session, changes, folder, then)
            return plan

        worker = self.runner.start(job, describe="saving", start_thread=start_thread)
        self._update_controls()
        return worker

    def _saved(self, session, changes: int, folder, then) -> None:
        session.saved_changes, session.saved_to = changes, str(folder)
        if then is not None:
            QTimer.singleShot(0, then)

    def _candidates(self) -> list[J.Candidate]:
        found = []
        for layer in self.viewer.layers:
            if not isinstance(layer, Image) or tag_of(layer) is not None:
                continue
            placement = tuple(tuple(map(float, v)) for v in L.plane_scale_translate(layer))
            try:
                planes = [L.image_plane(layer, self.viewer, materialize=False)]
            except CorrsegError:
                planes = []
            try:
                planes += L.stack_planes(layer, materialize=False)
            except CorrsegError:
                pass
            found += [J.Candidate(layer.name, plane, placement) for plane in planes]
        return found

    def open_session(self, folder=None, *, start_thread: bool = True):
        """Reopen a saved session (worker); asks first if the current one is unsaved."""
        if self.runner.busy:
            return None
        folder = folder or self.form.out.value
        if folder is None:
            raise CorrsegError("choose the session folder to open")
        if not self._may_replace("open another session", lambda: self.open_session(folder)):
            return None
        candidates = self._candidates()
        self.run_number += 1

        annotate, run = self.form.annotate_kinds(), self.run_number

        def job(progress, cancel) -> Plan:
            session = J.open_session(folder, candidates, progress, cancel)
            index = session.current
            request = self._request(session, index, load=True, annotate=annotate)
            version = session.entries[index].version
            plan = view_plan(request, self._captures(session, index, version), run=run)
            counts = session.counts()
            plan.summary = (
                f"reopened {len(session)} images from {folder}: {counts['proposed']} "
                "proposals to review"
            )
            plan.on_shown = lambda shown: self._took_session(session)
            return plan

        worker = self.runner.start(job, describe="opening the session", start_thread=start_thread)
        self._update_controls()
        return worker
