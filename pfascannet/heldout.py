"""Held-out slide-level evaluation of trained weights on synthetic cohorts no training run used.

Patch AUC on balanced patches says little about a whole slide: the slide
score is the map's maximum, so the tail of the map over normal tissue decides
it.  ``evaluate_seed`` makes a cohort of the demo's default size with a given
seed (if absent), exports the weights at alpha 16 / ROI 2708, scans the
``test``-split slides densely and reports slide AUC, the three named
Camelyon16 FROC scores, sensitivity per lesion class and the map's
calibration (``calibration``).  Used by ``pfascannet eval-heldout`` and
``experiments/bench_training.py``.

Synthetic slides: the numbers measure the pipeline, not clinical accuracy.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from pfascannet import datasets, demo, geometry, workflow
from pfascannet.camelyon import MASK_DOWNSAMPLE
from pfascannet.evaluation import froc, reference, run, submission
from pfascannet.evaluation.features import read_probability_map
from pfascannet.inference.plan import tissue_on_map
from pfascannet.layout import CohortFolder, ReportFolder, ScanFolder
from pfascannet.slide.reader import SlideReader
from pfascannet.slide.tissue import tissue_mask

PERCENTILES = (50, 90, 99, 99.9)


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
            tissue = None if ref.tumour else tissue_mask(reader, downsample=32)
        if ref.tumour:
            mask = submission.slide_tumour_mask(sid, cohort.masks, cohort.annotations, images_dir=images) > 0
            tumour_vals.append(prob[tissue_on_map(mask, MASK_DOWNSAMPLE, dims, stride)])
        else:
            normal_vals.append(prob[tissue_on_map(tissue, 32, dims, stride)])

    def pct(chunks):
        v = np.concatenate(chunks) if chunks else np.zeros(0)
        return {f"p{p:g}": float(np.percentile(v, p)) for p in PERCENTILES} | {
            "n_pixels": int(v.size), "share_at_or_above_0.5": float((v >= 0.5).mean()) if v.size else None}

    return {"normal_tissue": pct(normal_vals), "tumour": pct(tumour_vals),
            "slide_max_normal": sorted(maxima["normal"]), "slide_max_tumour": sorted(maxima["tumour"])}


def evaluate_seed(weights: str, config: str, seed: int, workdir: str, log) -> dict:
    """One held-out cohort: make it, export, scan its test slides, score them."""
    cohort_dir = os.path.join(workdir, f"cohort_seed{seed}")
    workflow.ensure_cohort(cohort_dir, dataclasses.replace(demo.SIZES["default"], seed=seed), log)
    export_dir = os.path.join(workdir, "model_a16")
    workflow.export_model(weights, config, export_dir, geometry.PAPER_ALPHA, geometry.PAPER_ROI_PX, log)
    return {"seed": seed, **evaluate_cohort(export_dir, cohort_dir, os.path.join(workdir, f"scan_seed{seed}"),
                                            os.path.join(workdir, f"eval_seed{seed}"))}


def evaluate_cohort(export_dir: str, cohort_dir: str, scan_dir: str, eval_dir: str) -> dict:
    """Scans a cohort's test slides with an export and scores them (AUC, FROC, per-class sensitivity, calibration)."""
    cohort, scan, report = CohortFolder(cohort_dir), ScanFolder(scan_dir), ReportFolder(eval_dir)
    slides_csv = cohort.slides_csv
    refs_all = reference.read_reference(slides_csv)
    refs = reference.select_split(refs_all, "test", source=slides_csv)
    t0 = time.perf_counter()
    workflow.scan([export_dir], workflow.cohort_slides(cohort_dir, "test"), scan_dir)
    scan_s = time.perf_counter() - t0
    fr = run.froc_report(scan.lesions, refs, report.froc,
                         masks_dir=cohort.masks, annotations_dir=cohort.annotations, images_dir=cohort.images,
                         truth_lesions=cohort.lesions_csv, n_bootstrap=0, mpp=None,
                         known_slides=refs_all, reference_name=slides_csv)
    scores = run.scores_from_lesions(scan.lesions, refs, known_slides=refs_all)
    au = run.auc_report(scores, refs, report.auc, n_bootstrap=0, known_slides=refs_all)
    return {
        "test_slides": len(refs), "scan_s": round(scan_s, 1),
        "auc": au["auc"], **{k: fr[k] for k in froc.SCORE_KEYS},
        "sensitivity_by_class": fr["sensitivity_by_class"],
        "slide_scores": {k: float(v) for k, v in sorted(scores.items())},
        "calibration": calibration(scan_dir, cohort_dir, refs),
    }
