"""The widgets' forms, declared with magicgui: layer pickers, model settings, auto values.

Layer pickers are magicgui ``ComboBox`` / ``Select`` whose choices are a function of the
viewer's layers; the dock widget calls ``reset_choices`` when layers are added, removed,
reordered or renamed (as napari does for magicgui docks), so they follow the layer list
and keep their choice by identity through a rename. Raw Qt is used only for what magicgui
has no property for (completion of the model field).
"""

from __future__ import annotations

import math
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    Label,
    LineEdit,
    LogSlider,
    Select,
    SpinBox,
)
from napari.layers import Image
from psygnal import Signal
from qtpy.QtWidgets import QCompleter, QSlider

from ..errors import CorrsegError
from . import _tags as T

MODEL_CHOICES = ("auto", "sd2-base", "sd2", "tiny")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
LAYER_CHOICES = ("auto", "32", "16", "16,32", "64")


def _layer_choices(viewer, layer_type: type, user_only: bool):
    def choices(_widget=None) -> list[tuple[str, Any]]:
        return [
            (layer.name, layer)
            for layer in viewer.layers
            if isinstance(layer, layer_type) and not (user_only and T.is_plugin_layer(layer))
        ]

    return choices


def layer_picker(
    viewer,
    layer_type: type,
    *,
    name: str,
    label: str | None = None,
    tooltip: str = "",
    user_only: bool = True,
    nullable: bool = False,
) -> ComboBox:
    """A combo box of the viewer's layers of one type.

    ``user_only`` leaves out the layers this plugin made (results are not inputs; a
    result the user edited or renamed is theirs and is listed).
    """
    return ComboBox(
        name=name,
        label=label or name,
        choices=_layer_choices(viewer, layer_type, user_only),
        nullable=nullable,
        tooltip=tooltip,
    )


def image_multi_picker(viewer, *, name: str, tooltip: str = "") -> Select:
    """A multi-selection list of the viewer's image layers (the user's, not results)."""
    return Select(
        name=name,
        label=name,
        choices=_layer_choices(viewer, Image, True),
        tooltip=tooltip,
        allow_multiple=True,
    )


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


def _complete(line_edit: LineEdit, words: tuple[str, ...]) -> None:
    completer = QCompleter(list(words), line_edit.native)  # raw Qt: magicgui has none
    completer.setCompletionMode(QCompleter.CompletionMode.UnfilteredPopupCompletion)
    line_edit.native.setCompleter(completer)


class ModelSettings:
    """Model, device, timestep, layers and seed fields, with tooltips that say what each does.

    ``widgets`` lists them for a dock to put in its form (one column of labels for all).
    """

    def __init__(self) -> None:
        self.model = LineEdit(
            name="model",
            value="auto",
            tooltip="Which Stable Diffusion 2 weights to use: auto (SD2.1-base if cached or "
            "downloadable, else the tiny random model), sd2-base (512 px), sd2 (768 px), "
            "tiny (random weights, for testing: not semantic), or a hub id, a local "
            "diffusers folder or a .safetensors checkpoint path.",
        )
        _complete(self.model, MODEL_CHOICES)
        self.device = ComboBox(
            name="device", choices=DEVICE_CHOICES, tooltip="auto picks cuda, then mps, then cpu."
        )
        self.timestep = SpinBox(
            name="timestep",
            value=261,
            min=1,
            max=999,
            tooltip="Noise level of the single forward pass (1-999). Around 200-300 works "
            "best: lower keeps texture, higher keeps layout. DIFT uses 261.",
        )
        self.layers = LineEdit(
            name="layers",
            value="auto",
            tooltip="Self-attention layers to read: auto (the decoder's 32x32 layers), a "
            "resolution (16, 32, 64), several separated by commas, or layer names.",
        )
        _complete(self.layers, LAYER_CHOICES)
        self.seed = SpinBox(
            name="seed",
            value=0,
            min=0,
            max=2**31 - 1,
            tooltip="Seed of the added noise; the same seed gives the same maps.",
        )
        self.widgets = [self.model, self.device, self.timestep, self.layers, self.seed]

    def values(self) -> dict[str, Any]:
        """The settings as keyword arguments (``model``, ``device``, ``layers``, ...)."""
        model = self.model.value.strip()
        if not model:
            raise CorrsegError(
                "type a model in the model field (auto, sd2-base, sd2, tiny or a path)"
            )
        return {
            "model": model,
            "device": str(self.device.value),
            "timestep": int(self.timestep.value),
            "layers": parse_layers(self.layers.value),
            "seed": int(self.seed.value),
        }


class AutoValue(Container):
    """A number that may be ``"auto"``: an *auto* check box beside a slider.

    ``value`` is ``"auto"`` or a float; ``value_changed`` fires with it (psygnal) when the
    user changes it. When auto, the slider is disabled and shows the value the data chose
    (`show_auto`).

    Parameters
    ----------
    name, tooltip : str
    value : float or "auto"
        Start value.
    minimum, maximum, step : float
        Slider range; ``log=True`` gives a logarithmic slider (``step`` unused).
    allow_auto : bool
        Show the *auto* box. Without it ``value`` is always a float.
    auto_tooltip : str
    on_release : bool
        For a costly effect: while the user drags, only the number beside the slider
        follows; ``value_changed`` fires when the slider is let go (keys and the wheel
        still change it at once).
    """

    value_changed = Signal(object)

    def __init__(
        self,
        *,
        name: str,
        tooltip: str,
        value: float | str,
        minimum: float,
        maximum: float,
        step: float = 0.01,
        log: bool = False,
        allow_auto: bool = True,
        auto_tooltip: str = "",
        on_release: bool = False,
    ) -> None:
        auto = value == "auto"
        start = minimum if auto else float(value)
        self.auto = CheckBox(name="auto", text="auto", value=auto, tooltip=auto_tooltip)
        if not (allow_auto or auto):
            self.auto.visible = False
        if log:
            self.slider = LogSlider(
                name="slider",
                min=minimum,
                max=maximum,
                base=10,
                value=start,
                tooltip=tooltip,
                max_pos=100 * round(math.log10(maximum / minimum)),  # 100 steps a decade
                backend_kwargs={"readout": False},  # the readout label shows the value
            )
        else:
            self.slider = FloatSlider(
                name="slider",
                min=minimum,
                max=maximum,
                step=step,
                value=start,
                readout=False,
                tooltip=tooltip,
            )
        self.readout = Label(name="readout", value=self._format(start))
        # raw Qt: a fixed width, so a new number never re-lays out the whole dock
        self.readout.native.setFixedWidth(
            self.readout.native.fontMetrics().horizontalAdvance("0.000e-00")
        )
        self.slider.enabled = not auto
        super().__init__(
            name=name,
            widgets=[self.auto, self.slider, self.readout],
            layout="horizontal",
            labels=False,
            tooltip=tooltip,
        )
        self.margins = (0, 0, 0, 0)
        self._auto_value: float | None = None
        self._log = log
        self.qslider = self.slider.native.findChildren(QSlider)[0]
        self.auto.changed.connect(self._auto_toggled)
        self.slider.changed.connect(self._slider_moved)
        if on_release:
            self.slider.tracking = False  # changed fires on release
            self.qslider.sliderMoved.connect(self._follow_drag)  # raw Qt: the handle moving

    @staticmethod
    def _format(value: float) -> str:
        return f"{value:.3g}" if 0 < value < 0.01 or value >= 100 else f"{value:.2f}"

    @property
    def value(self) -> float | str:
        """``"auto"`` or the slider's number."""
        return "auto" if self.auto.value else float(self.slider.value)

    @value.setter
    def value(self, value: float | str) -> None:
        if value == "auto":
            self.auto.value = True
        else:
            self.auto.value = False
            self.slider.value = float(value)

    def number(self) -> float:
        """The number in use: the slider's, or the auto value last shown."""
        if self.auto.value and self._auto_value is not None:
            return self._auto_value
        return float(self.slider.value)

    def show_auto(self, value: float) -> None:
        """Show the value an automatic choice gave (without emitting ``changed``)."""
        self._auto_value = float(value)
        if self.auto.value:
            clipped = min(max(float(value), self.slider.min), self.slider.max)
            with self.slider.changed.blocked():
                self.slider.value = clipped
            self.readout.value = self._format(float(value))

    def _auto_toggled(self, auto: bool) -> None:
        self.slider.enabled = not auto
        self.value_changed.emit(self.value)

    def _follow_drag(self, position: int) -> None:
        """The number beside the slider while it is dragged (no value change yet)."""
        low, high = self.qslider.minimum(), self.qslider.maximum()
        fraction = (position - low) / max(high - low, 1)
        lo, hi = float(self.slider.min), float(self.slider.max)
        value = lo * (hi / lo) ** fraction if self._log else lo + (hi - lo) * fraction
        self.readout.value = self._format(value)

    def _slider_moved(self, value: float) -> None:
        self.readout.value = self._format(float(value))
        if not self.auto.value:
            self.value_changed.emit(self.value)
