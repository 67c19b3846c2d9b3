"""Second-order trust faults of training (issue 23): the patch reader outlives no read, mining in tissue, shared."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pfascannet.data import pipeline, sampling


def _reader(cohort):
    sampler = sampling.PatchSampler(sampling.load_cohort(str(cohort), "train"))
    return pipeline.PatchReader(sampler), sampler


def test_patch_reader_closes_only_after_reads_in_flight_end(cohort, monkeypatch):
    # At the end of training tf.data may still run a read on its own thread
    # when the trainer closes the reader: the read must finish on an open
    # handle, and no handle may stay open.
    reader, sampler = _reader(cohort)
    slide_id = sorted(sampler.slides)[0]
    sample = sampling.PatchSample(slide_id, 100, 100, 0, "normal")
    entered, release = threading.Event(), threading.Event()
    opened, closed = [], []
    real_read, real_close = pipeline.SlideReader.read_region, pipeline.SlideReader.close

    def slow_read(self, *args):
        opened.append(self) if self not in opened else None
        entered.set()
        assert release.wait(30)
        return real_read(self, *args)

    def counting_close(self):
        closed.append(self)
        return real_close(self)

    monkeypatch.setattr(pipeline.SlideReader, "read_region", slow_read)
    monkeypatch.setattr(pipeline.SlideReader, "close", counting_close)
    outcome = {}

    def read():
        try:
            outcome["patch"] = reader.read_patch(sample)
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc

    reading = threading.Thread(target=read)
    reading.start()
    assert entered.wait(30)
    closing = threading.Thread(target=reader.close)
    closing.start()
    closing.join(0.5)
    assert closing.is_alive()  # close waits for the read in flight
    release.set()
    reading.join(30)
    closing.join(30)
    assert not closing.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["patch"].shape == (692, 692, 3)
    assert len(opened) == 1 and closed.count(opened[0]) >= 1 and reader.open_handles == 0
    # A read after close opens nothing and says why.
    with pytest.raises(pipeline.PipelineError, match="closed"):
        reader.read_patch(sample)
    assert reader.open_handles == 0 and len(opened) == 1
