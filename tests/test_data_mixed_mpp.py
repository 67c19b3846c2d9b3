"""Training from slides of mixed pixel sizes: every patch and mask at the model's pixel size.

The session cohort (0.243 um/px) and its copy at 0.486 um/px
(``synthetic.rescale``) hold the same tissue; a cohort mixing the two must
give patches that show the same field of view from either, with masks on
them pixel for pixel, positions in level-0 pixels of their own slide.
"""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from pfascannet import geometry
from pfascannet.data import pipeline, sampling
from pfascannet.slide.reader import SlideReader


@pytest.fixture(scope="module")
def mixed(cohort, half_cohort, tmp_path_factory):
    """``(original dir, half-resolution copy dir, mixed dir)``: the mix takes patient_001's slides from the copy."""
    root = tmp_path_factory.mktemp("mixed_mpp")
    half = str(half_cohort)
    mix = root / "mix"
    for sub in ("images", "annotations", "masks", "tissue"):
        (mix / sub).mkdir(parents=True)
    with open(os.path.join(half, "slides.csv"), newline="", encoding="utf-8") as f:
        half_rows = {r["slide"]: r for r in csv.DictReader(f)}
    with open(cohort / "slides.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        sid = row["slide"]
        src = half if sid.startswith("patient_001") else str(cohort)
        row = dict(half_rows[sid] if src == half else row, split="train")
        for sub, name in (("images", f"{sid}.tif"), ("annotations", f"{sid}.xml"), ("masks", f"{sid}_mask.tif"),
                          ("tissue", f"{sid}_tissue.png")):
            if os.path.exists(os.path.join(src, sub, name)):
                os.symlink(os.path.join(src, sub, name), mix / sub / name)
        out.append(row)
    with open(mix / "slides.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(out[0]))
        w.writeheader()
        w.writerows(out)
    return str(cohort), half, str(mix)


def _truth(cohort_dir, sid):
    entries = {e.slide_id: e for e in sampling.load_cohort(cohort_dir)}
    return sampling.PatchSampler([entries[sid]]).truth(sid)


def test_a_patch_shows_the_same_field_of_view_at_either_pixel_size(mixed):
    original, half, _ = mixed
    sid = "patient_000_node_1"  # the macro slide: tumour and its border in one patch
    t0, t1 = _truth(original, sid), _truth(half, sid)
    assert t0.scale == 1.0 and t1.scale == 0.5 and t1.read.filter == "bicubic"
    # A centre on the lesion's border, in each slide's own level-0 pixels.
    sampler = sampling.PatchSampler([e for e in sampling.load_cohort(original) if e.slide_id == sid],
                                    sampling.SamplerSettings(random_per_class=0, boundary=4, itc=0))
    border = next(s for s in sampler.sample(seed=3) if s.kind == "boundary")
    centre0 = t0.centre_of((border.x, border.y))
    centre1 = ((centre0[0] + 0.5) / 2 - 0.5, (centre0[1] + 0.5) / 2 - 0.5)
    tl0, tl1 = t0.top_left(centre0), t1.top_left(centre1)
    reader0 = SlideReader(t0.entry.image_path)
    reader1 = SlideReader(t1.entry.image_path)
    try:
        p0, p1 = t0.read_patch(reader0, tl0), t1.read_patch(reader1, tl1)
    finally:
        reader0.close()
        reader1.close()
    assert p0.shape == p1.shape == (geometry.PATCH_PX, geometry.PATCH_PX, 3)
    diff = np.abs(p0.astype(float) - p1.astype(float)).mean()
    shifted = np.abs(p0[:, 8:].astype(float) - p1[:, :-8].astype(float)).mean()
    assert diff < 12 and shifted > 1.3 * diff, (diff, shifted)  # the same tissue, aligned to a pixel
    m0 = t0.model_mask(tl0, geometry.MASK_OFFSET_PX, geometry.MASK_PX)
    m1 = t1.model_mask(tl1, geometry.MASK_OFFSET_PX, geometry.MASK_PX)
    assert 0 < m0.mean() < 1 and np.mean(m0 != m1) < 0.01  # the border, at the same place in both


@pytest.mark.slow
def test_training_on_a_cohort_of_mixed_pixel_sizes(mixed, tmp_path):
    from pfascannet.training import trainer  # noqa: PLC0415

    _, _, mix = mixed
    s = trainer.TrainSettings.from_flat(data=mix, workdir=str(tmp_path / "w"), steps=3, batch_size=2,
                                        learning_rate=0.002, random_per_class=4, boundary=2, itc=1,
                                        checkpoint_every=3, log_every=1, num_parallel_calls=2)
    r = trainer.train(s, on_progress=None)
    assert len(r.history) == 3 and all(np.isfinite(h[1]["total"]) for h in r.history)
    samples = sampling.load_samples(os.path.join(tmp_path, "w", "samples.csv"))
    sampler = sampling.PatchSampler(sampling.load_cohort(mix))
    reader = pipeline.PatchReader(sampler)
    try:
        for prefix, scale in (("patient_000", 1.0), ("patient_001", 0.5)):
            sample = next(s for s in samples if s.slide_id.startswith(prefix) and s.label == 1)
            assert sampler.truth(sample.slide_id).scale == scale
            patch, mask = reader.read_pair(sample)
            assert patch.shape == (692, 692, 3) and mask.shape == (692, 692)
            # The label is the mask under the centre model pixel.
            assert mask[geometry.PATCH_CENTRE_PX, geometry.PATCH_CENTRE_PX] == 1
    finally:
        reader.close()
