"""tf.data input pipeline: (692 patch, 512 mask, label) from slides or TFRecords.

Zhao et al. (MICCAI 2019), Implementation Details: training patches are
692 x 692 and mask patches 512 x 512, the mask centred in the patch.  Each
element of the stream is read straight from the slide (OpenSlide region +
annotation raster of the same window, ``tf.numpy_function`` in parallel map
calls) or from TFRecord shards written by ``data_prep/write_tfrecords.py``,
augmented jointly (``augment.py``), and batched with prefetch.

Determinism and resume: element ``i`` of the stream is sample
``index_shuffle(i mod n)`` of epoch ``i div n``, augmented with the
stateless seed ``(seed, i)``.  The stream is therefore a pure function of
(samples, seed) and can start at any element, so a training run resumed at
step ``k`` reads exactly what it would have read uninterrupted
(``start_index = k * global_batch``).

Batches are ``(image, targets)``: ``image`` float32 ``[B, 692, 692, 3]`` in
0..255; ``targets = {"label": int32 [B], "mask": float32 [B, 512, 512]}``,
with ``label`` the mask's centre pixel after augmentation (tumour at the
patch centre, the detector's target).
"""

from __future__ import annotations

import glob
import json
import os
import threading
from typing import Optional, Sequence

import cv2
import numpy as np
import tensorflow as tf

from pfascannet import geometry, io_utils
from pfascannet.data import augment as augment_mod
from pfascannet.data.augment import AugmentSettings
from pfascannet.data.sampling import PatchSample, PatchSampler, counts_by_kind
from pfascannet.errors import PfaError
from pfascannet.slide.reader import SlideReader

AUTOTUNE = tf.data.AUTOTUNE
P = geometry.PATCH_PX
M0 = geometry.MASK_OFFSET_PX
C = geometry.PATCH_CENTRE_PX


class PipelineError(PfaError, ValueError):
    """An input-pipeline setting or file that cannot give batches."""


class PatchReader:
    """Reads a sample's 692 patch and the 692 mask of the same window.

    Thread-safe for the parallel map of tf.data, and bounded: each slide has a
    pool of OpenSlide handles; a read borrows an idle one (or opens one when
    all are busy) and gives it back, so no two threads share a handle's lock
    and a slide never has more handles than reads that ran at once on it.

    Why a pool and not ``threading.local``: ``tf.numpy_function`` runs its
    Python on TensorFlow's own threads, and CPython gives such a foreign
    thread a fresh thread state on each call, so a thread-local cache was
    empty on every call.  Each patch opened a new handle (with its tile
    cache) that was kept until ``close()``: training grew by ~6 MB per patch.

    Args:
      sampler: gives the slides and their annotations.
    """

    def __init__(self, sampler: PatchSampler):
        self.sampler = sampler
        self._idle: dict[str, list] = {}
        self._all: list = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._busy = 0  # reads in flight
        self._closed = False

    def _borrow(self, slide_id: str):
        with self._lock:
            if self._closed:
                raise PipelineError(f"read of {slide_id} after the patch reader was closed")
            self._busy += 1
            idle = self._idle.setdefault(slide_id, [])
            if idle:
                return idle.pop()
        try:
            reader = SlideReader(self.sampler.slides[slide_id].image_path)
        except BaseException:
            self._give_back(slide_id, None)
            raise
        with self._lock:
            self._all.append(reader)
        return reader

    def _give_back(self, slide_id: str, reader) -> None:
        with self._lock:
            self._busy -= 1
            if reader is not None:
                self._idle[slide_id].append(reader)
            self._changed.notify_all()

    @property
    def open_handles(self) -> int:
        """OpenSlide handles opened so far (bounded by the reads that overlapped)."""
        with self._lock:
            return len(self._all)

    def read_patch(self, sample: PatchSample) -> np.ndarray:
        """uint8 ``[692, 692, 3]`` RGB at the model's pixel size (``SlideTruth.read_patch``)."""
        reader = self._borrow(sample.slide_id)
        try:
            # The slide's truth (its read plan) may be built here, on first use: inside the borrow,
            # so close() waits for its reads too.
            return self.sampler.truth(sample.slide_id).read_patch(reader, (sample.x, sample.y), P)
        finally:
            self._give_back(sample.slide_id, reader)

    def read_pair(self, sample: PatchSample) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 patch ``[692, 692, 3]``, uint8 mask ``[692, 692]`` 1 = tumour), aligned."""
        return self.read_patch(sample), self.sampler.mask(sample, size_px=P)

    def close(self) -> None:
        """Closes every handle once the reads in flight (tf.data's threads may still run some) have ended.

        Later reads raise ``PipelineError``: a handle opened after this would stay open.
        """
        with self._lock:
            self._closed = True
            self._changed.wait_for(lambda: self._busy == 0)
            for r in self._all:
                r.close()
            self._all.clear()
            self._idle.clear()


class SampleStream:
    """Fresh, seeded patch positions every epoch (Sec. 2.4 sampling as a stream).

    Epoch ``e`` is ``sampler.sample(seed)`` for ``e = 0`` and
    ``sampler.sample(SeedSequence([seed, e]))`` after it, followed by the
    fixed ``extra`` samples (hard negatives).  Every epoch has the same
    length, so stream element ``i`` is sample ``index_shuffle(i mod n)`` of
    epoch ``i div n``: a pure function of ``(sampler, seed, extra, i)``, and
    the training step (in the checkpoint) is the stream's position.  Normal
    positions are drawn afresh over all tissue each epoch, so over a run they
    cover the whole of it, hard mimics included, instead of replaying one
    thin draw.

    Args:
      sampler: draws the positions.
      seed: the run's seed.
      extra: samples appended to every epoch (e.g. mined hard negatives).
      first: epoch 0's list when it is already known (a resumed run's
        ``samples.csv``), else drawn.
    """

    def __init__(self, sampler: PatchSampler, seed: int, extra: Sequence[PatchSample] = (),
                 first: Optional[Sequence[PatchSample]] = None):
        self.sampler = sampler
        self.seed = int(seed)
        self.extra = list(extra)
        self._lock = threading.Lock()
        epoch0 = list(first) + self.extra if first is not None else self._draw(0)
        self._cache: dict[int, list[PatchSample]] = {0: epoch0}
        self.n = len(epoch0)
        if self.n == 0:
            raise PipelineError("the sampler gave no samples to stream")

    def _draw(self, epoch: int) -> list[PatchSample]:
        seed = self.seed if epoch == 0 else np.random.SeedSequence([self.seed, epoch])
        return list(self.sampler.sample(seed)) + self.extra

    def epoch(self, epoch: int) -> list[PatchSample]:
        """The samples of one epoch (the last few are cached; thread-safe)."""
        epoch = int(epoch)
        with self._lock:
            if epoch not in self._cache:
                drawn = self._draw(epoch)
                if len(drawn) != self.n:
                    raise PipelineError(f"epoch {epoch} drew {len(drawn)} samples, epoch 0 {self.n}")
                self._cache[epoch] = drawn
                for old in sorted(self._cache)[:-3]:
                    if old != 0:
                        del self._cache[old]
            return self._cache[epoch]


def element_to_sample_index(index: tf.Tensor, n: int, seed: int, shuffle: bool) -> tf.Tensor:
    """Sample index of stream element ``index``: a fresh permutation per epoch."""
    index = tf.cast(index, tf.int64)
    if not shuffle:
        return index % n
    epoch = index // n
    seeds = tf.stack([tf.constant(seed, tf.int64), epoch])
    return tf.random.experimental.index_shuffle(index % n, seeds, max_index=n - 1)


def _finish(
    ds: tf.data.Dataset,
    *,
    batch_size: int,
    seed: int,
    augment_config: Optional[AugmentSettings],
    drop_remainder: bool,
    num_parallel_calls,
) -> tf.data.Dataset:
    """(index, uint8 patch, uint8 692 mask) -> augmented, cropped, batched, prefetched."""

    def prepare(index, image, mask):
        if augment_config is not None:
            image, mask = augment_mod.augment_pair(
                image, mask, tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)]), augment_config
            )
        else:
            image, mask = tf.cast(image, tf.float32), tf.cast(mask, tf.float32)
        label = tf.cast(mask[C, C] > 0.5, tf.int32)
        mask512 = mask[M0 : M0 + geometry.MASK_PX, M0 : M0 + geometry.MASK_PX]
        image = tf.ensure_shape(image, [P, P, 3])
        mask512 = tf.ensure_shape(mask512, [geometry.MASK_PX, geometry.MASK_PX])
        return image, {"label": label, "mask": mask512}

    ds = ds.map(prepare, num_parallel_calls=num_parallel_calls, deterministic=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)


def slide_dataset(
    samples: Sequence[PatchSample] | SampleStream,
    reader: PatchReader,
    *,
    batch_size: int,
    seed: int = 0,
    augment_config: Optional[AugmentSettings] = AugmentSettings(),
    start_index: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    drop_remainder: bool = True,
    num_parallel_calls=AUTOTUNE,
) -> tf.data.Dataset:
    """Streams batches straight from the slides.

    Args:
      samples: the patches (``PatchSampler.sample`` plus hard negatives),
        replayed every epoch; or a ``SampleStream``, which draws fresh
        positions for every epoch.
      reader: reads them.
      batch_size: global batch size.
      seed: shuffling and augmentation seed.
      augment_config: None for no augmentation (evaluation).
      start_index: first stream element (resume: step * batch_size).
      shuffle: a seeded permutation per epoch; False keeps list order.
      repeat: endless stream of epochs; False stops after one pass.
      drop_remainder: only full batches (needed for a fixed global batch).
      num_parallel_calls: parallel slide reads / augmentations.
    """
    if isinstance(samples, SampleStream):
        stream = samples
    else:
        fixed = list(samples)
        if not fixed:
            raise PipelineError("no samples to stream")
        stream = None
    n = stream.n if stream is not None else len(fixed)
    if batch_size < 1:
        raise PipelineError(f"batch_size must be >= 1, got {batch_size}")

    def read(epoch, idx):
        epoch_samples = stream.epoch(int(epoch)) if stream is not None else fixed
        image, mask = reader.read_pair(epoch_samples[int(idx)])
        return image, mask

    def load(index):
        sidx = element_to_sample_index(index, n, seed, shuffle)
        epoch = tf.cast(index, tf.int64) // n
        image, mask = tf.numpy_function(read, [epoch, sidx], [tf.uint8, tf.uint8], stateful=False)
        image.set_shape([P, P, 3])
        mask.set_shape([P, P])
        return index, image, mask

    stop = None if repeat else n
    if stop is not None and start_index >= stop:
        raise PipelineError(f"start_index {start_index} is past the end of a single pass over {n} samples")
    ds = tf.data.Dataset.range(start_index, stop if stop is not None else np.iinfo(np.int64).max)
    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    return _finish(
        ds, batch_size=batch_size, seed=seed, augment_config=augment_config,
        drop_remainder=drop_remainder, num_parallel_calls=num_parallel_calls,
    )


# ---------------------------------------------------------------------------
# TFRecord shards
# ---------------------------------------------------------------------------

_FEATURES = {
    "image_png": tf.io.FixedLenFeature([], tf.string),
    "mask_png": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "slide_id": tf.io.FixedLenFeature([], tf.string),
    "x": tf.io.FixedLenFeature([], tf.int64),
    "y": tf.io.FixedLenFeature([], tf.int64),
    "kind": tf.io.FixedLenFeature([], tf.string),
}


def _png(array: np.ndarray) -> bytes:
    if array.ndim == 3:
        array = array[..., ::-1]  # OpenCV writes BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - cv2 failure
        raise PipelineError("PNG encoding failed")
    return buf.tobytes()


def serialize_example(sample: PatchSample, image: np.ndarray, mask: np.ndarray) -> bytes:
    """One ``tf.train.Example``: lossless PNG patch and 692 mask plus the sample's fields."""

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    feats = {
        "image_png": b(_png(image)),
        "mask_png": b(_png(mask.astype(np.uint8))),
        "label": i(sample.label),
        "slide_id": b(sample.slide_id.encode()),
        "x": i(sample.x),
        "y": i(sample.y),
        "kind": b(sample.kind.encode()),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_tfrecords(
    samples: Sequence[PatchSample], reader: PatchReader, out_dir: str | os.PathLike, num_shards: int = 4,
    prefix: str = "patches",
) -> list[str]:
    """Writes samples round-robin into ``num_shards`` shards, each atomically.

    Returns the shard paths; ``<out_dir>/<prefix>.json`` records the count
    and the per-kind totals.
    """
    if num_shards < 1:
        raise PipelineError(f"num_shards must be >= 1, got {num_shards}")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for k in range(num_shards):
        path = os.path.join(out_dir, f"{prefix}-{k:05d}-of-{num_shards:05d}.tfrecord")
        with io_utils.atomic_path(path, suffix=".tfrecord") as tmp, tf.io.TFRecordWriter(tmp) as w:
            for s in samples[k::num_shards]:
                image, mask = reader.read_pair(s)
                w.write(serialize_example(s, image, mask))
        paths.append(path)
    io_utils.write_json(
        os.path.join(out_dir, f"{prefix}.json"),
        {"count": len(samples), "shards": [os.path.basename(p) for p in paths], "kinds": counts_by_kind(samples)},
    )
    return paths


def parse_example(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(uint8 patch [692, 692, 3], uint8 mask [692, 692], int64 label) of one record."""
    f = tf.io.parse_single_example(record, _FEATURES)
    image = tf.ensure_shape(tf.io.decode_png(f["image_png"], channels=3), [P, P, 3])
    mask = tf.ensure_shape(tf.io.decode_png(f["mask_png"], channels=1)[..., 0], [P, P])
    return image, mask, f["label"]


def tfrecord_dataset(
    file_pattern: str,
    *,
    batch_size: int,
    seed: int = 0,
    augment_config: Optional[AugmentSettings] = AugmentSettings(),
    start_index: int = 0,
    shuffle_buffer: int = 256,
    repeat: bool = True,
    drop_remainder: bool = True,
    num_parallel_calls=AUTOTUNE,
) -> tf.data.Dataset:
    """Streams batches from TFRecord shards (same elements as ``slide_dataset``).

    Shards are interleaved in parallel and shuffled with a seeded buffer;
    ``start_index`` skips records before decoding (resume).
    """
    files = sorted(glob.glob(file_pattern))
    if not files:
        raise PipelineError(f"no TFRecord shards match {file_pattern!r}")
    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 8), num_parallel_calls=num_parallel_calls,
        deterministic=True,
    )
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.enumerate().skip(start_index)

    def load(index, record):
        image, mask, _ = parse_example(record)
        return index, image, mask

    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    return _finish(
        ds, batch_size=batch_size, seed=seed, augment_config=augment_config,
        drop_remainder=drop_remainder, num_parallel_calls=num_parallel_calls,
    )


def tfrecord_count(out_dir: str | os.PathLike, prefix: str = "patches") -> int:
    """Records in shards written by ``write_tfrecords``."""
    with open(os.path.join(os.fspath(out_dir), f"{prefix}.json"), encoding="utf-8") as f:
        return int(json.load(f)["count"])
