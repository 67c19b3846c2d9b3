"""Slide reading on the scan's reader threads: one OpenSlide handle per thread.

OpenSlide decodes with the GIL released, so threads that each hold their own
handle read ROIs in parallel while the model runs (``engine.scan_map``).
"""

from __future__ import annotations

import threading
from typing import Optional

from pfascannet.slide.reader import SlideReader


class ThreadReaders:
    """One SlideReader per reader thread (a shared handle would serialise on its lock)."""

    def __init__(self, path: str, mpp: Optional[float]):
        self.path, self.mpp = path, mpp
        self.local = threading.local()
        self.all: list[SlideReader] = []
        self.lock = threading.Lock()

    def get(self) -> SlideReader:
        reader = getattr(self.local, "reader", None)
        if reader is None:
            reader = SlideReader(self.path, mpp=self.mpp)
            self.local.reader = reader
            with self.lock:
                self.all.append(reader)
        return reader

    def close(self) -> None:
        for reader in self.all:
            reader.close()

