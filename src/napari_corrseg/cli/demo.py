"""``napari-corrseg demo``: the whole pipeline on the shipped sample pair.

Writes match, co-segmentation and keypoint-transfer results like the other
subcommands, then a picture of napari showing the result layers (``napari.png``). The
picture is rendered in a child process: on the user's display if ``DISPLAY`` is set,
else on an Xvfb server this module starts on a free display number and stops after. With
neither, the picture is skipped with a note. ``--gui`` opens napari with the results and
the plugin's widgets instead (needs a display).

Run as ``python -m napari_corrseg.cli.demo render FOLDER`` to (re)draw the picture only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .common import _add_output_options, _maps, check_model_options

_RENDER_TIMEOUT_S = 240


def demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options: output folder (default ``corrseg-demo``), --gui, --no-picture."""
    _add_output_options(parser, default="corrseg-demo")
    parser.add_argument(
        "--gui",
        action="store_true",
        help="open napari with the widgets docked and the results loaded",
    )
    parser.add_argument(
        "--no-picture", action="store_true", help="skip the rendered picture of napari"
    )


def run_demo(args: argparse.Namespace, context) -> int:
    """Run the demo subcommand (see module docstring); returns the exit code."""
    from ..files import export
    from ..files.io import output_transaction, write_json
    from ..files.sample_data import load_sample_pair, sample_keypoints, sample_paths

    check_model_options(args)
    images, paths = load_sample_pair(), sample_paths()
    with output_transaction(args.out, overwrite=args.overwrite) as transaction:
        staging = transaction.staging
        engine, maps = _maps(args, context, images, "all")
        tiny = bool(getattr(engine, "is_tiny", False))
        summary = _write_results(staging, maps, images, sample_keypoints(), tiny, context)
        write_json(staging / "summary.json", summary)
        outputs = ["pair_0_1", "coseg", "transfer_0_1", "summary.json"]
        if not args.gui and not args.no_picture:
            picture = render_picture(staging, context)
            if picture is not None:
                outputs.append(picture.name)
        report = transaction.commit(export.run_record("demo", args, engine, maps, paths, outputs))
    out = report.folder
    if args.gui:
        return open_gui(out, context)
    if summary["tiny_model"]:
        context.warn(
            "the tiny random model was used: these results are NOT semantic (see the "
            "first warning for how to get Stable Diffusion 2.1-base)"
        )
    context.say(report.summary().replace("results in", "demo results in", 1))
    return 0


def _write_results(folder: Path, maps, images, keypoints, tiny: bool, context) -> dict:
    """Match, co-segment and transfer the sample pair into ``folder``; the summary."""
    from ..files import export
    from ..tasks.pipeline import cosegment_images, match_images, transfer_keypoints

    keypoints_a, keypoints_b, names = keypoints
    result = match_images(maps, 0, 1)
    export.write_pair(folder / "pair_0_1", result, images[0], images[1], tiny=tiny)
    context.say(f"match: {len(result)} matches, IMS {result.ims:.3f} grid cells")

    coseg = cosegment_images(maps)
    export.write_coseg(folder / "coseg", coseg, images, tiny=tiny)
    shared = sum(1 for s in coseg.segments if s.get("shared"))
    context.say(f"coseg: {len(coseg.segments)} segments, {shared} shared")

    moved = transfer_keypoints(maps, 0, 1, keypoints_a)
    export.write_transfer(
        folder / "transfer_0_1",
        moved,
        images[0],
        images[1],
        columns={"name": np.asarray(names)},
        tiny=tiny,
    )
    errors = np.linalg.norm(moved.target_points - keypoints_b, axis=1)
    summary = {
        "tiny_model": tiny,
        "matches": len(result),
        "ims_grid_cells": result.ims,
        "segments": len(coseg.segments),
        "shared_segments": shared,
        "keypoint_error_px": {n: float(e) for n, e in zip(names, errors, strict=True)},
        "keypoint_mean_error_px": float(errors.mean()),
        "keypoints_within_10px": int((errors <= 10).sum()),
    }
    context.say(
        f"transfer: {len(names)} keypoints, mean distance to the true points "
        f"{errors.mean():.1f} px ({summary['keypoints_within_10px']} within 10 px)"
    )
    return summary


# -- a picture of napari ---------------------------------------------------------------


def _free_display() -> int | None:
    for number in range(90, 200):
        if not (
            Path(f"/tmp/.X11-unix/X{number}").exists() or Path(f"/tmp/.X{number}-lock").exists()
        ):
            return number
    return None


def _start_xvfb() -> tuple[subprocess.Popen, str] | None:
    executable = shutil.which("Xvfb")
    number = _free_display()
    if executable is None or number is None:
        return None
    process = subprocess.Popen(
        [executable, f":{number}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    socket = Path(f"/tmp/.X11-unix/X{number}")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if socket.exists():
            return process, f":{number}"
        if process.poll() is not None:
            return None
        time.sleep(0.1)
    process.terminate()
    return None


def render_picture(out: Path, context) -> Path | None:
    """Render ``out/napari.png`` in a child process; None (with a note) if impossible."""
    env = dict(os.environ)
    env.pop("QT_QPA_PLATFORM", None)  # offscreen cannot draw napari's OpenGL canvas
    server = None
    if not env.get("DISPLAY"):
        server = _start_xvfb()
        if server is None:
            context.warn(
                "no display and no working Xvfb: skipped the napari picture "
                "(install Xvfb, e.g. scripts/install-xvfb.sh, to get it)"
            )
            return None
        env["DISPLAY"] = server[1]
    context.say(f"rendering napari picture on display {env['DISPLAY']} ...")
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "napari_corrseg.cli.demo", "render", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=_RENDER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        completed = None
    finally:
        if server is not None:
            server[0].terminate()
            try:
                server[0].wait(timeout=10)
            except subprocess.TimeoutExpired:
                server[0].kill()
    picture = out / "napari.png"
    if completed is None or completed.returncode != 0 or not picture.is_file():
        reason = (
            "timed out"
            if completed is None
            else ((completed.stderr or completed.stdout).strip().splitlines() or ["no output"])[-1]
        )
        context.warn(
            f"could not render the napari picture ({reason}); the other results are complete"
        )
        return None
    context.say(f"napari picture: {picture}")
    return picture


def _add_result_layers(viewer, out: Path) -> None:
    """Show the sample pair side by side with the demo's result layers."""
    from ..files.io import read_image, read_points_csv
    from ..files.sample_data import sample_paths

    images = [read_image(p) for p in sample_paths()]
    offset = np.array([0.0, images[0].shape[1] + 16.0])
    viewer.add_image(images[0], name="sample A")
    viewer.add_image(images[1], name="sample B", translate=offset)
    coseg = out / "coseg"
    if (coseg / "labels_0.tif").is_file():
        import tifffile

        for k, shift in ((0, (0, 0)), (1, offset)):
            viewer.add_labels(
                tifffile.imread(coseg / f"labels_{k}.tif"),
                opacity=0.35,
                name=f"co-segmentation {'AB'[k]}",
                translate=shift,
            )
    pair = out / "pair_0_1"
    metrics = np.load(pair / "metrics.npz", allow_pickle=False)
    viewer.add_image(
        metrics["entropy"],
        name="entropy (B)",
        colormap="magma",
        opacity=0.5,
        scale=metrics["entropy_scale"],
        translate=metrics["entropy_translate"] + offset,
        visible=False,
    )
    source = read_points_csv(pair / "source_points.csv")
    target = read_points_csv(pair / "target_points.csv") + offset
    table = np.genfromtxt(pair / "matches.csv", delimiter=",", names=True)
    best = np.argsort(-np.atleast_1d(table["confidence"]))[:40]
    if len(best):
        lines = np.stack([source[best], target[best]], axis=1)
        viewer.add_shapes(
            list(lines),
            shape_type="line",
            edge_color="yellow",
            edge_width=1.0,
            name="best 40 matches",
        )
    moved = out / "transfer_0_1"
    viewer.add_points(
        read_points_csv(moved / "source_points.csv"), name="keypoints A", face_color="cyan", size=7
    )
    viewer.add_points(
        read_points_csv(moved / "target_points.csv") + offset,
        name="keypoints carried to B",
        face_color="magenta",
        size=7,
    )
    viewer.reset_view()


def _render(out: Path) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True, title="napari-corrseg demo")
    viewer.window._qt_window.resize(1400, 800)
    _add_result_layers(viewer, out)
    summary = json.loads((out / "summary.json").read_text())
    if summary.get("tiny_model"):
        viewer.text_overlay.visible = True
        viewer.text_overlay.color = "red"
        viewer.text_overlay.font_size = 14
        viewer.text_overlay.position = "top_center"
        viewer.text_overlay.text = "TINY RANDOM MODEL (no SD2 weights): results NOT semantic"
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    import imageio.v3 as iio

    from ..files.io import write_bytes

    picture = viewer.screenshot(canvas_only=False, flash=False)
    write_bytes(out / "napari.png", iio.imwrite("<bytes>", picture, extension=".png"))
    viewer.close()


def open_gui(out: Path, context) -> int:
    """Open napari with the demo results and the plugin's widgets (needs a display)."""
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        context.warn(
            "--gui needs a display (DISPLAY is not set); results are written to "
            f"{out}, open them with: napari {out}/pair_0_1/*.csv"
        )
        return 0
    import napari

    viewer = napari.Viewer(title="napari-corrseg demo")
    _add_result_layers(viewer, out)
    widget_names: list[str] = []
    try:
        from npe2 import PluginManager

        contributions = PluginManager.instance().get_manifest("napari-corrseg").contributions
        widget_names = [w.display_name for w in (contributions.widgets or [])]
    except Exception as error:  # a broken manifest must not stop the viewer opening
        context.warn(f"could not list the plugin's widgets ({error})")
    for name in widget_names:
        try:
            viewer.window.add_plugin_dock_widget("napari-corrseg", name)
        except Exception as error:
            context.warn(f"could not dock widget {name!r} ({error})")
    napari.run()
    return 0


if __name__ == "__main__":  # pragma: no cover - run by render_picture in a child process
    if len(sys.argv) == 3 and sys.argv[1] == "render":
        _render(Path(sys.argv[2]))
    else:
        sys.exit("usage: python -m napari_corrseg.cli.demo render FOLDER")
