"""Held-out slide-level evaluation of trained weights, on synthetic cohorts no training run used.

Patch AUC on balanced patches says little about a whole slide: the slide
score is the map's maximum, so the tail of the map over normal tissue decides
it.  For each ``--seeds`` cohort (the demo's size unless ``--patients`` /
``--test_patients`` say otherwise; made if absent) the weights are exported at
alpha 16 / ROI 2708, every slide is scanned densely, and the report gives, on
the test split:

* slide AUC under both named slide scores: the map maximum, and the slide
  classifier trained on the training split's maps (``evaluation.slide_classifier``);
* the three named Camelyon16 FROC scores (``evaluation.froc``) and the
  sensitivity per lesion class (macro, micro, ITC) at probability 0.5;
* false positives: lesion candidates >= 0.5 per normal slide, and their share
  on the hard mimics the generator recorded (``mimics.csv``);
* calibration: percentiles of the map over normal tissue (normal slides,
  tissue only; the share >= 0.5) and inside tumour (the level-5 truth mask),
  and the slide maxima of normal and tumour slides.

Synthetic slides: the numbers measure the pipeline, not clinical accuracy.

Example::

    pfascannet eval-heldout --weights W/final.weights.h5 --config small \\
        --seeds 11,12,13 --patients 13 --test_patients 10 --workdir /tmp/heldout
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional

from absl import flags

from pfascannet import heldout, io_utils, workflow
from pfascannet import settings as settings_lib
from pfascannet.errors import PfaError
from pfascannet.settings import at_least, setting


@dataclasses.dataclass(frozen=True)
class EvalHeldoutCommand:
    """The flags of ``pfascannet eval-heldout``."""

    weights: Optional[str] = setting(None, help="Training weights (.weights.h5) to evaluate.")
    config: str = setting("small", help="Model config of the weights.")
    seeds: tuple[int, ...] = setting((11, 12, 13),
                                     help="Seeds of the held-out synthetic cohorts.")
    patients: int = setting(6, check=at_least(2), help="Patients of 5 nodes per held-out cohort (6: the demo's).")
    test_patients: int = setting(3, check=at_least(1),
                                 help="Of them in the test split (3: the demo's); the rest train the slide classifier.")
    workdir: Optional[str] = setting(None, help="Folder for the cohorts, the export and the scans (reused on a rerun).")
    out: Optional[str] = setting(None, help="Where to write the JSON report (default <workdir>/heldout.json).")


FLAGS = flags.FLAGS
SETTINGS = (EvalHeldoutCommand,)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``)."""
settings_lib.define_stage_flags(SETTINGS)


def main(argv):
    if not FLAGS.weights or not os.path.isfile(FLAGS.weights):
        raise PfaError(f"--weights {FLAGS.weights!r}: no such weights file")
    if not FLAGS.workdir:
        raise PfaError("--workdir is required")
    command = settings_lib.from_flags(EvalHeldoutCommand, FLAGS)  # integers, or one error line
    seeds = list(command.seeds)
    cohort = heldout.cohort_size(command.patients, command.test_patients)
    log = workflow.Log(total_steps=len(seeds))
    results = []
    for seed in seeds:
        log.begin(f"held-out cohort seed {seed}: {command.patients} patients, {command.test_patients} for testing")
        results.append(heldout.evaluate_seed(os.path.abspath(FLAGS.weights), FLAGS.config, seed, FLAGS.workdir, log,
                                             cohort=cohort))
        log(f"      {heldout.summary_line(results[-1])}")
        log.end()
    record = {"weights": os.path.abspath(FLAGS.weights), "config": FLAGS.config,
              "cohort": dataclasses.asdict(cohort) | {"seed": "per entry of seeds"}, "seeds": results,
              "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
              "note": "synthetic slides: results measure the pipeline, not clinical accuracy"}
    out = FLAGS.out or os.path.join(FLAGS.workdir, "heldout.json")
    io_utils.write_json(out, record)
    print(f"report: {out}")
