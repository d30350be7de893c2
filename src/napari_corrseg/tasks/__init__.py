"""Task-level functions shared by the command line and the napari widgets: they take
images or `AttentionMaps`, call the core, and return results in image pixels. The engine
is passed in as an object, so nothing here imports torch or Qt."""
