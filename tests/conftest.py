"""Shared test fixtures. Tests never touch the network: the hub is forced offline.

Fixtures (session-scoped, built once, imported lazily so numpy-only tests stay fast):

* ``tiny_engine``: ``load_engine("tiny")`` on the CPU, a deterministic random-weight model
  with SD2's block structure, 256 px input, default 16x16 layer grid. Its maps are
  row-stochastic but NOT semantic.
* ``tiny_model_dir``: the same model saved with ``save_pretrained`` in the SD2 folder
  layout (unet, vae, text_encoder, tokenizer, scheduler, model_index.json).
* ``two_images``: two small different RGB float images as numpy arrays.
* ``hub_cache``: an empty, offline Hugging Face cache; call it with ``(folder, repo_id)``
  to lay a folder out as a downloaded snapshot at revision ``FAKE_COMMIT``.
* ``attention_checks``: a list that every `check_attention` call of the package appends
  the ``id`` of the map it was given to (to show a map is validated once).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("NAPARI_CORRSEG_MODEL", None)  # "auto" must mean the same for every test
# Map and latent caches go to a throw-away folder, never the user's cache directory.
# Tests that check caching set their own folder on top of this.
os.environ["NAPARI_CORRSEG_CACHE_DIR"] = tempfile.mkdtemp(prefix="napari-corrseg-test-cache-")
if "huggingface_hub" in sys.modules:  # imported before this file: its constants are set
    sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True


@pytest.fixture(scope="session")
def tiny_engine():
    """The tiny random-weight engine on the CPU (float32)."""
    from napari_corrseg.engine import load_engine

    return load_engine("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny model saved as a diffusers SD2 folder; load it with ``load_engine(path)``."""
    from napari_corrseg.engine import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-sd2"))


@pytest.fixture(scope="session")
def two_images():
    """Two different small RGB images (float in [0, 1]) of different sizes."""
    rng = np.random.default_rng(1234)
    rows, cols = np.mgrid[0:96, 0:128]
    first = np.stack([rows / 95, cols / 127, 0.5 + 0 * rows], axis=-1)
    second = rng.random((80, 64, 3))
    return [first.astype(np.float32), second.astype(np.float32)]


FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty offline Hugging Face cache and a function that puts a folder in it."""
    import huggingface_hub.constants

    from napari_corrseg.engine import ENV_VAR

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(ENV_VAR, raising=False)

    def put(folder, repo_id):
        """Lay out ``folder`` as the hub cache holds a downloaded snapshot of ``repo_id``."""
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(FAKE_COMMIT)
        shutil.copytree(folder, repo / "snapshots" / FAKE_COMMIT)

    return put


@pytest.fixture
def attention_checks(monkeypatch):
    """``id`` of the map given to each `check_attention` call, wherever it was imported."""
    from napari_corrseg.core import _validation

    real = _validation.check_attention
    checked: list[int] = []

    def counting(attention, grid=None, name="attention"):
        checked.append(id(attention))
        return real(attention, grid, name)

    for module in list(sys.modules.values()):
        if module is not None and module.__name__.startswith("napari_corrseg"):
            if getattr(module, "check_attention", None) is real:
                monkeypatch.setattr(module, "check_attention", counting)
    return checked
