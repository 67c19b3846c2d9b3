"""Train PFA-ScanNet (detector + decoder, synergistic learning) on a cohort.

Zhao et al., MICCAI 2019, Sec. 2.3 and Implementation Details: 692 patches
with 512 masks, eq. (3) with lambda 0.5 and eq. (2) with gamma 0.04, SGD
momentum 0.9, learning rate 1e-4 (the defaults here).  Runs under
``tf.distribute.MirroredStrategy`` on every visible GPU (every CPU device
without one); ``--strategy=multiworker`` spans machines via ``TF_CONFIG``
(BUILD.md).

Examples::

    pfascannet train --config=paper --data=/data/camelyon --workdir=runs/pfa --steps=200000
    pfascannet train --config=paper_imagenet --kernel_init=imagenet ...   # the paper's recipe
    pfascannet train --config=small --data=cohort --workdir=runs/small --steps=600 \\
        --optimizer=adam --learning_rate=1e-3 --warmup_steps=20   # from scratch on a CPU
    pfascannet train ... --nosynergistic    # the paper's "w/o SL" ablation
    pfascannet train ... --augment_max_rotation_deg=90 --augment_scale_range=0.8,1.25   # augmentation ranges

Kill it at any time and rerun the same command: it resumes from the latest
checkpoint and ends with the weights an uninterrupted run would have.
Writes ``<workdir>/config.json``, ``checkpoints/``, ``tensorboard/``,
``samples.csv`` and ``final.weights.h5`` (read by ``pfascannet export``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from absl import flags

from pfascannet import settings as settings_lib
from pfascannet.settings import setting
from pfascannet.training.settings import TrainSettings, TrainingError


@dataclasses.dataclass(frozen=True)
class TrainCommand:
    """The flag of ``pfascannet train`` that is not a ``TrainSettings`` field as such (it sets ``max_seconds``)."""

    max_minutes: Optional[float] = setting(
        None, help="Stop early (checkpoint + final weights) after this many minutes (TrainSettings.max_seconds).")


FLAGS = flags.FLAGS
SETTINGS = (TrainSettings, TrainCommand)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``): one per
setting of TrainSettings (name, default, type and help live in its fields), and --max_minutes."""
settings_lib.define_stage_flags(SETTINGS)


def main(argv):
    from pfascannet.training import trainer  # noqa: PLC0415  (the trainer's TensorFlow graph code)


    if not FLAGS.data and not FLAGS.tfrecords:
        raise TrainingError("--data (a cohort folder) or --tfrecords is required")
    if not FLAGS.workdir:
        raise TrainingError("--workdir is required")
    settings = settings_lib.from_flags(
        TrainSettings, FLAGS, data=FLAGS.data or "",
        max_seconds=FLAGS.max_minutes * 60 if FLAGS.max_minutes else None,
    )
    result = trainer.train(settings)
    state = "stopped at --max_minutes" if result.stopped_early else "done"
    print(f"{state}: step {result.step}/{settings.steps}; weights {result.final_weights}")
