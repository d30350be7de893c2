"""Small Qt controls shared by the widgets: layer pickers and the model settings form."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QListWidget,
    QListWidgetItem,
    QSpinBox,
    QWidget,
)

from ..errors import CorrsegError
from ._layers import PLUGIN_KEY

MODEL_CHOICES = ("auto", "sd2-base", "sd2", "tiny")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
LAYER_CHOICES = ("auto", "32", "16", "16,32", "64")


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers of one kind, kept up to date.

    Parameters
    ----------
    viewer : napari.Viewer
    layer_type : type
        ``napari.layers.Image``, ``Points`` or ``Labels``.
    allow_none : bool
        Offer an empty choice first.
    user_layers_only : bool
        Leave out the layers this plugin made (for picking a user's annotations).
    """

    def __init__(
        self,
        viewer,
        layer_type: type,
        *,
        allow_none: bool = False,
        user_layers_only: bool = False,
    ) -> None:
        super().__init__()
        self._viewer = viewer
        self._layer_type = layer_type
        self._allow_none = allow_none
        self._user_layers_only = user_layers_only
        _follow_layer_list(viewer, self)
        self.refresh()

    def layers(self) -> list:
        return [
            layer
            for layer in self._viewer.layers
            if isinstance(layer, self._layer_type)
            and not (self._user_layers_only and PLUGIN_KEY in layer.metadata)
        ]

    def refresh(self, *_: Any) -> None:
        """Rebuild the list, keeping the current choice (by identity, so a rename keeps it)."""
        current = self.currentData()
        self.blockSignals(True)
        self.clear()
        if self._allow_none:
            self.addItem("", None)
        for layer in self.layers():
            self.addItem(layer.name, id(layer))
        index = self.findData(current)
        if index >= 0:
            self.setCurrentIndex(index)
        self.blockSignals(False)

    def value(self):
        """The chosen layer, or None."""
        chosen = self.currentData()
        for layer in self.layers():
            if id(layer) == chosen:
                return layer
        return None

    def set_value(self, layer) -> None:
        self.refresh()
        self.setCurrentIndex(self.findData(id(layer)))


class LayerChecklist(QListWidget):
    """A checkable list of the viewer's image layers (for picking 2+ images).

    Layers this plugin made (reliability maps, heatmaps) are left out.
    """

    def __init__(self, viewer, layer_type: type) -> None:
        super().__init__()
        self._viewer = viewer
        self._layer_type = layer_type
        _follow_layer_list(viewer, self)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        checked = {layer.name for layer in self.checked_layers()}
        self.clear()
        for layer in self._viewer.layers:
            if isinstance(layer, self._layer_type) and PLUGIN_KEY not in layer.metadata:
                item = QListWidgetItem(layer.name)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                state = Qt.CheckState.Checked if layer.name in checked else Qt.CheckState.Unchecked
                item.setCheckState(state)
                self.addItem(item)

    def checked_layers(self) -> list:
        names = {
            self.item(row).text()
            for row in range(self.count())
            if self.item(row).checkState() == Qt.CheckState.Checked
        }
        return [
            layer
            for layer in self._viewer.layers
            if isinstance(layer, self._layer_type) and layer.name in names
        ]

    def set_checked(self, layers) -> None:
        names = {layer.name for layer in layers}
        for row in range(self.count()):
            item = self.item(row)
            state = Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked
            item.setCheckState(state)


def _follow_layer_list(viewer, widget) -> None:
    """Call ``widget.refresh`` when layers are added, removed, reordered or renamed, and
    stop once the Qt widget has been deleted (a closed dock widget)."""
    events = viewer.layers.events
    sources = (events.inserted, events.removed, events.reordered)

    def refresh(event=None) -> None:
        try:
            widget.objectName()  # raises RuntimeError once the C++ object is gone
        except RuntimeError:
            for source in sources:
                source.disconnect(refresh)
            return
        for layer in viewer.layers:
            layer.events.name.connect(refresh)  # connecting twice is a no-op
        widget.refresh()

    for source in sources:
        source.connect(refresh)
    for layer in viewer.layers:
        layer.events.name.connect(refresh)


def parse_layers(text: str) -> Any:
    """Turn the layers field into the engine's ``layers`` argument.

    ``"auto"`` stays ``"auto"``; ``"32"`` or ``"16, 32"`` become resolutions ``[16, 32]``;
    anything else is a comma-separated list of layer names.
    """
    text = text.strip()
    if not text or text == "auto":
        return "auto"
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if all(part.isdigit() for part in parts):
        return [int(part) for part in parts]
    return parts


class ModelSettings(QWidget):
    """Model, device, timestep, layers and seed, with tooltips that say what each does."""

    def __init__(self) -> None:
        super().__init__()
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.addItems(MODEL_CHOICES)
        self.model.setToolTip(
            "Which Stable Diffusion 2 weights to use: auto (SD2.1-base if cached or "
            "downloadable, else the tiny random model), sd2-base (512 px), sd2 (768 px), "
            "tiny (random weights, for testing: not semantic), or type a hub id, a local "
            "diffusers folder or a .safetensors checkpoint path."
        )
        self.device = QComboBox()
        self.device.addItems(DEVICE_CHOICES)
        self.device.setToolTip("auto picks cuda, then mps, then cpu.")
        self.timestep = QSpinBox()
        self.timestep.setRange(1, 999)
        self.timestep.setValue(261)
        self.timestep.setToolTip(
            "Noise level of the single forward pass (0-999). Around 200-300 works best: "
            "lower keeps texture, higher keeps layout. DIFT uses 261."
        )
        self.layers = QComboBox()
        self.layers.setEditable(True)
        self.layers.addItems(LAYER_CHOICES)
        self.layers.setToolTip(
            "Self-attention layers to read: auto (the decoder's 32x32 layers), a "
            "resolution (16, 32, 64), several separated by commas, or layer names."
        )
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Seed of the added noise; the same seed gives the same maps.")
        form.addRow("model", self.model)
        form.addRow("device", self.device)
        form.addRow("timestep", self.timestep)
        form.addRow("layers", self.layers)
        form.addRow("seed", self.seed)

    def values(self) -> dict[str, Any]:
        """The settings as keyword arguments (``model``, ``device``, ``layers``, ...)."""
        model = self.model.currentText().strip()
        if not model:
            raise CorrsegError("choose a model (auto, sd2-base, sd2, tiny or a path)")
        return {
            "model": model,
            "device": self.device.currentText(),
            "timestep": int(self.timestep.value()),
            "layers": parse_layers(self.layers.currentText()),
            "seed": int(self.seed.value()),
        }
