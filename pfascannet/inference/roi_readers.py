"""Slide reading on the scan's reader threads: one OpenSlide handle per thread.

OpenSlide decodes with the GIL released, so threads that each hold their own
handle read ROIs in parallel while the model runs (``engine.scan_map``).
"""

from __future__ import annotations

import collections
import concurrent.futures
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



class ReadAhead:
    """Reads of the next items kept in flight on a thread pool, handed out in order.

    ``submit(pool, item)`` starts an item's reads (a future or a list of
    futures); ``pop()`` gives the oldest ``(item, reads)``; ``refill()`` (call
    it after taking a batch's results, so the next reads overlap the model)
    tops the queue up to ``depth`` items.  ``close()`` cancels what has not
    started and waits for the rest.
    """

    def __init__(self, items, submit, workers: int, depth: int, name: str):
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self.pending: collections.deque = collections.deque()
        self.items, self.submit, self.depth = iter(items), submit, depth
        self.refill()

    def refill(self) -> None:
        while len(self.pending) < self.depth:
            item = next(self.items, None)
            if item is None:
                return
            self.pending.append((item, self.submit(self.pool, item)))

    def __bool__(self) -> bool:
        return bool(self.pending)

    def pop(self):
        return self.pending.popleft()

    def close(self) -> None:
        for _, reads in self.pending:
            for f in reads if isinstance(reads, list) else [reads]:
                f.cancel()
        self.pool.shutdown(wait=True)
