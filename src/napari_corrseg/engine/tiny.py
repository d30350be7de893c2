"""A tiny random-weight model with the Stable Diffusion 2 block structure.

It exists for tests and for machines without weights: fast on a CPU and deterministic
(fixed seed), but its attention is NOT semantic. The UNet keeps SD2's layout
(CrossAttnDownBlock2D x3 + DownBlock2D, UpBlock2D + CrossAttnUpBlock2D x3, two layers per
block, linear projections, ``upcast_attention``), so layer names and resolutions match the
real model: at its 256 px input the default decoder layers sit on a 16x16 grid.
`save_tiny_model` writes it in the SD2 folder layout, tokenizer included (a minimal
byte-level CLIP vocabulary written by code, no download).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = [
    "TINY_IMAGE_SIZE",
    "TINY_UNET_CHANNELS",
    "build_tiny_components",
    "empty_prompt_ids",
    "save_tiny_model",
]

TINY_IMAGE_SIZE = 256
TINY_UNET_CHANNELS = (32, 64, 64, 64)
_TEXT_LENGTH = 77
# 256 byte symbols + 256 word-final byte symbols + <|startoftext|> + <|endoftext|>
_TINY_VOCAB_SIZE = 514
# Default initialisation gives near-uniform self-attention (row entropy ~99% of log N);
# scaling the query and key weights by 4 makes the scores 16x larger, so maps are peaked
# (entropy ~70% of log N) as a trained model's are, and argmax-based tests mean something.
_QK_GAIN = 4.0


def empty_prompt_ids(vocab_size: int, length: int = _TEXT_LENGTH) -> torch.Tensor:
    """Token ids of the empty prompt as SD2's tokenizer writes them, without a tokenizer.

    CLIP vocabularies end with ``<|startoftext|>`` and ``<|endoftext|>``; SD2 pads with
    ``"!"``, id 0. So the empty prompt is ``[bos, eos, 0, 0, ...]``.
    """
    ids = torch.zeros((1, length), dtype=torch.long)
    ids[0, 0], ids[0, 1] = vocab_size - 2, vocab_size - 1
    return ids


def _unet_config() -> dict:
    return {
        "sample_size": TINY_IMAGE_SIZE // 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        "up_block_types": (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        "block_out_channels": TINY_UNET_CHANNELS,
        "layers_per_block": 2,
        "attention_head_dim": (2, 4, 4, 4),  # number of heads, as in SD2's config
        "cross_attention_dim": 32,
        "norm_num_groups": 32,
        "use_linear_projection": True,
        "upcast_attention": True,
    }


def _vae_config() -> dict:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (16, 16, 32, 32),
        "layers_per_block": 1,
        "norm_num_groups": 16,
        "latent_channels": 4,
        "sample_size": TINY_IMAGE_SIZE,
        "scaling_factor": 0.18215,
    }


def _text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=_TINY_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=_TEXT_LENGTH,
        projection_dim=32,
        bos_token_id=_TINY_VOCAB_SIZE - 2,
        eos_token_id=_TINY_VOCAB_SIZE - 1,
        pad_token_id=0,
    )


def build_tiny_components(seed: int = 0) -> dict:
    """Build the tiny UNet, VAE, text encoder and scheduler with seeded random weights.

    Returns
    -------
    dict
        ``unet``, ``vae``, ``text_encoder``, ``scheduler`` and ``tokenizer`` (None: the
        empty prompt's ids are written directly by `empty_prompt_ids`).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**_unet_config())
        vae = AutoencoderKL(**_vae_config())
        text_encoder = CLIPTextModel(_text_config())
        with torch.no_grad():
            for name, module in unet.named_modules():
                if name.endswith(".attn1"):
                    module.to_q.weight.mul_(_QK_GAIN)
                    module.to_k.weight.mul_(_QK_GAIN)
    finally:  # leave the caller's random stream as it was
        torch.random.set_rng_state(state)
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "scheduler": scheduler,
        "tokenizer": None,
    }


def _byte_symbols() -> list[str]:
    """The 256 byte stand-ins of byte-level BPE (GPT-2, CLIP) in CLIP's vocabulary order:
    printable bytes as themselves (``"!"`` first, id 0), then the rest mapped past 255."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    return [chr(code) for code in printable] + [chr(256 + n) for n in range(256 - len(printable))]


def _write_tokenizer(folder: Path) -> None:
    """Write a minimal byte-level CLIP tokenizer (vocab.json, merges.txt) for the tiny model."""
    symbols = _byte_symbols()
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == _TINY_VOCAB_SIZE
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": _TEXT_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "!",  # SD2's choice: pad with "!" (id 0)
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def save_tiny_model(folder: str | Path, seed: int = 0) -> Path:
    """Save the tiny model in the SD2 diffusers folder layout.

    The folder holds ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
    ``tokenizer/`` and ``scheduler/`` with safetensors weights, and loads back through
    ``load_engine(folder)``, the loader a downloaded hub snapshot goes through.

    Parameters
    ----------
    folder : str or Path
        Where to write; created if missing.
    seed : int
        Seed of the random weights (0 gives the same weights as ``load_engine("tiny")``).

    Returns
    -------
    Path
        The folder.
    """
    folder = Path(folder)
    parts = build_tiny_components(seed)
    folder.mkdir(parents=True, exist_ok=True)
    parts["unet"].save_pretrained(folder / "unet", safe_serialization=True)
    parts["vae"].save_pretrained(folder / "vae", safe_serialization=True)
    parts["text_encoder"].save_pretrained(folder / "text_encoder", safe_serialization=True)
    parts["scheduler"].save_pretrained(folder / "scheduler")
    _write_tokenizer(folder / "tokenizer")
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return folder
