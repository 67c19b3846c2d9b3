"""Quadratic weighted kappa of a Camelyon17 submission against a reference CSV.

Both files: header ``patient,stage``, rows ``patient_XXX.zip,pN1`` (node rows
``patient_XXX_node_Y.tif,macro`` are read too and give node accuracy). Stages
are compared in clinical order pN0 < pN0(i+) < pN1mi < pN1 < pN2, any case.

  pfascannet kappa --submission submission.csv --reference C/stages.csv --out R/kappa
"""

from __future__ import annotations

from absl import flags

from pfascannet.errors import PfaError
from pfascannet.evaluation import metric_reports, pn_stage

FLAGS = flags.FLAGS
flags.DEFINE_string("submission", None, "Camelyon17 submission CSV (patient,stage).")
flags.DEFINE_string("reference", None, "Camelyon17 reference CSV (patient,stage).")
flags.DEFINE_string("note", None, "A line for the report (default: synthetic-cohort note when detected).")
flags.DEFINE_string("out", None, "Report folder (optional; without it only prints).")
flags.mark_flags_as_required(["submission", "reference"])


def main(argv):
    ref = pn_stage.read_camelyon17_csv(FLAGS.reference)
    sub = pn_stage.read_camelyon17_csv(FLAGS.submission)
    if not ref.stages:
        raise PfaError(f"{FLAGS.reference}: no patient rows (`patient_XXX.zip,<stage>`)")
    try:
        rep = pn_stage.score_submission(ref, sub)
    except pn_stage.StageError as exc:
        raise PfaError(f"{FLAGS.submission} against {FLAGS.reference}: {exc}") from None
    note = FLAGS.note or metric_reports.synthetic_note_for(FLAGS.reference)
    rep["note"] = note
    print(f"kappa_quadratic = {rep['kappa_quadratic']:.4f}  over {rep['n_patients']} patients "
          f"(stages in clinical order {' < '.join(pn_stage.STAGES)})")
    if FLAGS.out:
        _, md = metric_reports.write_report(FLAGS.out, "kappa", rep, metric_reports.kappa_markdown(rep, note))
        print(f"report: {md}")
