"""The Collection dock's form, declared with magicgui (no behaviour here).

`CollectionForm` builds the fields and buttons; `napari_corrseg._widgets.collection`
connects them. Raw Qt only for what magicgui lacks: the question asked before unsaved
changes would be replaced (`ask_unsaved`), table editing off, a list height limit.
"""

from __future__ import annotations

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    Slider,
    Table,
)
from napari.layers import Image
from qtpy.QtWidgets import QAbstractItemView, QMessageBox

from ..collection.store_entries import default_store_dir
from ._forms import AutoValue, ModelSettings, image_multi_picker, layer_picker

SOURCE_KINDS = {"folder": "a folder", "layers": "image layers", "stack": "a stack layer"}
ANNOTATE_CHOICES = ("keypoints", "parts", "keypoints and parts")
SEGMENT_COLUMNS = ("id", "images", "consistency")


def _row(*widgets) -> Container:
    row = Container(widgets=list(widgets), layout="horizontal", labels=False)
    row.margins = (0, 0, 0, 0)
    return row


def ask_unsaved(parent, message: str) -> str:
    """Ask what to do with unsaved changes: ``"save"``, ``"discard"`` or ``"cancel"``."""
    box = QMessageBox(parent)  # raw Qt: magicgui has no question dialog
    box.setWindowTitle("napari-corrseg: unsaved collection session")
    box.setText(message)
    buttons = QMessageBox.StandardButton
    box.setStandardButtons(buttons.Save | buttons.Discard | buttons.Cancel)
    box.setDefaultButton(buttons.Save)
    answer = box.exec()
    return {buttons.Save: "save", buttons.Discard: "discard"}.get(
        buttons(answer) if not isinstance(answer, buttons) else answer, "cancel"
    )


class CollectionForm:
    """Every field and button of the Collection dock, grouped in `sections`."""

    def __init__(self, viewer) -> None:
        self.source_kind = ComboBox(
            name="source_kind",
            label="images from",
            choices=[(text, kind) for kind, text in SOURCE_KINDS.items()],
            tooltip="Where the collection's images are: every image file of a folder, "
            "several image layers, or the planes of one stack layer.",
        )
        self.folder = FileEdit(
            name="folder",
            mode="d",
            nullable=True,
            tooltip="The folder of images (PNG, JPEG, BMP, TIFF). Only the image shown is "
            "kept in memory; the token store holds what the model computed.",
        )
        self.images = image_multi_picker(
            viewer, name="images", tooltip="Two or more image layers (ctrl/shift-click)."
        )
        self.images.native.setMaximumHeight(90)  # raw Qt: magicgui has no height limit
        self.stack = layer_picker(
            viewer,
            Image,
            name="stack",
            nullable=True,
            tooltip="A stack layer (n, y, x[, c]): each plane is an image.",
        )
        self.store = FileEdit(
            name="store",
            label="token store",
            mode="d",
            value=default_store_dir(),
            tooltip="Where each image's queries and keys are kept: computed once, reused by "
            "every later run and by the command line (the same default folder).",
        )
        self.compute_on = LineEdit(
            name="compute_on",
            label="compute on",
            value="none",
            tooltip="Where filling the store and forming cross maps runs: none (in napari's "
            "process), local (a Dask cluster on this machine: one worker per GPU, else per "
            "4 CPU cores), local:N (N workers), or the address of a running Dask scheduler "
            "(tcp://host:8786) whose workers see the same store folder and images. Progress "
            "comes back here either way.",
        )
        self.settings = ModelSettings()
        self.annotate = ComboBox(
            name="annotate",
            choices=ANNOTATE_CHOICES,
            tooltip="What you mark: keypoints (a Points layer), parts (paint a Labels "
            "layer), or both. Proposals are made for what the reference images hold.",
        )
        self.propose_button = PushButton(
            text="Propose on the other images",
            tooltip="Carry the keypoints and parts of the reference images (the ones you "
            "annotated, accepted or corrected) to every image not reviewed yet, each "
            "point and label with a confidence.",
        )
        self.position = Label(value="no collection loaded")
        self.position.native.setWordWrap(True)
        lines = self.position.native.fontMetrics().lineSpacing()
        self.position.native.setMinimumHeight(3 * lines)  # raw Qt: no re-layout per image
        self.image_slider = Slider(
            name="image",
            min=0,
            max=0,
            value=0,
            tooltip="The image shown (drag to browse; only this image is read).",
        )
        self.previous_button = PushButton(text="◀ previous", tooltip="Show the previous image.")
        self.next_button = PushButton(text="next ▶", tooltip="Show the next image.")
        self.worst_button = PushButton(
            text="least confident",
            tooltip="Show the least confident proposal not reviewed yet (without "
            "proposals: the least consistent image of the co-segmentation).",
        )
        self.accept_button = PushButton(
            text="accept",
            tooltip="Take this image's proposal as it is: it becomes a reference for the "
            "remaining images. (A proposal you correct is taken as corrected.)",
        )
        self.reject_button = PushButton(
            text="reject",
            tooltip="Reject this image's proposal: it is neither a reference nor proposed "
            "again, and it is not saved.",
        )
        self.advance = CheckBox(
            text="then show the least confident",
            value=True,
            tooltip="After accept or reject, go on to the least confident proposal left.",
        )
        self.coseg_button = PushButton(
            text="Co-segment the collection",
            tooltip="Labels whose ids mean the same part in every image, with a "
            "consistency per segment (reads the token store; no model run).",
        )
        self.threshold = AutoValue(
            name="threshold",
            value="auto",
            minimum=0.001,
            maximum=100.0,
            log=True,
            on_release=True,
            tooltip="Merge threshold of the co-segmentation (log scale): higher merges "
            "more. Applied when you let go of the slider.",
            auto_tooltip="Choose the threshold from the data; the value used is shown.",
        )
        self.table = Table(
            value={"data": [], "index": [], "columns": list(SEGMENT_COLUMNS)},
            tooltip="Segments shared over the collection: in how many images each is, "
            "and its consistency (0-1; — when seen in one image only).",
        )
        self.table.native.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.native.verticalHeader().setVisible(False)
        self.table.native.setMaximumHeight(160)
        self.out = FileEdit(
            name="session",
            label="session folder",
            mode="d",
            nullable=True,
            tooltip="Where Save writes the session (per-image CSV and TIFF files, the "
            "summary table, run.json), and the folder Open reads a saved session from.",
        )
        self.save_button = PushButton(text="Save", tooltip="Save the session to the folder.")
        self.open_button = PushButton(
            text="Open", tooltip="Reopen the session saved in the folder."
        )
        self.inputs = Container(
            widgets=[
                self.source_kind,
                self.folder,
                self.images,
                self.stack,
                self.store,
                self.compute_on,
                *self.settings.widgets,
            ],
            labels=True,
        )
        self.annotation = Container(widgets=[self.annotate], labels=True)
        self.review = [
            self.position,
            self.image_slider,
            _row(self.previous_button, self.next_button, self.worst_button),
            _row(self.accept_button, self.reject_button, self.advance),
        ]
        self.saving = [
            Container(widgets=[self.out], labels=True),
            _row(self.save_button, self.open_button),
        ]
        self.show_source_fields()
        self.source_kind.changed.connect(self.show_source_fields)

    @property
    def session_buttons(self) -> list[PushButton]:
        """Buttons that need a loaded session and an idle dock."""
        return [
            self.propose_button,
            self.previous_button,
            self.next_button,
            self.worst_button,
            self.accept_button,
            self.reject_button,
            self.coseg_button,
            self.save_button,
        ]

    def show_source_fields(self, *_) -> None:
        kind = self.source_kind.value
        self.folder.visible = kind == "folder"
        self.images.visible = kind == "layers"
        self.stack.visible = kind == "stack"

    def annotate_kinds(self) -> frozenset[str]:
        value = str(self.annotate.value)
        return frozenset(kind for kind in ("keypoints", "parts") if kind in value)
