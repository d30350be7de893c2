"""The compute core: numpy and scipy only, no torch, no Qt.

Attention maps and their geometry (`maps`), correspondences and their reliability
(`correspondence`), segmentation (`segmentation`), co-segmentation and label propagation
(`cosegmentation`), evaluation metrics (`evaluation`), and the conversion of any image
napari holds into model-ready RGB (`images`).
"""
