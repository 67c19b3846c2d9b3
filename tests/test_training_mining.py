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
    sampler.truth(slide_id)  # as in training: sampling built the slide's truth (and read plan) before any patch read
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


# --------------------------------------------------------------------------- hard-negative mining

MICRO = "patient_001_node_0"  # a train slide with a micro-metastasis
STRIDE = 32


def _cells(truth):
    """Map cells (row, col) of the slide by kind: tissue far from tumour, near it, between, and glass."""
    from scipy import ndimage

    rows, cols = -(-truth.dimensions[1] // STRIDE), -(-truth.dimensions[0] // STRIDE)
    tissue = truth.tissue[:rows, :cols]
    solid_tissue = ndimage.binary_erosion(tissue, np.ones((5, 5)))
    solid_glass = ndimage.binary_erosion(~tissue, np.ones((5, 5)), border_value=1)
    tumour = np.zeros((rows, cols), bool)
    g = truth.grid_downsample
    tr, tc = np.nonzero(truth.tumour_grid)
    tumour[np.minimum(tr * g // STRIDE, rows - 1), np.minimum(tc * g // STRIDE, cols - 1)] = True
    reach = ndimage.distance_transform_edt(~tumour) * STRIDE  # px from tumour, to within a cell

    def box_has_tumour(r, c, half):
        x, y = c * STRIDE + STRIDE // 2, r * STRIDE + STRIDE // 2
        return bool(truth.mask_window((x - half, y - half), (2 * half, 2 * half)).any())

    kinds = {"far": [], "near": [], "between": [], "glass": []}
    for r, c in zip(*np.nonzero(solid_tissue & (reach < 200))):
        if box_has_tumour(r, c, 64) and not box_has_tumour(r, c, 8):
            kinds["near"].append((r, c))
        elif not box_has_tumour(r, c, 70) and box_has_tumour(r, c, 130):
            kinds["between"].append((r, c))
    kinds["far"] = [tuple(rc) for rc in np.argwhere(solid_tissue & (reach > 600))]
    kinds["glass"] = [tuple(rc) for rc in np.argwhere(solid_glass & (reach > 600))]
    return (rows, cols), kinds


def _spread(cells, taken, k, min_cells=16):
    """``k`` cells at least ``min_cells`` apart from each other and from ``taken`` (each its own maximum)."""
    out = []
    for rc in cells:
        if all(max(abs(rc[0] - t[0]), abs(rc[1] - t[1])) >= min_cells for t in taken + out):
            out.append(rc)
            if len(out) == k:
                return out
    raise AssertionError(f"only {len(out)} cells found")


def test_mined_negatives_are_tissue_above_threshold_clear_of_tumour_and_capped_per_slide(cohort):
    from pfascannet.training import mining

    sampler = sampling.PatchSampler(sampling.load_cohort(str(cohort), "train"))
    truth = sampler.truth(MICRO)
    shape, kinds = _cells(truth)
    near = _spread(kinds["near"], [], 1)
    between = _spread(kinds["between"], near, 1)
    glass = _spread(kinds["glass"], near + between, 1)
    far = _spread(kinds["far"], near + between + glass, 5)
    prob = np.zeros(shape, np.float32)
    values = {glass[0]: 0.99, near[0]: 0.98, far[0]: 0.9, far[1]: 0.8, between[0]: 0.7, far[2]: 0.6,
              far[3]: 0.5, far[4]: 0.49}
    for rc, v in values.items():
        prob[rc] = v

    def picked(threshold, per_slide):
        found = mining.negatives_from_map(prob, STRIDE, truth, MICRO, threshold=threshold, per_slide=per_slide)
        for p, s in found:
            assert s.kind == "hard_negative" and s.label == 0 and truth.label_at(s.centre_xy) == 0
        return [(s.centre_xy[1] // STRIDE, s.centre_xy[0] // STRIDE) for _, s in found], [p for p, _ in found]

    cells, probs = picked(0.5, 100)
    # Glass and the cell within 64 px of tumour are never negatives, however high;
    # 0.5 is in, 0.49 out; the cell between 70 and 130 px of tumour is in.
    assert cells == [far[0], far[1], between[0], far[2], far[3]]
    assert probs == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    assert picked(0.5, 2)[0] == [far[0], far[1]]  # the per-slide cap keeps the most confident
    assert picked(0.75, 100)[0] == [far[0], far[1]]


_LOCK_HOLDER = """
import fcntl, os, sys, time
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.slow  # scans of the two other training slides with the tiny detector; ~40 s under load
def test_a_mining_worker_scans_the_other_slides_while_another_holds_one(cohort, tmp_path):
    # Two workers used to move in lockstep: both waited on the first slide's
    # lock, so one scanned every slide while the other waited.
    import os
    import subprocess
    import sys
    import time

    from pfascannet.model.config import ModelConfig
    from pfascannet.model.detector import build_detector
    from pfascannet.training import mining
    from tests.model_support import randomise_weights

    sampler = sampling.PatchSampler(sampling.load_cohort(str(cohort), "train"))
    first, *others = sorted(sampler.slides)
    out = tmp_path / "mining"
    holder = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(out / "locks" / f"{first}.lock"), "600"],
                              stdout=subprocess.PIPE, text=True)
    model = build_detector(ModelConfig.tiny(), alpha=16)
    randomise_weights(model)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("found", mining.mine_from_slides(
        model, ModelConfig.tiny(), sampler, str(out), threshold=0.0, max_keep=8, alpha=16, roi_px=916)))
    try:
        assert holder.stdout.readline().strip() == "held"
        worker.start()
        deadline = time.monotonic() + 300
        maps = [out / "maps" / f"{sid}.npy" for sid in others]
        while not all(p.exists() for p in maps) and time.monotonic() < deadline and worker.is_alive():
            time.sleep(0.5)
        assert all(p.exists() for p in maps), "the other slides were not scanned while the first was held"
        assert worker.is_alive() and not (out / "maps" / f"{first}.npy").exists()  # waiting for the first
    finally:
        holder.kill()
        holder.wait()
    worker.join(300)
    assert not worker.is_alive()
    assert (out / "maps" / f"{first}.npy").exists()  # the holder died: this worker scanned it
    assert 0 < len(result["found"]) <= 8
    assert {s.slide_id for s in result["found"]} <= set(sampler.slides)
    assert os.listdir(out / "partial") == []
