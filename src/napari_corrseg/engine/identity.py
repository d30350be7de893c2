"""A model's identity and input size without loading its weights, and a lazy engine.

The attention-map cache is keyed by ``engine.identity``; computing it used to need the
loaded model (seconds to a minute, gigabytes). `model_identity` resolves the same dict
from names, configs, the local Hugging Face cache and file hashes only, and
`LazyEngine` loads the model on first real use, so a cache hit in
`napari_corrseg.tasks.pipeline.compute_maps` never loads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from .encoders import encoder_revision, encoder_source
from .models import (
    _HUB_ID,
    CONFIG_DIR,
    MODEL_ALIASES,
    _cached_snapshot,
    _file_sha256,
    _folder_fingerprint,
    decide_auto,
    resolve_device,
    resolve_dtype,
)
from .tiny import TINY_IMAGE_SIZE, TINY_UNET_CHANNELS

__all__ = ["LazyEngine", "model_identity"]


def _describe_folder(folder: Path) -> tuple[bool, int]:
    """(is the tiny model, input size in pixels) from a diffusers folder's configs."""
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    size = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    return tuple(unet["block_out_channels"]) == TINY_UNET_CHANNELS, size


def _resolve(model: str) -> tuple[dict[str, Any], bool, int] | None:
    """(identity without dtype/tiny, tiny, image size), or None when only loading knows.

    ``model`` is a concrete name: resolve ``"auto"`` with `decide_auto` first.
    """
    model = str(model)
    if model == "tiny":
        return {"model": "tiny", "revision": "builtin"}, True, TINY_IMAGE_SIZE
    repo_id = MODEL_ALIASES.get(model)
    path = Path(model).expanduser()
    if repo_id is None and path.suffix == ".safetensors" and path.is_file():
        name = "sd2" if "768" in path.name else "sd2-base"
        _, size = _describe_folder(CONFIG_DIR / name)
        identity = {"model": str(path.resolve()), "file_sha256": _file_sha256(path)}
        return identity, False, size
    if repo_id is None and path.is_dir():
        tiny, size = _describe_folder(path)
        identity = {"model": str(path.resolve()), "revision": _folder_fingerprint(path)}
        return identity, tiny, size
    if repo_id is None and _HUB_ID.fullmatch(model):
        repo_id = model
    if repo_id is None:
        return None
    folder = _cached_snapshot(repo_id)
    if folder is None:
        return None
    tiny, size = _describe_folder(folder)
    return {"model": repo_id, "revision": folder.name}, tiny, size


def model_identity(
    model: str = "auto",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    encoder: str | None = "vae",
) -> dict[str, Any] | None:
    """``load_engine(model, device, dtype, encoder=encoder).identity`` without loading.

    Parameters
    ----------
    model, device, dtype, encoder
        As for `napari_corrseg.engine.load_engine`.

    Returns
    -------
    dict or None
        The identity, or None when it cannot be known without loading (a hub id that is
        not in the local cache, ``"auto"`` with nothing cached, an unreadable folder).
    """
    try:
        resolved = _resolve(decide_auto() if str(model) == "auto" else model)
        source = encoder_source(encoder)
    except (OSError, ValueError, KeyError, ModelLoadError):
        return None
    if resolved is None:
        return None
    identity, tiny, _ = resolved
    resolved_dtype = resolve_dtype(dtype, resolve_device(device))
    identity = {
        **identity,
        "dtype": str(resolved_dtype).removeprefix("torch."),
        "tiny": identity["model"] == "tiny" or tiny,
    }
    if source is not None:
        name, folder = source
        if folder is None:
            return None
        identity |= {"encoder": name, "encoder_revision": encoder_revision(name, Path(folder))}
    return identity


class LazyEngine:
    """An engine that loads its model on first use; identity and size come without loading.

    Pass it wherever an `Engine` is expected (e.g. `napari_corrseg.tasks.pipeline.compute_maps`):
    ``identity`` and ``image_size`` are answered from `model_identity`; anything else
    loads the model once (``load_engine(model, device, dtype, **options)``) and forwards
    to it. ``loaded`` tells whether that happened.
    """

    def __init__(
        self,
        model: str = "auto",
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        **options: Any,
    ) -> None:
        # "auto" is decided once, here: identity and loading then name the same model
        model = decide_auto() if str(model) == "auto" else str(model)
        self._arguments = (model, device, dtype)
        self._options = options
        self._engine = None
        self._identity = model_identity(model, device, dtype, options.get("encoder", "vae"))
        try:
            self._size = _resolve(model)[2] if self._identity is not None else None
        except (OSError, ValueError, KeyError, TypeError):
            self._size = None

    def __repr__(self) -> str:
        return f"LazyEngine(model={self._arguments[0]!r}, loaded={self.loaded})"

    @property
    def loaded(self) -> bool:
        """True once the model has been loaded."""
        return self._engine is not None

    def load(self):
        """Load (once) and return the real `Engine`."""
        if self._engine is None:
            from . import load_engine

            self._engine = load_engine(*self._arguments, **self._options)
        return self._engine

    @property
    def identity(self) -> dict[str, Any]:
        """The model identity, without loading when it can be resolved."""
        return dict(self._identity) if self._identity is not None else self.load().identity

    @property
    def image_size(self) -> int:
        """Model input size in pixels, without loading when it can be resolved."""
        return int(self._size) if self._size is not None else self.load().image_size

    @property
    def is_tiny(self) -> bool:
        """True for the random-weight tiny model."""
        return bool(self.identity.get("tiny"))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.load(), name)
