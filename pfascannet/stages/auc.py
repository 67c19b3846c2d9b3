"""Slide-level Camelyon16 AUC with a bootstrap CI and the ROC plot.

Scores come from a ``name,probability`` CSV (``--scores``, e.g. a scan's
``S/slide_scores.csv`` or a Camelyon16 submission) or, failing that, from the
highest lesion confidence per slide in a folder of lesion CSVs (``--lesions_dir``).

  pfascannet auc --scores S/slide_scores.csv --reference C/slides.csv --split test --out R/auc
  pfascannet auc --scores S/slide_scores.csv --reference CAMELYON16 --split test --out R/auc

Slide ids match in any case (CAMELYON16's reference.csv says ``Test_001``, its
slide ``test_001.tif``).

Writes ``auc.json``, ``auc.md`` and ``roc.png`` to ``--out``.

With ``--maps_dir`` (a scan's ``maps/``, training slides included) the second
named slide score is reported beside the first: a random forest on map
features, trained on the ``--train_split`` slides' maps
(``evaluation.slide_classifier``), in ``--out/slide_classifier/``:

  pfascannet auc --scores S/slide_scores.csv --maps_dir S/maps --reference C --split test --out R/auc
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from absl import flags

from pfascannet import datasets
from pfascannet import settings as settings_lib
from pfascannet.errors import PfaError
from pfascannet.layout import ReportFolder
from pfascannet.evaluation import metric_reports, reference, run, slide_metrics
from pfascannet.settings import setting


@dataclasses.dataclass(frozen=True)
class AucCommand:
    """The flags of ``pfascannet auc``."""

    scores: Optional[str] = setting(None, help="name,probability CSV of slide scores.")
    lesions_dir: Optional[str] = setting(
        None, help="Or: folder of lesion CSVs; a slide's score is its top confidence.")
    reference: Optional[str] = setting(
        None, required=True, help="slides.csv, Camelyon16 reference.csv, Camelyon17 stage CSV, or a dataset root "
                                  "(a cohort, CAMELYON16/17 as downloaded).")
    split: Optional[str] = setting(None, help="Score only this split of the reference (e.g. test).")
    missing_score: Optional[float] = setting(None, help="Score for reference slides the input lacks (default: error).")
    ignore_extra: bool = setting(False, help="Skip scores (or lesion CSVs) of slides the reference does not list "
                                             "(default: error).")
    maps_dir: Optional[str] = setting(
        None, help="A scan's maps folder: also report the slide classifier (a forest on map features trained on "
                   "--train_split's maps) as a second named slide score.")
    train_split: str = setting("train", help="With --maps_dir: the split the slide classifier learns from.")
    n_bootstrap: int = setting(1000, help="Bootstrap resamples for the CI (0: none).")
    seed: int = setting(0, help="Bootstrap seed.")
    note: Optional[str] = setting(None, help="A line for the report (default: synthetic-cohort note when detected).")
    out: Optional[str] = setting(None, required=True, help="Report folder.")


FLAGS = flags.FLAGS
SETTINGS = (AucCommand,)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``)."""
settings_lib.define_stage_flags(SETTINGS)


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
    if FLAGS.maps_dir and not os.path.isdir(FLAGS.maps_dir):
        raise PfaError(f"--maps_dir {FLAGS.maps_dir}: not a folder")
    note = FLAGS.note or metric_reports.synthetic_note_for(FLAGS.reference)
    rep = run.auc_report(scores, refs, FLAGS.out, missing_score=FLAGS.missing_score,
                         n_bootstrap=FLAGS.n_bootstrap, seed=FLAGS.seed, note=note,
                         known_slides=all_refs, ignore_extra=FLAGS.ignore_extra,
                         source=FLAGS.scores or FLAGS.lesions_dir,
                         slide_score="map_max" if FLAGS.lesions_dir else None)
    _print_auc("AUC", rep, os.path.join(FLAGS.out, "auc.md"))
    if FLAGS.maps_dir:
        out = ReportFolder(FLAGS.out).metric("slide_classifier")
        clf = run.slide_classifier_report(FLAGS.maps_dir, all_refs, out, train_split=FLAGS.train_split,
                                          test_split=FLAGS.split, n_bootstrap=FLAGS.n_bootstrap, seed=FLAGS.seed,
                                          note=note)
        if clf is not None:
            _print_auc("AUC (slide classifier)", clf, ReportFolder(FLAGS.out).report_md("slide_classifier"))


def _print_auc(what: str, rep: dict, md: str) -> None:
    ci = rep["auc_ci"]
    print(f"{what} = {rep['auc']:.4f}" + (f"  (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""))
    print(f"report: {md}")
