"""Collections: per-image queries and keys kept on disk, attention maps formed on demand,
and co-segmentation and annotation transfer whose cost grows linearly with the number of
images. numpy and zarr only; it sits below the engine (the engine writes into the store)."""
