"""Write training patches (692 patch + 692 mask + label) of a cohort into TFRecord shards.

Zhao et al., MICCAI 2019, Sec. 2.4: random, boundary and ITC patches are
extracted once; reading them back from shards (``pfascannet train
--tfrecords='<out>/patches-*.tfrecord'``) spares the slide reads on every
epoch.  Patches and masks are lossless PNG, so a record equals the slide.

Example::

    pfascannet tfrecords --data=cohort --out=shards --random_per_class=512 --shards=8
"""

from __future__ import annotations

import os

from absl import flags

from pfascannet.data import sampling

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "Dataset root: a cohort folder (images/, annotations/, slides.csv) or "
                                   "CAMELYON16/17 as downloaded (training/, testing/).")
flags.DEFINE_string("out", None, "Output folder for the shards.")
flags.DEFINE_string("split", "train", "Split to sample (slides.csv's split column; CAMELYON: train = training/).")
flags.DEFINE_integer("random_per_class", 64, "Random tumour and random normal patches (each).")
flags.DEFINE_integer("boundary", 32, "Boundary patches.")
flags.DEFINE_integer("itc", 16, "ITC patches.")
flags.DEFINE_integer("shards", 4, "Number of shards.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")


def main(argv):
    from pfascannet.data import pipeline  # noqa: PLC0415  (imports TensorFlow)

    if not FLAGS.data or not FLAGS.out:
        raise sampling.SamplingError("--data and --out are required")
    slides = sampling.load_cohort(FLAGS.data, FLAGS.split)
    sampler = sampling.PatchSampler(
        slides, sampling.SamplerConfig(random_per_class=FLAGS.random_per_class, boundary=FLAGS.boundary, itc=FLAGS.itc)
    )
    samples = sampler.sample(FLAGS.seed)
    reader = pipeline.PatchReader(sampler)
    paths = pipeline.write_tfrecords(samples, reader, FLAGS.out, num_shards=FLAGS.shards)
    sampling.save_samples(os.path.join(FLAGS.out, "samples.csv"), samples)
    reader.close()
    print(f"{len(samples)} patches {sampling.counts_by_kind(samples)} in {len(paths)} shards under {FLAGS.out}")
