"""Scores Camelyon16 lesion CSVs with the organisers' FROC (three scores, named).

Works on a scan's ``S/lesions`` folder or any method's Camelyon16 submission
(one ``confidence,X,Y`` CSV per slide, level-0 px). Truth: Camelyon mask TIFFs
(``--masks_dir``) or ASAP XML (``--annotations_dir``); slides and their
tumour/normal status from ``--reference`` (the cohort's slides.csv, Camelyon16
reference.csv, or a Camelyon17 stage CSV).

  pfascannet froc --lesions_dir S/lesions --reference C/slides.csv \
      --masks_dir C/masks --truth_lesions C/lesions.csv --split test --out R/froc
  pfascannet froc --lesions_dir S/lesions --reference CAMELYON16 --split test --out R/froc

``--reference`` a dataset root (``pfascannet/datasets.py``: a cohort, or
CAMELYON16/17 as downloaded) gives the truth and, unless flags say otherwise,
the masks, annotations (``lesion_annotations.zip`` or a folder) and slides.
Slide ids match in any case (``Test_001`` in reference.csv, ``test_001.csv``).

Writes ``froc.json``, ``froc.md`` and ``froc.png`` to ``--out`` and prints the
three scores (interpolated, nearest point, organisers' grading; see
``shared/DESIGN.md`` section 3). ``--camelyon16_exclusions`` leaves Test_049 and
Test_114 out as the Camelyon16 organisers did. A CSV in ``--lesions_dir`` for a
slide the reference does not list is an error unless ``--ignore_extra``; any
bad CSV stops the run with one ``error:`` line naming the file, before anything
is written.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from absl import flags

from pfascannet import datasets
from pfascannet import settings as settings_lib
from pfascannet.camelyon import LEVEL0_MPP
from pfascannet.evaluation import froc, metric_reports, reference, run
from pfascannet.settings import setting


@dataclasses.dataclass(frozen=True)
class FrocCommand:
    """The flags of ``pfascannet froc``."""

    lesions_dir: Optional[str] = setting(None, required=True,
                                         help="Folder of <slide>.csv lesion files (confidence,X,Y).")
    reference: Optional[str] = setting(
        None, required=True, help="slides.csv, Camelyon16 reference.csv, Camelyon17 stage CSV, or a dataset root "
                                  "(a cohort, CAMELYON16/17 as downloaded: truth, annotations and slides from it).")
    masks_dir: Optional[str] = setting(None, help="Folder of <slide>_mask.tif tumour masks (255 = tumour).")
    annotations_dir: Optional[str] = setting(
        None, help="Folder of <slide>.xml ASAP annotations, or a zip of them (lesion_annotations.zip); used if "
                   "no mask.")
    images_dir: Optional[str] = setting(
        None, help="Folder of slides: the level-0 size of slides the reference gives none for (rasterising XML; "
                   "detections beyond a slide are errors).")
    truth_lesions: Optional[str] = setting(None, help="Cohort lesions.csv for per-class sensitivity (optional).")
    split: Optional[str] = setting(None, help="Score only this split of the reference (e.g. test).")
    allow_missing: bool = setting(False, help="Score a slide without a CSV as having no detections.")
    ignore_extra: bool = setting(False, help="Skip CSVs of slides the reference does not list (default: error).")
    camelyon16_exclusions: bool = setting(
        False, help=f"Leave {' and '.join(froc.CAMELYON16_EXCLUDED)} out of the FROC, as the Camelyon16 "
                    "organisers did.")
    exclude: tuple[str, ...] = setting((), help="Other slide ids to leave out of the FROC (comma-separated).")
    n_bootstrap: int = setting(1000, help="Bootstrap resamples for the CIs (0: none).")
    seed: int = setting(0, help="Bootstrap seed.")
    class_threshold: float = setting(0.5, help="Probability at which per-class sensitivity is taken.")
    mpp: float = setting(LEVEL0_MPP, help="Level-0 um per px for the growth/ITC limits (organisers: 0.243).")
    slide_mpp: bool = setting(
        False, help="Take each tumour slide's own pixel size (from its image) for the growth and ITC limits instead "
                    "of --mpp: slides of other scanners (20x, 0.226 um/px) keep the limits in um.")
    note: Optional[str] = setting(None, help="A line for the report (default: synthetic-cohort note when detected).")
    out: Optional[str] = setting(None, required=True, help="Report folder.")


FLAGS = flags.FLAGS
SETTINGS = (FrocCommand,)
"""Every flag of the stage, generated from these dataclasses' fields (``pfascannet.settings``)."""
settings_lib.define_stage_flags(SETTINGS)


def main(argv):
    all_refs, ds = datasets.open_reference(FLAGS.reference)
    refs = reference.select_split(all_refs, FLAGS.split, source=FLAGS.reference)
    # A dataset root gives the truth the flags leave out: its masks, annotations (folder or zip), slides.
    masks_dir = FLAGS.masks_dir or (ds.masks_dir if ds else None)
    annotations_dir = FLAGS.annotations_dir or (ds.annotations if ds else None)
    images_dir = FLAGS.images_dir or (ds.images if ds else None)
    truth_lesions = FLAGS.truth_lesions or (ds.truth_lesions if ds else None)
    exclude = list(froc.CAMELYON16_EXCLUDED if FLAGS.camelyon16_exclusions else ()) + list(FLAGS.exclude)
    inputs = {k: getattr(FLAGS, k) for k in ("lesions_dir", "reference", "masks_dir", "annotations_dir",
                                             "truth_lesions", "split", "allow_missing", "ignore_extra",
                                             "camelyon16_exclusions", "mpp", "slide_mpp")}
    inputs["exclude"] = exclude
    inputs.update(masks_dir=masks_dir, annotations_dir=str(annotations_dir.where() if ds and annotations_dir is
                                                           ds.annotations else annotations_dir),
                  truth_lesions=truth_lesions)
    rep = run.froc_report(FLAGS.lesions_dir, refs, FLAGS.out, masks_dir=masks_dir,
                          annotations_dir=annotations_dir, images_dir=images_dir,
                          truth_lesions=truth_lesions, allow_missing=FLAGS.allow_missing,
                          mpp=None if FLAGS.slide_mpp else FLAGS.mpp,
                          n_bootstrap=FLAGS.n_bootstrap, seed=FLAGS.seed, class_threshold=FLAGS.class_threshold,
                          note=FLAGS.note or metric_reports.synthetic_note_for(FLAGS.reference), inputs=inputs,
                          known_slides=all_refs, ignore_extra=FLAGS.ignore_extra, exclude=exclude,
                          reference_name=FLAGS.reference)
    if exclude:
        print(f"excluded from the FROC: {', '.join(rep['excluded_slides']) or 'none (not in the reference)'}")
    for key in froc.SCORE_KEYS:
        value = "n/a (no normal slide)" if rep[key] is None else f"{rep[key]:.4f}"
        print(f"{key} = {value}  [{froc.SCORE_NAMES[key]}]")
    print(f"paper: {froc.PAPER_COMPARABILITY}")
    print(f"report: {os.path.join(FLAGS.out, 'froc.md')}")
