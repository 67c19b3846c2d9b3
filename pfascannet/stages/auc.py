"""Slide-level Camelyon16 AUC with a bootstrap CI and the ROC plot.

Scores come from a ``name,probability`` CSV (``--scores``, e.g. a scan's
``S/slide_scores.csv`` or a Camelyon16 submission) or, failing that, from the
highest lesion confidence per slide in a folder of lesion CSVs (``--lesions_dir``).

  pfascannet auc --scores S/slide_scores.csv --reference C/slides.csv --split test --out R/auc
  pfascannet auc --scores S/slide_scores.csv --reference CAMELYON16 --split test --out R/auc

Slide ids match in any case (CAMELYON16's reference.csv says ``Test_001``, its
slide ``test_001.tif``).

Writes ``auc.json``, ``auc.md`` and ``roc.png`` to ``--out``.
"""

from __future__ import annotations

import os

from absl import flags

from pfascannet import datasets
from pfascannet.errors import PfaError
from pfascannet.evaluation import metric_reports, reference, run, slide_metrics

FLAGS = flags.FLAGS
flags.DEFINE_string("scores", None, "name,probability CSV of slide scores.")
flags.DEFINE_string("lesions_dir", None, "Or: folder of lesion CSVs; a slide's score is its top confidence.")
flags.DEFINE_string("reference", None, "slides.csv, Camelyon16 reference.csv, Camelyon17 stage CSV, or a dataset "
                                        "root (a cohort, CAMELYON16/17 as downloaded).")
flags.DEFINE_string("split", None, "Score only this split of the reference (e.g. test).")
flags.DEFINE_float("missing_score", None, "Score for reference slides the input lacks (default: error).")
flags.DEFINE_bool("ignore_extra", False, "Skip scores (or lesion CSVs) of slides the reference does not list "
                                         "(default: error).")
flags.DEFINE_integer("n_bootstrap", 1000, "Bootstrap resamples for the CI (0: none).")
flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
flags.DEFINE_string("note", None, "A line for the report (default: synthetic-cohort note when detected).")
flags.DEFINE_string("out", None, "Report folder.")
flags.mark_flags_as_required(["reference", "out"])


def main(argv):
    if bool(FLAGS.scores) == bool(FLAGS.lesions_dir):
        raise PfaError("give exactly one of --scores (name,probability CSV) or --lesions_dir")
    all_refs, _ = datasets.open_reference(FLAGS.reference)
    refs = reference.select_split(all_refs, FLAGS.split, source=FLAGS.reference)
    if FLAGS.scores:
        scores = slide_metrics.read_slide_scores(FLAGS.scores)
    else:
        if not os.path.isdir(FLAGS.lesions_dir):
            raise PfaError(f"--lesions_dir {FLAGS.lesions_dir}: not a folder")
        scores = run.scores_from_lesions(FLAGS.lesions_dir, refs, known_slides=all_refs,
                                         ignore_extra=FLAGS.ignore_extra)
    rep = run.auc_report(scores, refs, FLAGS.out, missing_score=FLAGS.missing_score,
                         n_bootstrap=FLAGS.n_bootstrap, seed=FLAGS.seed,
                         note=FLAGS.note or metric_reports.synthetic_note_for(FLAGS.reference),
                         known_slides=all_refs, ignore_extra=FLAGS.ignore_extra,
                         source=FLAGS.scores or FLAGS.lesions_dir)
    ci = rep["auc_ci"]
    print(f"AUC = {rep['auc']:.4f}" + (f"  (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""))
    print(f"report: {os.path.join(FLAGS.out, 'auc.md')}")
