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

import dataclasses
import os
from typing import Optional

from absl import flags

from pfascannet import datasets
from pfascannet import settings as settings_lib
from pfascannet.evaluation import metric_reports, run
from pfascannet.settings import setting


@dataclasses.dataclass(frozen=True)
class PnStageCommand:
    """The flags of ``pfascannet pn-stage``."""

    maps_dir: Optional[str] = setting(None, required=True,
                                      help="Folder of <slide>.npy probability maps with their .json.")
    reference: Optional[str] = setting(
        None, required=True, help="Cohort slides.csv (slide,patient,node,split,label,...), or a dataset root (a "
                                  "cohort, CAMELYON17 as downloaded: splits from training/ and testing/, node labels "
                                  "and stages from its stage CSV).")
    stages: Optional[str] = setting(
        None, help="Camelyon17 stage CSV: node labels for training, patient truth for kappa (default with a dataset "
                   "root: its stage CSV).")
    train_split: str = setting("train", help="Split whose slides train the random forest.")
    test_split: str = setting("test", help="Split whose patients are staged.")
    seed: int = setting(0, help="Random forest seed.")
    n_estimators: int = setting(300, help="Trees in the random forest.")
    note: Optional[str] = setting(None, help="A line for the report (default: synthetic-cohort note when detected).")
    out: Optional[str] = setting(None, required=True, help="Output folder.")


FLAGS = flags.FLAGS
SETTINGS = (PnStageCommand,)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``)."""
settings_lib.define_stage_flags(SETTINGS)


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
