"""Quadratic weighted kappa of a Camelyon17 submission against a reference CSV.

Both files: header ``patient,stage``, rows ``patient_XXX.zip,pN1`` (node rows
``patient_XXX_node_Y.tif,macro`` are read too and give node accuracy). Stages
are compared in clinical order pN0 < pN0(i+) < pN1mi < pN1 < pN2, any case.

  pfascannet kappa --submission submission.csv --reference C/stages.csv --out R/kappa
  pfascannet kappa --submission R/pn/submission.csv --reference CAMELYON17 --out R/kappa

``--reference`` a dataset root (``pfascannet/datasets.py``) takes its stage CSV
and scores the patients of its test split. Patient ids match in any case.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from absl import flags

from pfascannet import camelyon, datasets
from pfascannet import settings as settings_lib
from pfascannet.errors import PfaError
from pfascannet.evaluation import metric_reports, pn_stage
from pfascannet.settings import setting


@dataclasses.dataclass(frozen=True)
class KappaCommand:
    """The flags of ``pfascannet kappa``."""

    submission: Optional[str] = setting(None, required=True, help="Camelyon17 submission CSV (patient,stage).")
    reference: Optional[str] = setting(
        None, required=True, help="Camelyon17 reference CSV (patient,stage), or a dataset root (its stage CSV, over "
                                  "the patients of its test split).")
    note: Optional[str] = setting(None, help="A line for the report (default: synthetic-cohort note when detected).")
    out: Optional[str] = setting(None, help="Report folder (optional; without it only prints).")


FLAGS = flags.FLAGS
SETTINGS = (KappaCommand,)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``)."""
settings_lib.define_stage_flags(SETTINGS)


def main(argv):
    ref_path, test_patients = FLAGS.reference, None
    if os.path.isdir(FLAGS.reference):
        # A dataset root: its stage CSV, scored over the patients of its test split (testing/).
        ds = datasets.open_dataset(FLAGS.reference)
        if not ds.stages_path:
            raise PfaError(f"{FLAGS.reference}: no stage CSV ({' or '.join(datasets.STAGE_CSV_NAMES)}) in this "
                           f"{ds.layout} folder")
        ref_path = ds.stages_path
        test_patients = {s.patient.casefold() for s in ds.split("test") if s.patient}
        if not test_patients:
            raise PfaError(f"{FLAGS.reference}: no test patients (slides under testing/) to score")
    ref = pn_stage.read_camelyon17_csv(ref_path)
    sub = pn_stage.read_camelyon17_csv(FLAGS.submission)
    if test_patients is not None:
        ref.stages = {p: v for p, v in ref.stages.items() if p.casefold() in test_patients}
        ref.nodes = {n: v for n, v in ref.nodes.items()
                     if (camelyon.patient_of_slide(n) or "").casefold() in test_patients}
    if not ref.stages:
        raise PfaError(f"{ref_path}: no patient rows (`patient_XXX.zip,<stage>`)"
                       + (" for the test patients" if test_patients is not None else ""))
    try:
        rep = pn_stage.score_submission(ref, sub)
    except pn_stage.StageError as exc:
        raise PfaError(f"{FLAGS.submission} against {FLAGS.reference}: {exc}") from None
    note = FLAGS.note or metric_reports.synthetic_note_for(ref_path)
    rep["note"] = note
    print(f"kappa_quadratic = {rep['kappa_quadratic']:.4f}  over {rep['n_patients']} patients "
          f"(stages in clinical order {' < '.join(pn_stage.STAGES)})")
    if FLAGS.out:
        _, md = metric_reports.write_report(FLAGS.out, "kappa", rep, metric_reports.kappa_markdown(rep, note))
        print(f"report: {md}")
