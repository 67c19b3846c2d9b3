"""Whole evaluations: FROC, slide AUC and pN-stage kappa, each to a report folder.

These are what the ``eval/`` scripts, ``experiments/table1.py`` and the demo
run; the scripts only parse flags.  Each writes ``<name>.json`` and
``<name>.md`` (``evaluation.metric_reports``) plus its plot, atomically, and returns
the report dict.  ``evaluate_scan`` scores a scan folder (ARCHITECTURE.md)
against a cohort laid out like the synthetic one (or Camelyon with a
``slides.csv``-style reference).
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Mapping, Optional

from pfascannet import camelyon, camelyon_files
from pfascannet.errors import PfaError
from pfascannet.evaluation import (features, froc, metric_reports, pn_stage, reference, slide_classifier,
                                   slide_metrics, submission)
from pfascannet.layout import FROC_PNG, PN_FEATURES_CSV, PN_SUBMISSION_CSV, ROC_PNG, ReportFolder, ScanFolder


def _title(base: str, note: Optional[str]) -> str:
    return base + (" (synthetic cohort)" if note == metric_reports.SYNTHETIC_NOTE else "")


def froc_report(lesions_dir: str, refs: Mapping[str, reference.SlideRef], out_dir: str, *,
                masks_dir: Optional[str] = None, annotations_dir: Optional[str] = None,
                images_dir: Optional[str] = None, truth_lesions: Optional[str] = None,
                allow_missing: bool = False, mpp: Optional[float] = camelyon.LEVEL0_MPP, n_bootstrap: int = 1000,
                seed: int = 0, class_threshold: float = 0.5, note: Optional[str] = None,
                inputs: Optional[Mapping] = None, known_slides: Optional[Iterable[str]] = None,
                ignore_extra: bool = False, exclude: Iterable[str] = (),
                reference_name: Optional[str] = None) -> dict:
    """Camelyon16 FROC (the three scores, named) of a folder of lesion CSVs; writes froc.{json,md,png}.

    Every input is read and scored before anything is written, so a bad CSV
    leaves ``out_dir`` untouched.

    Args:
      known_slides: every slide of the reference file (default: ``refs``);
        CSVs of other slides are an error unless ``ignore_extra``.
      exclude: slide ids left out of the FROC (e.g. ``froc.CAMELYON16_EXCLUDED``);
        the report names those it dropped.
      reference_name: the reference file, for messages.
      mpp: the FROC's pixel size (``submission.score_submission``): 0.243 for every slide (the
        organisers'), or None for each slide's own.
    """
    if not os.path.isdir(lesions_dir):
        raise PfaError(f"lesions folder {lesions_dir}: not a folder")
    if not (masks_dir or annotations_dir):
        raise PfaError("FROC needs a masks folder or an annotations folder for the tumour slides' truth")
    exclude = list(exclude)
    scored, excluded = submission.split_excluded(refs, exclude)
    if not scored:
        raise PfaError(f"no slide left to score{f' in {reference_name}' if reference_name else ''} "
                       f"after excluding {excluded}")
    truth = submission.read_truth_lesions(truth_lesions) if truth_lesions else None
    results = submission.score_submission(lesions_dir, scored, masks_dir, annotations_dir, images_dir, truth,
                                    allow_missing, mpp, known_slides=refs if known_slides is None else known_slides,
                                    ignore_extra=ignore_extra, reference_name=reference_name)
    rep = froc.evaluate(results, n_bootstrap=n_bootstrap, seed=seed, class_threshold=class_threshold)
    rep["excluded_slides"] = excluded
    rep["exclusion_asked"] = exclude
    where = getattr(annotations_dir, "where", None)  # a datasets.AnnotationIndex: its folders / zips
    rep["inputs"] = dict(inputs or {"lesions_dir": lesions_dir, "masks_dir": masks_dir,
                                    "annotations_dir": where() if where else annotations_dir,
                                    "truth_lesions": truth_lesions,
                                    "allow_missing": allow_missing, "mpp": mpp if mpp is not None else "each slide's own",
                                    "ignore_extra": ignore_extra,
                                    "exclude": exclude})
    rep["note"] = note
    metric_reports.write_report(out_dir, "froc", rep, metric_reports.froc_markdown(rep, note))
    curve = rep["curve"]
    froc.plot_froc(os.path.join(out_dir, FROC_PNG), curve["avg_fps"], curve["sensitivity"],
                   title=_title("Camelyon16 FROC (FPs over all slides)", note),
                   scores={k: rep[k] for k in froc.SCORE_KEYS})
    return rep


def scores_from_lesions(folder: str, slides, known_slides: Optional[Iterable[str]] = None,
                        ignore_extra: bool = False) -> dict[str, float]:
    """A slide score per slide: its most confident lesion candidate (0 if none).

    The CSVs are read as strictly as for the FROC; a CSV of a slide outside
    ``known_slides`` (default: ``slides``) is an error unless ``ignore_extra``.
    """
    if not os.path.isdir(folder):
        raise PfaError(f"lesions folder {folder}: not a folder")
    extras = submission.extra_csvs(folder, slides if known_slides is None else known_slides)
    if extras and not ignore_extra:
        raise PfaError(f"{extras[0]}: lesion CSV of a slide that is not in the reference"
                       + (f" ({len(extras)} such files)" if len(extras) > 1 else "")
                       + "; remove it or ignore such files explicitly (--ignore_extra)")
    out = {}
    for slide in slides:
        path = submission.lesion_csv(folder, slide)
        if path:
            det = submission.read_detections_csv(path)
            out[slide] = float(det[:, 0].max()) if len(det) else 0.0
    return out


def auc_report(scores: Mapping[str, float], refs: Mapping[str, reference.SlideRef], out_dir: str, *,
               missing_score: Optional[float] = None, n_bootstrap: int = 1000, seed: int = 0,
               note: Optional[str] = None, known_slides: Optional[Iterable[str]] = None,
               ignore_extra: bool = False, source: Optional[str] = None,
               slide_score: Optional[str] = "map_max", name: str = "auc", extra: Optional[Mapping] = None) -> dict:
    """Slide-level AUC with a bootstrap CI; writes <name>.{json,md} and roc.png.

    ``known_slides`` (every slide of the reference file) and ``ignore_extra``
    are as in ``slide_metrics.match_scores``; ``source`` names the scores' file.
    ``slide_score`` names the score (``slide_classifier.SCORE_NAMES``; None: a
    submission's own scores); ``extra`` adds entries to the report.
    """
    names, labels, values = slide_metrics.match_scores({s: int(r.tumour) for s, r in refs.items()},
                                                       scores, missing_score, known_slides=known_slides,
                                                       ignore_extra=ignore_extra, source=source)
    rep = slide_metrics.auc_with_ci(labels, values, n_bootstrap=n_bootstrap, seed=seed)
    rep["slide_score"] = slide_score
    rep["slide_score_name"] = slide_classifier.SCORE_NAMES.get(slide_score, "the submission's slide scores")
    rep["slides"] = [{"slide": n, "tumour": y, "score": s} for n, y, s in zip(names, labels, values)]
    rep.update(extra or {})
    rep["note"] = note
    metric_reports.write_report(out_dir, name, rep, metric_reports.auc_markdown(rep, note))
    slide_metrics.plot_roc(os.path.join(out_dir, ROC_PNG), labels, values,
                           title=_title(f"Slide-level ROC: {slide_score or 'submitted scores'}", note))
    return rep


def map_features(maps_dir: str, slides: Iterable[str]) -> dict[str, dict[str, float]]:
    """``features.slide_features`` of each slide's ``<slide>.npy`` in a scan's maps folder (ids in any case)."""
    if not os.path.isdir(maps_dir):
        raise PfaError(f"maps folder {maps_dir}: not a folder")
    maps = {f[:-4].casefold(): os.path.join(maps_dir, f) for f in sorted(os.listdir(maps_dir))
            if f.lower().endswith(".npy") and not f.startswith(".")}
    out = {}
    for slide in sorted(slides):
        path = maps.get(slide.casefold())
        if path is None:
            raise PfaError(f"no probability map for slide {slide}: {os.path.join(maps_dir, slide + '.npy')}")
        out[slide] = features.features_from_map_file(path)
    return out


def slide_classifier_report(maps_dir: str, refs: Mapping[str, reference.SlideRef], out_dir: str, *,
                            train_split: str = "train", test_split: Optional[str] = "test", n_bootstrap: int = 1000,
                            seed: int = 0, note: Optional[str] = None, known_slides: Optional[Iterable[str]] = None,
                            warn: Callable[[str], None] = print) -> Optional[dict]:
    """The second named slide score (``slide_classifier``): a forest on the ``train_split`` slides' map
    features scores the ``test_split`` slides; AUC report ``slide_classifier.{json,md}`` and roc.png in ``out_dir``.

    Returns None (with a warning) when the training slides hold only one class.
    """
    train = reference.select_split(refs, train_split)
    test = {s: r for s, r in reference.select_split(refs, test_split).items() if s not in train}  # never its own
    if not test:
        raise PfaError(f"the slide classifier has no slide to score outside its {train_split!r} split")
    feats = map_features(maps_dir, set(train) | set(test))
    forest = slide_classifier.fit(feats, {s: r.tumour for s, r in train.items()}, seed=seed)
    if forest is None:
        warn(f"warning: the {train_split!r} slides are all of one class: no slide classifier, map maximum only")
        return None
    scores = slide_classifier.score(forest, feats, sorted(test))
    n_tumour = sum(r.tumour for r in train.values())
    return auc_report(scores, test, out_dir, n_bootstrap=n_bootstrap, seed=seed, note=note,
                      known_slides=refs if known_slides is None else known_slides, source=maps_dir,
                      slide_score="classifier", name="slide_classifier",
                      extra={"classifier": {"features": list(slide_classifier.SLIDE_FEATURES),
                                            "train_split": train_split, "n_train_slides": len(train),
                                            "n_train_tumour": n_tumour, "seed": seed,
                                            "n_estimators": slide_classifier.N_ESTIMATORS,
                                            "importances": slide_classifier.importances(forest)}})


def pn_stage_report(maps_dir: str, refs: Mapping[str, reference.SlideRef], out_dir: str, *,
                    stages: Optional[str] = None, train_split: str = "train", test_split: str = "test",
                    seed: int = 0, n_estimators: int = 300, note: Optional[str] = None,
                    warn: Callable[[str], None] = print) -> Optional[dict]:
    """Section 2.4 (3): features -> random forest -> node labels -> pN-stage -> kappa.

    Writes ``features.csv`` and the Camelyon17 ``submission.csv``; with the
    test patients' truth (node labels in ``refs`` or ``stages``) also
    ``pn_stage.{json,md}``, whose dict is returned (else None).
    """
    if not os.path.isdir(maps_dir):
        raise PfaError(f"maps folder {maps_dir}: not a folder")
    table = camelyon_files.read_camelyon17_csv(stages) if stages else None
    train = reference.select_split(refs, train_split)
    test = reference.select_split(refs, test_split)
    # Slide ids match in any case (the stage CSV's patient_000_node_0.tif, a file Patient_000_Node_0.tif).
    table_nodes = {k.casefold(): v for k, v in table.nodes.items()} if table is not None else {}

    def node_label(slide: str):
        label = refs[slide].node_label
        if label is None:
            label = table_nodes.get(slide.casefold())
        return label

    train_labels = {s: node_label(s) for s in train}
    unlabeled = [s for s, v in train_labels.items() if v is None]
    if unlabeled:
        raise PfaError(f"{len(unlabeled)} training slide(s) lack a node label (negative/itc/micro/macro), "
                       f"e.g. {unlabeled[:3]}; give a stage CSV with node rows")
    counts = {c: sum(v == c for v in train_labels.values()) for c in camelyon.NODE_LABELS}
    absent = [c for c, n in counts.items() if not n]
    if absent:
        warn(f"warning: no training slide of class {', '.join(absent)}: the forest cannot predict it")
    feats = map_features(maps_dir, set(train) | set(test))
    features.write_features_csv(os.path.join(out_dir, PN_FEATURES_CSV), feats)

    predicted, patient_stages = pn_stage.stage_cohort(feats, train_labels, sorted(test),
                                                      seed=seed, n_estimators=n_estimators)
    camelyon_files.write_camelyon17_csv(os.path.join(out_dir, PN_SUBMISSION_CSV), patient_stages, predicted)

    truth_nodes = {s: node_label(s) for s in test}
    truth = camelyon_files.Camelyon17Table()
    table_stages = {k.casefold(): v for k, v in table.stages.items()} if table is not None else {}
    if table is not None and all(p.casefold() in table_stages for p in patient_stages):
        truth.stages = {p: table_stages[p.casefold()] for p in patient_stages}
    elif all(v is not None for v in truth_nodes.values()):
        truth.stages = pn_stage.stages_from_node_table(truth_nodes)
    if not truth.stages:
        return None
    truth.nodes = {s: v for s, v in truth_nodes.items() if v is not None}
    rep = pn_stage.score_submission(truth, camelyon_files.Camelyon17Table(patient_stages, predicted))
    rep["inputs"] = {"maps_dir": maps_dir, "stages": stages, "train_split": train_split,
                     "test_split": test_split, "seed": seed, "n_estimators": n_estimators}
    rep["n_train_slides"] = len(train_labels)
    rep["train_class_counts"] = counts
    rep["predicted_stages"] = patient_stages
    rep["reference_stages"] = dict(truth.stages)
    rep["note"] = note
    metric_reports.write_report(out_dir, "pn_stage", rep, metric_reports.kappa_markdown(rep, note))
    return rep


def evaluate_scan(scan_dir: str, cohort_dir: str, out_dir: str, *, split: str = "test",
                  n_bootstrap: int = 1000, seed: int = 0, warn: Callable[[str], None] = print) -> dict:
    """FROC, AUC and pN-stage kappa of a scan folder against a dataset root.

    The root is read by ``datasets.open_dataset``: a cohort folder
    (``slides.csv`` with a split column, ``masks/``, ``annotations/``,
    ``lesions.csv`` (optional), ``stages.csv``) or CAMELYON16/17 as downloaded
    (annotations from ``lesion_annotations.zip``, splits from the folders; the
    pN-stage needs node labels, so only CAMELYON17 and cohorts have one).
    The scan folder holds ``lesions/``, ``maps/`` and ``slide_scores.csv``.
    Reports land in ``out_dir/{froc,auc,pn_stage}``.

    The second named slide score (``slide_classifier``: a forest on the
    ``train`` slides' maps) lands in ``out_dir/slide_classifier``.

    Returns:
      ``{"froc": ..., "auc": ..., "pn_stage": ..., "slide_classifier": ...}`` report dicts (``pn_stage`` None
      without node labels, ``slide_classifier`` None without training slides of both classes).
    """
    from pfascannet import datasets  # noqa: PLC0415  (datasets reads references through this package)

    ds = datasets.open_dataset(cohort_dir)
    refs_all = ds.refs()
    source = ds.reference_path or cohort_dir
    refs = reference.select_split(refs_all, split, source=source)
    note = metric_reports.SYNTHETIC_NOTE if ds.synthetic else None
    scan, report = ScanFolder(scan_dir), ReportFolder(out_dir)
    scores_csv = scan.slide_scores_csv
    has_nodes = any(r.node_label for r in refs_all.values()) or ds.stages_path
    out = {
        "froc": froc_report(
            scan.lesions, refs, report.froc,
            masks_dir=ds.masks_dir, annotations_dir=ds.annotations, images_dir=ds.images,
            truth_lesions=ds.truth_lesions,
            n_bootstrap=n_bootstrap, seed=seed, note=note, known_slides=refs_all, reference_name=source),
        "auc": auc_report(slide_metrics.read_slide_scores(scores_csv), refs, report.auc,
                          n_bootstrap=n_bootstrap, seed=seed, note=note, known_slides=refs_all,
                          source=scores_csv),
        "pn_stage": pn_stage_report(scan.maps, refs_all, report.pn_stage,
                                    stages=ds.stages_path, test_split=split, seed=seed, note=note,
                                    warn=warn) if has_nodes else None,
        "slide_classifier": slide_classifier_report(
            scan.maps, refs_all, report.slide_classifier, test_split=split, n_bootstrap=n_bootstrap, seed=seed,
            note=note, warn=warn) if any((r.split or "").lower() == "train" for r in refs_all.values()) else None,
    }
    return out
