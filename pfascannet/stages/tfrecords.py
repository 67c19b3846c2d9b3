"""Write training patches (692 patch + 692 mask + label) of a cohort into TFRecord shards.

Zhao et al., MICCAI 2019, Sec. 2.4: random, boundary and ITC patches are
extracted once; reading them back from shards (``pfascannet train
--tfrecords='<out>/patches-*.tfrecord'``) spares the slide reads on every
epoch.  Patches and masks are lossless PNG, so a record equals the slide.

Example::

    pfascannet tfrecords --data=cohort --out=shards --random_per_class=512 --shards=8
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from absl import flags

from pfascannet import layout
from pfascannet import settings as settings_lib
from pfascannet.data import sampling
from pfascannet.settings import setting


@dataclasses.dataclass(frozen=True)
class TfrecordsCommand:
    """The flags of ``pfascannet tfrecords`` that are not ``sampling.SamplerSettings`` (the patch counts)."""

    data: Optional[str] = setting(None, help="Dataset root: a cohort folder (images/, annotations/, slides.csv) or "
                                             "CAMELYON16/17 as downloaded (training/, testing/).")
    out: Optional[str] = setting(None, help="Output folder for the shards.")
    split: str = setting("train", help="Split to sample (slides.csv's split column; CAMELYON: train = training/).")
    shards: int = setting(4, help="Number of shards.")
    seed: int = setting(0, help="Sampling seed.")


FLAGS = flags.FLAGS
SETTINGS = (TfrecordsCommand, sampling.SamplerSettings)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``)."""
settings_lib.define_stage_flags(SETTINGS)


def main(argv):
    from pfascannet.data import pipeline  # noqa: PLC0415  (imports TensorFlow)

    if not FLAGS.data or not FLAGS.out:
        raise sampling.SamplingError("--data and --out are required")
    slides = sampling.load_cohort(FLAGS.data, FLAGS.split)
    sampler = sampling.PatchSampler(slides, settings_lib.from_flags(sampling.SamplerSettings, FLAGS))
    samples = sampler.sample(FLAGS.seed)
    reader = pipeline.PatchReader(sampler)
    paths = pipeline.write_tfrecords(samples, reader, FLAGS.out, num_shards=FLAGS.shards)
    sampling.save_samples(os.path.join(FLAGS.out, layout.SAMPLES_CSV), samples)
    reader.close()
    print(f"{len(samples)} patches {sampling.counts_by_kind(samples)} in {len(paths)} shards under {FLAGS.out}")
