"""Evaluation harness: benchmark readers, PCK, baselines and the ``evaluate`` driver.

* `napari_corrseg.harness.datasets`: SPair-71k, PF-WILLOW and PF-PASCAL readers;
* `napari_corrseg.harness.pck`: PCK per image / per point, precision vs coverage;
* `napari_corrseg.harness.methods`: ``attention``, ``attention+mutual`` and ``dift``;
* `napari_corrseg.harness.run`: `evaluate`, and the ``evaluate`` subcommand;
* `napari_corrseg.harness.report`: the CSV / Markdown tables and the coverage curve;
* `napari_corrseg.harness.coseg`: co-segmentation scores on a folder with masks;
* `napari_corrseg.harness.synthetic_data`: tiny folders in each layout, known answer;
* `napari_corrseg.harness.cli`: imported by `napari_corrseg.cli` to register ``evaluate``.

Nothing here imports torch at import time.
"""
