"""Camelyon17 pN-staging from scan probability maps (Zhao et al. 2019, section 2.4).

Per-slide morphological features of ``<maps_dir>/<slide>.npy`` (+ ``.json``),
a random forest trained on the training slides' node labels
(negative/itc/micro/macro), node labels for the test slides, pN-stage per test
patient by the Camelyon17 rules, the Camelyon17 submission CSV, and the
quadratic kappa when the test patients' truth is known.

  pfascannet pn-stage --maps_dir S/maps --reference C/slides.csv \
      --stages C/stages.csv --out R/pn_stage
  pfascannet pn-stage --maps_dir S/maps --reference CAMELYON17 --out R/pn_stage

Writes ``features.csv``, ``submission.csv`` (Camelyon17 format) and, with
truth, ``pn_stage.json``/``pn_stage.md`` to ``--out``.
"""

from __future__ import annotations

import os

from absl import flags

from pfascannet import datasets
from pfascannet.evaluation import metric_reports, run

FLAGS = flags.FLAGS
flags.DEFINE_string("maps_dir", None, "Folder of <slide>.npy probability maps with their .json.")
flags.DEFINE_string("reference", None, "Cohort slides.csv (slide,patient,node,split,label,...), or a dataset root "
                                        "(a cohort, CAMELYON17 as downloaded: splits from training/ and testing/, "
                                        "node labels and stages from its stage CSV).")
flags.DEFINE_string("stages", None, "Camelyon17 stage CSV: node labels for training, patient truth for kappa "
                                     "(default with a dataset root: its stage CSV).")
flags.DEFINE_string("train_split", "train", "Split whose slides train the random forest.")
flags.DEFINE_string("test_split", "test", "Split whose patients are staged.")
flags.DEFINE_integer("seed", 0, "Random forest seed.")
flags.DEFINE_integer("n_estimators", 300, "Trees in the random forest.")
flags.DEFINE_string("note", None, "A line for the report (default: synthetic-cohort note when detected).")
flags.DEFINE_string("out", None, "Output folder.")
flags.mark_flags_as_required(["maps_dir", "reference", "out"])


def main(argv):
    refs, ds = datasets.open_reference(FLAGS.reference)
    stages = FLAGS.stages or (ds.stages_path if ds else None)
    rep = run.pn_stage_report(FLAGS.maps_dir, refs, FLAGS.out, stages=stages,
                              train_split=FLAGS.train_split, test_split=FLAGS.test_split, seed=FLAGS.seed,
                              n_estimators=FLAGS.n_estimators,
                              note=FLAGS.note or metric_reports.synthetic_note_for(FLAGS.reference))
    print(f"submission: {os.path.join(FLAGS.out, 'submission.csv')}")
    if rep is None:
        print("no truth for the test patients: kappa not computed")
        return
    print(f"kappa_quadratic = {rep['kappa_quadratic']:.4f} over {rep['n_patients']} test patients; "
          f"report: {os.path.join(FLAGS.out, 'pn_stage.md')}")
