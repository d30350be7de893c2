"""The first ten minutes of a new user: the setup narrates, the demo says what to do
next, and no figure made with the tiny random model passes for a real result."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for .venv/bin/python: no torch yet; pip prints what a real one prints
if [ "$1" = "-c" ]; then exit 1; fi
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    echo "Looking in indexes: somewhere"
    echo "Collecting torch==2.13.0"
    echo "  Downloading torch-2.13.0.whl (200 MB)"
    echo "Collecting numpy (from torch==2.13.0)"
    if [ -n "${FAIL_PIP:-}" ]; then echo "ERROR: no matching distribution" >&2; exit 1; fi
    echo "Successfully installed numpy-2.0 torch-2.13.0"
    exit 0
fi
exit 0
"""


def _fake_checkout(tmp_path: Path) -> Path:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("setup-env.sh", "run-demo.sh", "install-xvfb.sh"):
        shutil.copy(ROOT / "scripts" / name, checkout / "scripts" / name)
    python = tmp_path / "python3"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return checkout


def _run(checkout: Path, script: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": str(checkout.parent / "python3"), **env}
    environment["DISPLAY"] = ":0"  # no Xvfb install here
    return subprocess.run(
        ["bash", f"scripts/{script}"],
        cwd=checkout,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_setup_says_what_it_installs_and_keeps_pips_output(tmp_path):
    checkout = _fake_checkout(tmp_path)
    done = _run(checkout, "setup-env.sh")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "==> creating the virtual environment .venv"
    assert "==> installing torch 2.13.0 (CPU build) first" in done.stdout
    assert "    fetching torch==2.13.0" in lines and "    fetching numpy" in lines
    assert "Downloading" not in done.stdout  # the details go to the log
    assert "Downloading torch" in (checkout / ".venv" / "setup.log").read_text()
    assert lines[-1] == "==> environment ready: .venv"


def test_setup_failure_shows_pips_last_lines_and_fails(tmp_path):
    checkout = _fake_checkout(tmp_path)
    done = _run(checkout, "setup-env.sh", FAIL_PIP="1")
    assert done.returncode == 1
    assert "pip failed (exit 1)" in done.stderr and "no matching distribution" in done.stderr


def test_demo_script_ends_with_the_next_three_commands(tmp_path):
    checkout = _fake_checkout(tmp_path)
    (checkout / "scripts" / "setup-env.sh").write_text("echo '==> environment ready'\n")
    tool = checkout / ".venv" / "bin" / "napari-corrseg"
    tool.parent.mkdir(parents=True)
    tool.write_text('#!/usr/bin/env bash\necho "demo ran with: $*"\n')
    tool.chmod(0o755)
    done = _run(checkout, "run-demo.sh")
    assert done.returncode == 0, done.stderr
    assert "demo ran with: demo --out corrseg-demo" in done.stdout
    tail = done.stdout.split("==> Next:")[1]
    steps = [line.split("#")[0].strip() for line in tail.splitlines() if "# " in line]
    assert [s for s in steps if s] == [
        "source .venv/bin/activate",
        "napari-corrseg demo --gui",
        "napari-corrseg match A.png B.png --out my-results",
    ]


# -- figures -------------------------------------------------------------------------------


@pytest.fixture
def drawn(monkeypatch):
    """Every matplotlib figure saved by `napari_corrseg.files.figures`, kept for a look."""
    from napari_corrseg.files import figures

    kept = []
    real = figures._save

    def keep(figure, path, notice=None):
        written = real(figure, path, notice)
        kept.append(figure)
        return written

    monkeypatch.setattr(figures, "_save", keep)
    return kept


def _has_colour_bar(figure) -> bool:
    return any(axis.get_label() == "<colorbar>" for axis in figure.axes)


def test_tiny_model_figures_carry_the_notice_and_colour_figures_a_colour_bar(drawn, tmp_path):
    from napari_corrseg.core.maps import AttentionMaps, ImageGeometry
    from napari_corrseg.files import export
    from napari_corrseg.files.figures import TINY_NOTICE
    from napari_corrseg.synthetic.warps import make_pair, translation
    from napari_corrseg.tasks.pipeline import cosegment_images, match_images, transfer_keypoints

    pair = make_pair((8, 8), translation((1.0, 0.0)))
    geometry = ImageGeometry((32, 32), (8, 8))
    maps = AttentionMaps(
        (8, 8),
        [geometry, geometry],
        {(0, 1): pair.a_st, (1, 0): pair.a_ts, (0, 0): pair.a_st, (1, 1): pair.a_ts},
    )
    image = np.zeros((32, 32, 3), np.uint8)
    keypoints = np.array([[5.0, 5.0], [20.0, 10.0]])
    for tiny in (True, False):
        drawn.clear()
        export.write_pair(tmp_path / f"p{tiny}", match_images(maps), image, image, tiny=tiny)
        export.write_coseg(tmp_path / f"c{tiny}", cosegment_images(maps), [image] * 2, tiny=tiny)
        moved = transfer_keypoints(maps, 0, 1, keypoints)
        export.write_transfer(tmp_path / f"t{tiny}", moved, image, image, tiny=tiny)
        assert len(drawn) == 7  # 4 metric maps, matches, labels, keypoints
        noticed = [any(TINY_NOTICE in text.get_text() for text in f.texts) for f in drawn]
        assert noticed == [tiny] * 7
        # colour = an amount everywhere but the label picture (colour = segment id)
        assert [_has_colour_bar(f) for f in drawn] == [True] * 5 + [False, True]


# -- model="auto" offline: decided once, quickly, said once ----------------------------------


def test_auto_without_weights_asks_the_network_once_and_warns_once(hub_cache, monkeypatch):
    import socket
    import warnings

    import huggingface_hub.constants

    from napari_corrseg.engine import LazyEngine, models

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "_HUB_REACHABLE", {})
    probes = []

    def unreachable(address, timeout=None):
        probes.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = LazyEngine("auto", device="cpu")
        assert engine.is_tiny and not engine.loaded  # decided without loading anything
        again = LazyEngine("auto", device="cpu")
        assert again.is_tiny
    assert len(probes) == 1 and probes[0][1] <= 2.0  # asked once, with a short timeout
    messages = [str(w.message) for w in caught if "TINY RANDOM" in str(w.message)]
    assert len(messages) == 2  # one per engine, none when it later loads
    assert all("hub cannot be reached" in m and "\n" not in m for m in messages)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.load()  # loads the tiny model it decided on: no second decision
    assert not [w for w in caught if "TINY RANDOM" in str(w.message)]
