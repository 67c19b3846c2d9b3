"""tf.data from slides and TFRecords: patch, 512 mask and label paired, aligned and resumable."""

import os

import numpy as np
import pytest

from pfascannet import geometry
from pfascannet.data import pipeline, sampling
from pfascannet.data.augment import AugmentSettings

M0 = geometry.MASK_OFFSET_PX


@pytest.fixture(scope="module")
def setup(cohort):
    slides = sampling.load_cohort(os.fspath(cohort), "train")
    sampler = sampling.PatchSampler(slides, sampling.SamplerSettings(random_per_class=3, boundary=2, itc=1))
    samples = sampler.sample(seed=0)
    reader = pipeline.PatchReader(sampler)
    yield sampler, samples, reader
    reader.close()


def test_slide_stream_gives_the_slide_pixels_and_centred_mask(setup):
    sampler, samples, reader = setup
    ds = pipeline.slide_dataset(samples[:4], reader, batch_size=2, augment_config=None, shuffle=False,
                                repeat=False, num_parallel_calls=2)
    got = list(ds.as_numpy_iterator())
    assert len(got) == 2
    for b, (image, targets) in enumerate(got):
        assert image.shape == (2, 692, 692, 3) and image.dtype == np.float32
        assert targets["mask"].shape == (2, 512, 512) and targets["label"].shape == (2,)
        for j in range(2):
            s = samples[2 * b + j]
            patch, mask692 = reader.read_pair(s)
            np.testing.assert_array_equal(image[j], patch.astype(np.float32))
            np.testing.assert_array_equal(targets["mask"][j], sampler.mask(s).astype(np.float32))
            np.testing.assert_array_equal(mask692[M0:M0 + 512, M0:M0 + 512], sampler.mask(s))
            assert targets["label"][j] == s.label


def test_stream_is_a_function_of_seed_and_index(setup):
    _, samples, reader = setup
    kw = dict(batch_size=2, seed=5, augment_config=AugmentSettings(), num_parallel_calls=2)
    full = list(pipeline.slide_dataset(samples, reader, **kw).take(3).as_numpy_iterator())
    resumed = list(pipeline.slide_dataset(samples, reader, start_index=4, **kw).take(1).as_numpy_iterator())
    for a, b in zip(full[2:], resumed):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1]["mask"], b[1]["mask"])
    # Each epoch (len(samples) elements) visits every sample once, in a new order.
    other = list(pipeline.slide_dataset(samples, reader, **dict(kw, seed=6)).take(1).as_numpy_iterator())
    assert not np.array_equal(other[0][0], full[0][0])
    idx = [int(pipeline.element_to_sample_index(i, len(samples), 5, True)) for i in range(2 * len(samples))]
    assert sorted(idx[: len(samples)]) == list(range(len(samples)))
    assert idx[: len(samples)] != idx[len(samples):]


def test_augmented_label_is_the_augmented_mask_centre(setup):
    _, samples, reader = setup
    ds = pipeline.slide_dataset(samples, reader, batch_size=4, seed=1, num_parallel_calls=2)
    for image, targets in ds.take(1).as_numpy_iterator():
        np.testing.assert_array_equal(targets["label"], (targets["mask"][:, 256, 256] > 0.5).astype(np.int32))
        assert 0.0 <= image.min() and image.max() <= 255.0


def test_tfrecords_round_trip(setup, tmp_path):
    sampler, samples, reader = setup
    few = samples[:5]
    paths = pipeline.write_tfrecords(few, reader, tmp_path, num_shards=2)
    assert len(paths) == 2 and all(os.path.exists(p) for p in paths)
    assert pipeline.tfrecord_count(tmp_path) == 5
    ds = pipeline.tfrecord_dataset(str(tmp_path / "patches-*.tfrecord"), batch_size=1, augment_config=None,
                                   shuffle_buffer=0, repeat=False)
    got = list(ds.as_numpy_iterator())
    assert len(got) == 5
    expected = {(s.label, reader.read_patch(s).tobytes()): sampler.mask(s) for s in few}
    for image, targets in got:
        key = (int(targets["label"][0]), image[0].astype(np.uint8).tobytes())
        assert key in expected, "a record's patch differs from the slide (PNG must be lossless)"
        np.testing.assert_array_equal(targets["mask"][0], expected[key])
    with pytest.raises(pipeline.PipelineError, match="no TFRecord shards"):
        pipeline.tfrecord_dataset(str(tmp_path / "nothing-*.tfrecord"), batch_size=1)


def test_slide_stream_keeps_a_bounded_number_of_slide_handles(setup):
    # Training memory must not grow with steps: a slide handle (with its tile
    # cache) opened per patch and kept is what grew training by ~6 MB a patch.
    sampler, samples, _ = setup
    reader = pipeline.PatchReader(sampler)
    parallel = 2
    ds = pipeline.slide_dataset(samples, reader, batch_size=2, augment_config=None, num_parallel_calls=parallel)
    elements = 0
    for image, _ in ds.take(30).as_numpy_iterator():
        elements += len(image)
    handles = reader.open_handles
    reader.close()
    assert elements == 60 and handles >= 1
    # No more handles per slide than reads that can overlap (the parallel map's
    # calls plus one for tf.data's own prefetch), however many patches stream.
    assert handles <= (parallel + 1) * len(sampler.slides) < elements


def test_sample_stream_draws_fresh_positions_every_epoch_and_resumes(setup):
    sampler, samples, reader = setup
    stream = pipeline.SampleStream(sampler, seed=0, first=samples)
    n = stream.n
    assert n == len(samples) and stream.epoch(0) == samples
    e1, e2 = stream.epoch(1), stream.epoch(2)
    assert len(e1) == len(e2) == n
    # Fresh positions (normal tissue above all), same kinds in the same numbers.
    assert {(s.slide_id, s.x, s.y) for s in e1} != {(s.slide_id, s.x, s.y) for s in samples}
    assert sorted(s.kind for s in e1) == sorted(s.kind for s in samples)
    # A pure function of (sampler, seed, epoch): a new stream draws the same epoch.
    assert pipeline.SampleStream(sampler, seed=0).epoch(1) == e1
    # Element n + k (epoch 1) is read from epoch 1's list, also when the stream starts there.
    kw = dict(batch_size=1, seed=3, augment_config=None, num_parallel_calls=1)
    start = n + 2
    (image, targets), = pipeline.slide_dataset(stream, reader, start_index=start, **kw).take(1).as_numpy_iterator()
    k = int(pipeline.element_to_sample_index(start, n, 3, True))
    np.testing.assert_array_equal(image[0], reader.read_patch(e1[k]).astype(np.float32))
    assert targets["label"][0] == e1[k].label
