"""Drive the real widgets on the sample pair and save window screenshots for the docs.

Used by ``scripts/make_screenshots.py`` and by the screenshot test, so the pictures in
``docs/napari.md`` always come from the plugin as it is. Needs a shown viewer on a real
(or Xvfb) display: a hidden viewer renders black.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QApplication

from ..files.io import read_points_csv, write_bytes
from ..files.sample_data import load_sample_pair, sample_keypoints, sample_paths
from ._tags import find_result, results_of
from .collection import CollectionWidget
from .correspondence import CorrespondenceWidget
from .cosegmentation import CosegmentationWidget

#: Screenshot files written by `make_screenshots`, in docs order.
SCREENSHOTS = (
    "screenshot_matches.png",
    "screenshot_query.png",
    "screenshot_transfer.png",
    "screenshot_cosegmentation.png",
    "screenshot_propagation.png",
    "screenshot_collection_review.png",
    "screenshot_collection_coseg.png",
)
WINDOW_SIZE = (1500, 900)


def wait_until_idle(widget, timeout: float = 600.0) -> None:
    """Process Qt events until the widget has nothing computing or being shown."""
    deadline = time.monotonic() + timeout
    while not widget.runner.idle:
        if time.monotonic() > deadline:
            raise TimeoutError("the widget's run did not finish in time")
        QApplication.processEvents()
        time.sleep(0.01)
    for _ in range(5):
        QApplication.processEvents()


def _save(viewer, folder: Path, name: str) -> Path:
    for _ in range(5):
        QApplication.processEvents()
    path = folder / name
    viewer.window.screenshot(path=str(path), canvas_only=False, flash=False)
    return path


def _keypoints(index: int) -> np.ndarray | None:
    path = sample_paths()[index].with_name(f"sample_{'ab'[index]}_keypoints.csv")
    return read_points_csv(path) if path.exists() else None


def make_screenshots(viewer, folder: str | Path, *, model: str = "tiny") -> list[Path]:
    """Run the widgets on the sample pair (and the Collection widget on 8 variants of
    it) in ``viewer`` and save `SCREENSHOTS`.

    Parameters
    ----------
    viewer : napari.Viewer
        A shown viewer (``show=True``).
    folder : str or Path
        Where the PNGs go (created if missing).
    model : str
        Model for the widgets' model field.

    Returns
    -------
    list of Path
        The PNG files written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    first, second = load_sample_pair()
    source = viewer.add_image(first, name="sample A", rgb=True)
    target = viewer.add_image(
        second, name="sample B", rgb=True, translate=(0, first.shape[1] + 16)
    )
    written = []

    matcher = CorrespondenceWidget(viewer)
    dock = viewer.window.add_dock_widget(matcher, name="Correspondence", area="right")
    matcher.settings.model.value = model
    matcher.source.value, matcher.target.value = source, target
    matcher.n_matches.value = 25
    matcher._rematch_soon.cancel()  # nothing computed yet
    matcher.show_lines.value = True
    matcher.run()
    wait_until_idle(matcher)
    for layer in results_of(viewer, widget="correspondence", group="run"):
        if layer.metadata["napari_corrseg"]["role"].startswith("metric:"):
            layer.visible = False
    viewer.reset_view()
    written.append(_save(viewer, folder, SCREENSHOTS[0]))

    # interactive query: the click the user would make on the source
    matcher.show_lines.value = False
    wait_until_idle(matcher)
    matcher.query_enabled.value = True
    for side in ("source", "target"):
        find_result(viewer, widget="correspondence", role=f"matches:{side}").visible = False
    matcher.query_at(np.array([100.0, 128.0]))
    written.append(_save(viewer, folder, SCREENSHOTS[1]))
    matcher.query_enabled.value = False  # removes the query layers

    # keypoint transfer from the user's Points layer
    keypoints = _keypoints(0)
    if keypoints is not None:
        user = viewer.add_points(keypoints, name="keypoints A", face_color="yellow", size=8)
        matcher.keypoints.value = user
        matcher.transfer()
        wait_until_idle(matcher)
        written.append(_save(viewer, folder, SCREENSHOTS[2]))
        user.visible = False
        find_result(viewer, widget="correspondence", role="transfer").visible = False
    viewer.window.remove_dock_widget(dock)

    # co-segmentation of the pair, with the table of shared segments
    coseg = CosegmentationWidget(viewer)
    coseg_dock = viewer.window.add_dock_widget(coseg, name="Co-segmentation", area="right")
    coseg.settings.model.value = model
    coseg.images.value = [source, target]
    coseg.run()
    wait_until_idle(coseg)
    written.append(_save(viewer, folder, SCREENSHOTS[3]))

    # label propagation: paint a label on A (a disc), propose it on B
    for layer in results_of(viewer, widget="cosegmentation", role="coseg"):
        layer.visible = False
    rows, cols = np.mgrid[: first.shape[0], : first.shape[1]]
    painted = (((rows - 128) ** 2 + (cols - 110) ** 2) < 40**2).astype(np.int32) * 3
    user_labels = viewer.add_labels(painted, name="painted on A")
    coseg.painted.value = user_labels
    coseg.painted_image.value = source
    coseg.propagate()
    wait_until_idle(coseg)
    written.append(_save(viewer, folder, SCREENSHOTS[4]))
    viewer.window.remove_dock_widget(coseg_dock)
    viewer.layers.clear()

    # a collection of 8 variants of the pair: review, then co-segmentation
    with tempfile.TemporaryDirectory(prefix="napari-corrseg-collection-") as images:
        written += make_collection_screenshots(viewer, folder, images, model=model)
    return written


def write_sample_collection(folder: str | Path, n_images: int = 8) -> list[Path]:
    """Write ``n_images`` PNG variants of the sample pair (A, B, A flipped, B shifted, ...)
    into ``folder``; image 0 is sample A as shipped. For screenshots and benchmarks."""
    import imageio.v3 as iio

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pair = load_sample_pair()
    written = []
    for index in range(n_images):
        image = pair[index % 2].astype(np.float32)
        variant = index // 2
        if variant % 2:
            image = image[:, ::-1]
        image = np.roll(image, (3 * variant) % 24, axis=0)
        image = np.clip(image * (1.0 - 0.15 * (variant % 3) / 2), 0, 255)
        path = folder / f"sample_{index:03d}.png"
        write_bytes(path, iio.imwrite("<bytes>", image.astype(np.uint8), extension=".png"))
        written.append(path)
    return written


def make_collection_screenshots(viewer, folder: str | Path, images: str | Path, *,
                                model: str = "tiny") -> list[Path]:  # fmt: skip
    """The Collection widget on 8 variants of the sample pair: review, co-segmentation.

    ``images`` is a folder to write the collection into; the keypoints of sample A are
    marked on image 0 as a user would, then proposed on the others.
    """
    folder = Path(folder)
    write_sample_collection(images, 8)
    widget = CollectionWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="Collection", area="right")
    widget.settings.model.value = model
    widget.form.folder.value = Path(images)
    widget.load()
    wait_until_idle(widget)
    points = find_result(viewer, widget="collection", role="collection:points")
    points.add(sample_keypoints()[0])  # the user clicks the keypoints of sample A
    widget.propose()
    wait_until_idle(widget)
    widget.go_least_confident()
    wait_until_idle(widget)
    written = [_save(viewer, folder, SCREENSHOTS[5])]
    widget.cosegment()
    wait_until_idle(widget)
    points.visible = False
    written.append(_save(viewer, folder, SCREENSHOTS[6]))
    widget.session.saved_changes = widget.session.changes  # nothing to keep on close
    viewer.window.remove_dock_widget(dock)
    return written
