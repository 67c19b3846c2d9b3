"""Held-out slide-level evaluation of trained weights on synthetic cohorts no training run used.

Patch AUC on balanced patches says little about a whole slide: the slide
score is the map's maximum, so the tail of the map over normal tissue decides
it.  ``evaluate_seed`` makes a cohort with a given seed (the demo's default
size unless told otherwise; made if absent), exports the weights at alpha 16 /
ROI 2708, scans its slides densely and reports on the ``test`` split: slide
AUC under both named slide scores (the map maximum, and the slide classifier
trained on the ``train`` split's maps), the three named Camelyon16 FROC
scores, sensitivity per lesion class, the false positives on normal slides
(``false_positives``: how many lesion candidates >= 0.5 each normal slide
holds, and how many of them lie on the generator's recorded mimics) and the
map's calibration (``calibration``: normal tissue >= 0.5, the slide maxima).
Used by ``pfascannet eval-heldout`` and ``experiments/bench_training.py``.

Synthetic slides: the numbers measure the pipeline, not clinical accuracy.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import numpy as np

from pfascannet import datasets, demo, geometry, workflow
from pfascannet.camelyon import MASK_DOWNSAMPLE
from pfascannet.errors import PfaError
from pfascannet.evaluation import froc, reference, run, submission
from pfascannet.evaluation.features import read_probability_map
from pfascannet.evaluation.mimics import MIMIC_MARGIN_UM, CohortMimics
from pfascannet.inference.plan import tissue_on_map
from pfascannet.layout import CohortFolder, ReportFolder, ScanFolder
from pfascannet.slide.reader import SlideReader
from pfascannet.slide.tissue import tissue_mask
from pfascannet.synthetic.cohort import plan_cohort

PERCENTILES = (50, 90, 99, 99.9)
# Grid (level-0 px per cell) of the normal slides' tissue masks in calibration: read there, mapped onto the map.
CALIBRATION_TISSUE_DOWNSAMPLE = 32

FP_THRESHOLD = 0.5
"""A lesion candidate at or above this probability on a normal slide is a false positive of the report."""


def false_positives(lesions_dir: str, cohort_dir: str, slides: dict, threshold: float = FP_THRESHOLD) -> dict:
    """Lesion candidates >= ``threshold`` on the normal slides of ``slides``, and their share on recorded mimics.

    The mimics come from the cohort's ``mimics.csv`` (synthetic cohorts; ``on_mimics`` is None without one).
    """
    normal = sorted(s for s, r in slides.items() if not r.tumour)
    mimics = CohortMimics(cohort_dir)
    per_slide, on_mimic, by_kind = {}, 0, {}
    for sid in normal:
        path = submission.lesion_csv(lesions_dir, sid)
        det = submission.read_detections_csv(path) if path else np.zeros((0, 3))
        hits = det[det[:, 0] >= threshold]
        per_slide[sid] = int(len(hits))
        for _, x, y in hits:
            kinds = mimics.kinds_at(sid, x, y)
            on_mimic += bool(kinds)
            for k in sorted(kinds):
                by_kind[k] = by_kind.get(k, 0) + 1
    total = sum(per_slide.values())
    known = mimics.available
    return {
        "threshold": threshold, "normal_slides": len(normal), "count": total,
        "per_normal_slide": total / len(normal) if normal else None,
        "normal_slides_with_any": sum(v > 0 for v in per_slide.values()),
        "on_mimics": on_mimic if known else None,
        "share_on_mimics": (on_mimic / total if total else 0.0) if known else None,
        "on_mimics_by_kind": by_kind if known else None,
        "mimic_margin_um": MIMIC_MARGIN_UM, "per_slide": per_slide,
    }


def calibration(scan_dir: str, cohort_dir: str, slides: dict) -> dict:
    """Map percentiles over normal tissue (normal slides) and inside tumour (tumour slides), and slide maxima."""

    normal_vals, tumour_vals, maxima = [], [], {"normal": [], "tumour": []}
    cohort = CohortFolder(cohort_dir)
    images = datasets.SlideIndex(cohort.images)
    for sid, ref in sorted(slides.items()):
        prob, meta = read_probability_map(ScanFolder(scan_dir).map_npy(sid))
        stride = int(meta["stride_px"])
        maxima["tumour" if ref.tumour else "normal"].append(float(prob.max()))
        with SlideReader(images.require(sid)) as reader:
            dims = reader.dimensions
            tissue = None if ref.tumour else tissue_mask(reader, downsample=CALIBRATION_TISSUE_DOWNSAMPLE)
        if ref.tumour:
            mask = submission.slide_tumour_mask(sid, cohort.masks, cohort.annotations, images_dir=images) > 0
            tumour_vals.append(prob[tissue_on_map(mask, MASK_DOWNSAMPLE, dims, stride)])
        else:
            normal_vals.append(prob[tissue_on_map(tissue, CALIBRATION_TISSUE_DOWNSAMPLE, dims, stride)])

    def pct(chunks):
        v = np.concatenate(chunks) if chunks else np.zeros(0)
        return {f"p{p:g}": float(np.percentile(v, p)) for p in PERCENTILES} | {
            "n_pixels": int(v.size), "share_at_or_above_0.5": float((v >= 0.5).mean()) if v.size else None}

    return {"normal_tissue": pct(normal_vals), "tumour": pct(tumour_vals),
            "slide_max_normal": sorted(maxima["normal"]), "slide_max_tumour": sorted(maxima["tumour"])}


def cohort_size(patients: int, test_patients: int) -> workflow.CohortSettings:
    """The demo's cohort with ``patients`` patients, ``test_patients`` of them in the test split.

    At least one patient stays for training: the slide classifier learns from the training split's maps.
    """
    if not 1 <= test_patients < patients:
        raise PfaError(f"--test_patients {test_patients} must be at least 1 and leave training patients of the "
                       f"--patients {patients} (the slide classifier learns from them)")
    cohort = dataclasses.replace(demo.SIZES["default"], patients=patients, test_fraction=test_patients / patients)
    n_test = sum(1 for p in plan_test_patients(cohort))
    if n_test != test_patients:  # the generator rounds the fraction
        raise PfaError(f"{patients} patients with {test_patients} for testing: the generator gives {n_test}")
    return cohort


def plan_test_patients(cohort: workflow.CohortSettings) -> set:
    """The test patients the generator draws for ``cohort`` (planning only, nothing rendered)."""
    return {e.patient for e in plan_cohort(cohort) if e.split == "test"}


def summary_line(r: dict) -> str:
    """One line of a held-out cohort's result: both slide AUCs, the FROC scores, false positives."""
    fp = r["false_positives"]
    auc_c = r.get("auc_classifier")
    share = fp.get("share_on_mimics")
    return (f"seed {r['seed']}: {r['test_patients']} test patients, slide AUC {r['auc']:.3f} (map max), "
            + (f"{auc_c:.3f} (classifier)" if auc_c is not None else "n/a (classifier)") + "; FROC "
            + ", ".join(f"{froc.SCORE_SHORT[k]} {r[k]:.3f}" if r[k] is not None else f"{froc.SCORE_SHORT[k]} n/a"
                        for k in froc.SCORE_KEYS)
            + f"; {fp['per_normal_slide']:.2f} false positives >= {fp['threshold']:g} per normal slide"
            + (f" ({100 * share:.0f} % on mimics)" if share is not None else ""))


def evaluate_seed(weights: str, config: str, seed: int, workdir: str, log,
                  cohort: Optional[workflow.CohortSettings] = None) -> dict:
    """One held-out cohort (``cohort``'s size, default the demo's, with ``seed``): make it, export, scan, score."""
    cohort_dir = os.path.join(workdir, f"cohort_seed{seed}")
    workflow.ensure_cohort(cohort_dir, dataclasses.replace(cohort or demo.SIZES["default"], seed=seed), log)
    export_dir = os.path.join(workdir, "model_a16")
    workflow.export_model(weights, config, export_dir, geometry.PAPER_ALPHA, geometry.PAPER_ROI_PX, log)
    return {"seed": seed, **evaluate_cohort(export_dir, cohort_dir, os.path.join(workdir, f"scan_seed{seed}"),
                                            os.path.join(workdir, f"eval_seed{seed}"))}


def evaluate_cohort(export_dir: str, cohort_dir: str, scan_dir: str, eval_dir: str) -> dict:
    """Scans a cohort with an export and scores its test split (both slide scores' AUC, FROC, per-class
    sensitivity, false positives on normal slides, calibration).

    The training split is scanned too: the slide classifier learns from its maps.
    """
    cohort, scan, report = CohortFolder(cohort_dir), ScanFolder(scan_dir), ReportFolder(eval_dir)
    slides_csv = cohort.slides_csv
    refs_all = reference.read_reference(slides_csv)
    refs = reference.select_split(refs_all, "test", source=slides_csv)
    t0 = time.perf_counter()
    workflow.scan([export_dir], workflow.cohort_slides(cohort_dir), scan_dir)
    scan_s = time.perf_counter() - t0
    fr = run.froc_report(scan.lesions, refs, report.froc,
                         masks_dir=cohort.masks, annotations_dir=cohort.annotations, images_dir=cohort.images,
                         truth_lesions=cohort.lesions_csv, n_bootstrap=0, mpp=None,
                         known_slides=refs_all, reference_name=slides_csv)
    scores = run.scores_from_lesions(scan.lesions, refs, known_slides=refs_all)
    au = run.auc_report(scores, refs, report.auc, n_bootstrap=0, known_slides=refs_all)
    clf = run.slide_classifier_report(scan.maps, refs_all, report.slide_classifier, n_bootstrap=0,
                                      warn=lambda m: None)
    return {
        "test_slides": len(refs), "test_patients": len({r.patient for r in refs.values()}),
        "scan_s": round(scan_s, 1),
        "auc": au["auc"], "auc_classifier": clf["auc"] if clf else None,
        **{k: fr[k] for k in froc.SCORE_KEYS},
        "sensitivity_by_class": fr["sensitivity_by_class"],
        "false_positives": false_positives(scan.lesions, cohort_dir, refs),
        "slide_scores": {k: float(v) for k, v in sorted(scores.items())},
        "classifier_scores": {r["slide"]: r["score"] for r in clf["slides"]} if clf else None,
        "calibration": calibration(scan_dir, cohort_dir, refs),
    }
