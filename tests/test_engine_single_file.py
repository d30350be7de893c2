"""Single-file (original LDM layout) checkpoints: the tiny model written as one, read back.

The tiny model is converted to the layout of ``v2-1_512-ema-pruned.safetensors``
(``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.model.*``) by
the inverse of diffusers' key mapping, written with safetensors and loaded through the
engine's single-file loader. The tiny architecture is not SD2's, so the test passes the
tiny folder as the config; real files use the configs shipped in the package.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from napari_corrseg.engine import Engine
from napari_corrseg.engine.models import _load_single_file
from napari_corrseg.engine.tiny import build_tiny_components

pytestmark = pytest.mark.slow


def _unet_to_ldm(state: dict) -> dict:
    """Diffusers UNet keys -> LDM keys for SD's 4-level, 2-layers-per-block layout."""
    renames = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for i in range(4):
        for j in range(2):
            renames.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{3 * i + j + 1}.0."))
            renames.append(
                (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{3 * i + j + 1}.1.")
            )
        for j in range(3):
            renames.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{3 * i + j}.0."))
            renames.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{3 * i + j}.1."))
        renames.append(
            (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{3 * i + 3}.0.op.")
        )
        upsample_slot = 1 if i == 0 else 2
        renames.append(
            (f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{3 * i + 2}.{upsample_slot}.")
        )
    resnet_parts = [
        ("norm1", "in_layers.0"),
        ("conv1", "in_layers.2"),
        ("norm2", "out_layers.0"),
        ("conv2", "out_layers.3"),
        ("time_emb_proj", "emb_layers.1"),
        ("conv_shortcut", "skip_connection"),
    ]
    out = {}
    for key, value in state.items():
        new = key
        if "resnets" in key:
            for old, ldm in resnet_parts:
                new = new.replace(old, ldm)
        for old, ldm in renames:
            if new.startswith(old):
                new = ldm + new[len(old) :]
                break
        out["model.diffusion_model." + new] = value
    return out


def _vae_to_ldm(state: dict, n_blocks: int) -> dict:
    """Diffusers AutoencoderKL keys -> LDM keys (up blocks are numbered in reverse)."""
    attention_parts = {
        "group_norm.": "norm.",
        "to_q.": "q.",
        "to_k.": "k.",
        "to_v.": "v.",
        "to_out.0.": "proj_out.",
    }
    out = {}
    for key, value in state.items():
        new = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        new = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", new)
        new = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", new)
        new = re.sub(
            r"up_blocks\.(\d+)\.resnets\.",
            lambda m: f"up.{n_blocks - 1 - int(m.group(1))}.block.",
            new,
        )
        new = re.sub(
            r"up_blocks\.(\d+)\.upsamplers\.0\.",
            lambda m: f"up.{n_blocks - 1 - int(m.group(1))}.upsample.",
            new,
        )
        new = re.sub(
            r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", new
        )
        if "mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for old, ldm in attention_parts.items():
                new = new.replace(old, ldm)
            if value.ndim == 2:  # LDM stores these projections as 1x1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def _text_encoder_to_ldm(state: dict) -> dict:
    """transformers CLIPTextModel keys -> OpenCLIP keys, q/k/v merged into in_proj."""
    out, merged = {}, {}
    for key, value in state.items():
        key = key.removeprefix("text_model.")
        match = re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key)
        if match:
            layer, part, kind = match.groups()
            merged.setdefault((layer, kind), {})[part] = value
            continue
        new = (
            key.replace("embeddings.token_embedding.weight", "token_embedding.weight")
            .replace("embeddings.position_embedding.weight", "positional_embedding")
            .replace("final_layer_norm.", "ln_final.")
            .replace("encoder.layers.", "transformer.resblocks.")
            .replace("layer_norm1", "ln_1")
            .replace("layer_norm2", "ln_2")
            .replace(".fc1.", ".c_fc.")
            .replace(".fc2.", ".c_proj.")
            .replace(".self_attn.out_proj.", ".attn.out_proj.")
        )
        out["cond_stage_model.model." + new] = value
    for (layer, kind), parts in merged.items():
        name = f"cond_stage_model.model.transformer.resblocks.{layer}.attn.in_proj_{kind}"
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def test_single_file_checkpoint_loads_with_identical_maps(
    tmp_path, tiny_model_dir, tiny_engine, two_images
):
    from safetensors.torch import save_file

    checkpoint = {
        **_unet_to_ldm(tiny_engine.unet.state_dict()),
        **_vae_to_ldm(
            tiny_engine.vae.state_dict(), len(tiny_engine.vae.config.block_out_channels)
        ),
    }
    checkpoint.update(_text_encoder_to_ldm(build_tiny_components()["text_encoder"].state_dict()))
    path = tmp_path / "tiny-v2-1_256.safetensors"
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(path))

    device = torch.device("cpu")
    components = _load_single_file(path, device, torch.float32, config=tiny_model_dir)
    engine = Engine(components, device, torch.float32)
    for module in (engine.unet, engine.vae):  # as load_engine stores them on the CPU
        module.to(memory_format=torch.channels_last)
    assert engine.identity["model"] == str(path.resolve())
    assert len(engine.identity["file_sha256"]) == 64 and engine.is_tiny
    for ours, theirs in [(engine.unet, tiny_engine.unet), (engine.vae, tiny_engine.vae)]:
        reference = theirs.state_dict()
        loaded = ours.state_dict()
        assert loaded.keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(loaded[key], value), key
    np.testing.assert_allclose(
        engine.prompt_embeddings(1).numpy(), tiny_engine.prompt_embeddings(1).numpy(), atol=1e-6
    )
    ours, theirs = engine.extract(two_images), tiny_engine.extract(two_images)
    for key in theirs.maps:
        np.testing.assert_allclose(ours.maps[key], theirs.maps[key], atol=1e-6)
