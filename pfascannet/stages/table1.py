"""Table 1 of the paper on the synthetic cohort: cohort -> train -> export -> scan -> evaluate.

Rows, as in Zhao et al. (2019) Table 1: PFA-ScanNet without synergistic
learning (detector loss only), PFA-ScanNet (eq. (3)), and the ensemble of
maps at alpha = 16 and 32 (Sec. 3), plus the patch-wise scan of the same
PFA-ScanNet weights as the runtime baseline.  Columns: runtime per 2708 ROI
and per 400-ROI WSI (minutes), slide AUC, the three Camelyon16 FROC scores
(interpolated, nearest point, organisers' grading; named under the table with
the caveat that the paper does not say which rule its 89.1 % / 90.2 % use),
and the Camelyon17 quadratic kappa.

  pfascannet table1 --out runs/table1 --quick

Four models are trained on one cohort with one recipe and budget
(``training.recipe.scratch_recipe``): w/o SL and PFA-ScanNet with the same seed (they
differ in the loss alone), and two more with other seeds for the ensemble row,
scanned at alpha 16 and 32 with their maps averaged, as the paper's ensemble.
Every step resumes (rerun the same command).  Results on synthetic slides
measure the pipeline, not clinical accuracy; the table says so.
"""

from __future__ import annotations

from absl import flags

from pfascannet import settings as settings_lib
from pfascannet import table1

FLAGS = flags.FLAGS
SETTINGS = (table1.Table1Settings,)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``)."""
settings_lib.define_stage_flags(SETTINGS)


def main(argv):
    settings = settings_lib.from_flags(table1.Table1Settings, FLAGS)
    print(table1.run_table1(settings)["text"])
