"""The sampler's patch kinds (Fig. 1, Sec. 2.4) yield what they claim, on the synthetic cohort."""

import csv
import os

import numpy as np
import pytest
from skimage import measure

from pfascannet import geometry
from pfascannet.camelyon import FROC_ITC_MAX_UM
from pfascannet.data import sampling

C = geometry.PATCH_CENTRE_PX


@pytest.fixture(scope="module")
def sampler(cohort):
    slides = sampling.load_cohort(os.fspath(cohort), "train")
    return sampling.PatchSampler(slides, sampling.SamplerSettings(random_per_class=6, boundary=6, itc=4))


@pytest.fixture(scope="module")
def samples(sampler):
    return sampler.sample(seed=3)


def test_counts_and_balance(samples):
    assert sampling.counts_by_kind(samples) == {"tumour": 6, "normal": 6, "boundary": 6, "itc": 4}


def test_random_patches_are_what_their_label_says(sampler, samples):
    for s in samples:
        if s.kind not in ("tumour", "normal"):
            continue
        mask = sampler.mask(s, size_px=geometry.PATCH_PX)
        assert mask.shape == (692, 692)
        assert s.label == (1 if s.kind == "tumour" else 0)
        # The label is the truth at the patch centre, i.e. the 512 mask's centre.
        assert mask[C, C] == s.label
        assert sampler.mask(s)[256, 256] == s.label
        if s.kind == "normal":
            t = sampler.truth(s.slide_id)
            cx, cy = s.centre_xy
            assert t.tissue[cy // t.tissue_downsample, cx // t.tissue_downsample], "normal centre off tissue"


def test_boundary_patches_straddle_a_border(sampler, samples):
    boundary = [s for s in samples if s.kind == "boundary"]
    assert boundary
    for s in boundary:
        m = sampler.mask(s)
        assert m.shape == (512, 512)
        frac = m.mean()
        assert 0.0 < frac < 1.0, f"{s}: 512 mask is all {'tumour' if frac else 'normal'}"
        # Close to the centre, not just somewhere in the window.
        core = m[256 - 48 : 256 + 48, 256 - 48 : 256 + 48]
        assert 0 < core.sum() < core.size, s


def test_itc_patches_contain_an_itc(cohort, sampler, samples):
    itc = [s for s in samples if s.kind == "itc"]
    assert itc
    with open(os.path.join(os.fspath(cohort), "lesions.csv"), newline="") as f:
        truth = [r for r in csv.DictReader(f)]
    for s in itc:
        t = sampler.truth(s.slide_id)
        cx, cy = s.centre_xy
        # The lesion at the centre, in a window large enough to hold it whole.
        half = 1024
        win = t.mask_window((cx - half, cy - half), (2 * half, 2 * half))
        near = win[half - 32 : half + 32, half - 32 : half + 32]
        assert near.any(), f"{s}: no tumour within 32 px of the centre"
        labels = measure.label(win, connectivity=2)
        ids = np.unique(labels[half - 32 : half + 32, half - 32 : half + 32])
        for i in ids[ids > 0]:
            region = labels == i
            assert not (region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any())
            major_um = measure.regionprops(region.astype(np.uint8))[0].axis_major_length * t.mpp
            assert major_um < FROC_ITC_MAX_UM, f"{s}: lesion of {major_um:.0f} um is no ITC"
        # And the generator's own record agrees: an ITC lesion is centred there.
        d = [np.hypot(float(r["centre_x"]) - cx, float(r["centre_y"]) - cy) * t.mpp
             for r in truth if r["slide"] == s.slide_id and r["class"] == "itc"]
        assert d and min(d) < 40.0, f"{s}: nearest generator ITC {min(d) if d else None} um away"


def test_seeded_and_saved(sampler, samples, tmp_path):
    assert sampler.sample(seed=3) == samples
    assert sampler.sample(seed=4) != samples
    path = tmp_path / "s.csv"
    sampling.save_samples(path, samples)
    assert sampling.load_samples(path) == samples


def test_hard_negative_miner_keeps_only_false_positives(sampler):
    from pfascannet.data.pipeline import PatchReader

    reader = PatchReader(sampler)
    # A stand-in model: "tumour" probability grows with how dark the patch is.
    def predict(patches):
        return 1.0 - patches.reshape(len(patches), -1).mean(1) / 255.0

    pool = [s for s in sampler.random_normal(8, seed=11) if s.label == 0]
    scores = predict(np.stack([reader.read_patch(s) for s in pool]))
    threshold = float(np.median(scores))
    miner = sampling.HardNegativeMiner(candidates=8, threshold=threshold, max_keep=3, batch_size=3)
    found = miner(sampler, predict, reader.read_patch, seed=11)
    expected = [pool[i] for i in np.argsort(-scores) if scores[i] >= threshold][:3]
    assert [(s.slide_id, s.x, s.y) for s in found] == [(s.slide_id, s.x, s.y) for s in expected]
    assert all(s.kind == "hard_negative" and s.label == 0 for s in found)
    reader.close()


def test_bad_cohort_and_config_are_clear(tmp_path):
    with pytest.raises(sampling.SamplingError, match="not a dataset folder: expected images/"):
        sampling.load_cohort(tmp_path)
    with pytest.raises(sampling.SamplingError, match="boundary"):
        sampling.SamplerSettings(boundary=-1)
