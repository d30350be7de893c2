"""The package's floor plan: which layers may import torch or Qt, and the old import paths."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import napari_corrseg

#: Layers below the engine (and the files around them): numpy, scipy, zarr, no torch or Qt.
TORCH_FREE_PACKAGES = ("core", "collection", "files", "tasks", "synthetic")
HEAVY = ("torch", "diffusers", "qtpy", "PyQt6", "napari")


def _modules_of(package: str) -> list[str]:
    folder = Path(napari_corrseg.__file__).parent / package
    return [
        f"napari_corrseg.{package}.{info.name}" for info in pkgutil.iter_modules([str(folder)])
    ] + [f"napari_corrseg.{package}"]


def _run_isolated(code: str) -> subprocess.CompletedProcess:
    # run where this process found the package, installed or not
    source_root = str(Path(napari_corrseg.__file__).parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([source_root, os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("package", TORCH_FREE_PACKAGES)
def test_layer_imports_neither_torch_nor_qt(package):
    modules = _modules_of(package)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = _run_isolated(code)
    assert done.returncode == 0, done.stderr


def test_importing_the_package_and_the_cli_parser_stays_light():
    done = _run_isolated(
        "import sys, napari_corrseg, napari_corrseg.cli as cli; cli.build_parser(); "
        f"bad = [m for m in {HEAVY!r} if m in sys.modules]; assert not bad, bad"
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("old, new", sorted(napari_corrseg.MOVED_MODULES.items()))
def test_old_module_paths_give_the_moved_modules(old, new):
    import importlib

    assert importlib.import_module(f"napari_corrseg.{old}") is importlib.import_module(
        f"napari_corrseg.{new}"
    )
    assert getattr(napari_corrseg, old).__name__ == f"napari_corrseg.{new}"


def test_old_from_import_form_works_in_a_fresh_interpreter():
    done = _run_isolated(
        "import warnings\n"
        "warnings.simplefilter('error')\n"
        "from napari_corrseg.maps import AttentionMaps\n"
        "from napari_corrseg.io import read_image\n"
        "import napari_corrseg.pipeline as p\n"
        "assert AttentionMaps.__module__ == 'napari_corrseg.core.maps'\n"
        "assert p.__name__ == 'napari_corrseg.tasks.pipeline'\n"
        "assert p.__spec__.name == 'napari_corrseg.tasks.pipeline'\n"
        "import napari_corrseg.cache as c\n"
        "c.default_cache_dir()  # a lazy relative import inside a moved module\n"
    )
    assert done.returncode == 0, done.stderr
