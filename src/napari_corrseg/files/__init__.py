"""Files: reading images and keypoints, writing results and figures, the disk caches, and
the shipped sample data. numpy, imageio, tifffile and matplotlib; no torch, no Qt."""
