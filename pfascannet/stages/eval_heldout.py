"""Held-out slide-level evaluation of trained weights, on synthetic cohorts no training run used.

Patch AUC on balanced patches says little about a whole slide: the slide
score is the map's maximum, so the tail of the map over normal tissue decides
it.  For each ``--seeds`` cohort (the demo's default size, made if absent) the
weights are exported at alpha 16 / ROI 2708, the ``test``-split slides are
scanned densely, and the report gives

* slide AUC and the three named Camelyon16 FROC scores (``evaluation.froc``);
* sensitivity per lesion class (macro, micro, ITC) at probability 0.5;
* calibration: percentiles of the map over normal tissue (normal slides,
  tissue only) and inside tumour (the level-5 truth mask), and the slide
  maxima of normal and tumour slides.

Synthetic slides: the numbers measure the pipeline, not clinical accuracy.

Example::

    pfascannet eval-heldout --weights W/final.weights.h5 --config small \\
        --seeds 11,12,13 --workdir /tmp/heldout --out /tmp/heldout/heldout.json
"""

from __future__ import annotations

import os
import sys

from absl import flags

from pfascannet import heldout, io_utils, workflow
from pfascannet.errors import PfaError

FLAGS = flags.FLAGS
flags.DEFINE_string("weights", None, "Training weights (.weights.h5) to evaluate.")
flags.DEFINE_string("config", "small", "Model config of the weights.")
flags.DEFINE_list("seeds", ["11", "12", "13"], "Seeds of the held-out synthetic cohorts (demo default size).")
flags.DEFINE_string("workdir", None, "Folder for the cohorts, the export and the scans (reused on a rerun).")
flags.DEFINE_string("out", None, "Where to write the JSON report (default <workdir>/heldout.json).")

def main(argv):
    if not FLAGS.weights or not os.path.isfile(FLAGS.weights):
        raise PfaError(f"--weights {FLAGS.weights!r}: no such weights file")
    if not FLAGS.workdir:
        raise PfaError("--workdir is required")
    try:
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError:
        raise PfaError(f"--seeds must be integers, got {FLAGS.seeds}") from None
    log = workflow.Log(total_steps=len(seeds))
    results = []
    for seed in seeds:
        log.begin(f"held-out cohort seed {seed}")
        results.append(heldout.evaluate_seed(os.path.abspath(FLAGS.weights), FLAGS.config, seed, FLAGS.workdir, log))
        r = results[-1]
        log(f"      seed {seed}: AUC {r['auc']:.3f}, FROC " + ", ".join(
            f"{k} {r[k]:.3f}" if r[k] is not None else f"{k} n/a" for k in ("froc_interpolated", "froc_nearest_point",
                                                                           "froc_organisers")))
        log.end()
    record = {"weights": os.path.abspath(FLAGS.weights), "config": FLAGS.config, "seeds": results,
              "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
              "note": "synthetic slides: results measure the pipeline, not clinical accuracy"}
    out = FLAGS.out or os.path.join(FLAGS.workdir, "heldout.json")
    io_utils.write_json(out, record)
    print(f"report: {out}")
