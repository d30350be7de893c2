"""Synthetic attention maps whose right answer is known.

Used by the tests, the benchmarks and the documentation figures: attention built from
a known warp (`napari_corrseg.synthetic.warps`) and from known regions
(`napari_corrseg.synthetic.regions`). numpy only.
"""
