"""Dask worker plugins the collection tests use to make a worker slow enough to kill."""

from __future__ import annotations

from distributed import WorkerPlugin


class SlowWritesPlugin(WorkerPlugin):
    """Make every store write on a worker take ``seconds`` longer (so a test can kill a
    worker while it is busy)."""

    name = "corrseg-test-slow-writes"

    def __init__(self, seconds: float):
        self.seconds = seconds

    def setup(self, worker):
        import time

        from napari_corrseg.collection.store import TokenStore

        original = TokenStore.write
        seconds = self.seconds

        def slow_write(self, *args, **kwargs):
            time.sleep(seconds)
            return original(self, *args, **kwargs)

        self.original = original
        TokenStore.write = slow_write

    def teardown(self, worker):
        from napari_corrseg.collection.store import TokenStore

        if getattr(self, "original", None) is not None:
            TokenStore.write = self.original
