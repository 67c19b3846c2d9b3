"""Camelyon17 pN-stage: node classes, the organisers' rules, CSVs and kappa.

Section 2.4 of Zhao et al. (MICCAI 2019), step (3): morphological features of
each node's probability map feed a random forest that classifies the node as
negative / ITC / micro / macro; the patient's pN-stage then follows the
Camelyon17 rules, and the score is the quadratic weighted Cohen's kappa
(``shared/DESIGN.md`` section 3).

Rules (Camelyon17, after the TNM 8th edition, as the challenge applies them;
the node labels, stages and :func:`~pfascannet.camelyon.pn_stage_from_nodes`
live in ``pfascannet.camelyon``, their CSVs are ``pfascannet.camelyon_files``'; this module scores them):

* ``pN0``     no micro- or macro-metastasis and no ITC in any node;
* ``pN0(i+)`` only ITCs;
* ``pN1mi``   micro-metastases, no macro-metastasis;
* ``pN1``     metastases (micro or macro) in 1-3 nodes, at least one macro;
* ``pN2``     metastases in 4 or more nodes, at least one macro.

Kappa compares stages in clinical order ``pN0 < pN0(i+) < pN1mi < pN1 <
pN2``. Leaving the order to string sorting puts ``pn1`` before ``pn1mi`` and
changes a quadratic kappa; this module always maps stages to their clinical
rank first.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import cohen_kappa_score

from pfascannet.camelyon import (STAGES, StageError, normalize_node_label, patient_of_slide, pn_stage_from_nodes,
                                 stage_rank)
from pfascannet.camelyon_files import (Camelyon17Table, read_camelyon17_csv,  # noqa: F401  (importable from here too)
                                       write_camelyon17_csv)
from pfascannet.evaluation import features as feats


def quadratic_kappa(reference: Sequence[str], predicted: Sequence[str]) -> float:
    """Quadratic weighted Cohen's kappa of pN-stages in clinical order.

    Uses ``sklearn.metrics.cohen_kappa_score(weights="quadratic")`` on the
    stages' clinical ranks with all five ranks as the label set, so the
    weights reflect the distance pN0 < pN0(i+) < pN1mi < pN1 < pN2 and never
    the string order (which would put pN1 before pN1mi).

    Args:
      reference: true stages, any case.
      predicted: predicted stages, same length and order.

    Returns:
      kappa in [-1, 1]; 1.0 when every patient agrees (even if only one
      stage occurs, where sklearn's formula is 0/0).
    """
    if len(reference) != len(predicted):
        raise StageError(f"kappa needs as many predictions as references, got "
                         f"{len(predicted)} and {len(reference)}")
    if not len(reference):
        raise StageError("kappa needs at least one patient")
    y_true = [stage_rank(s) for s in reference]
    y_pred = [stage_rank(s) for s in predicted]
    if y_true == y_pred:
        return 1.0
    return float(cohen_kappa_score(y_true, y_pred, labels=list(range(len(STAGES))),
                                   weights="quadratic"))


# The Camelyon17 stage CSV is read and written by pfascannet.camelyon_files, with the other Camelyon
# files; its names stay importable from here (the pN-stage's callers).


def stages_from_node_table(nodes: Mapping[str, str]) -> dict[str, str]:
    """pN-stage per patient from node labels keyed by ``<patient>_node_<k>``."""
    by_patient: dict[str, list[str]] = {}
    for slide, label in nodes.items():
        patient = patient_of_slide(slide)
        if patient is None:
            raise StageError(f"slide id {slide!r} is not of the form <patient>_node_<k>")
        by_patient.setdefault(patient, []).append(label)
    return {p: pn_stage_from_nodes(labs) for p, labs in sorted(by_patient.items())}


def score_submission(reference: Camelyon17Table, submission: Camelyon17Table) -> dict:
    """Kappa of a submission's patient stages against a reference table.

    Every reference patient must be in the submission (as the organisers'
    script requires); extra submission patients are ignored and listed.
    """
    # Patient and slide ids match in any case (Patient_004.zip and patient_004.zip are one patient).
    sub_stages = {p.casefold(): v for p, v in submission.stages.items()}
    sub_nodes = {s.casefold(): v for s, v in submission.nodes.items()}
    missing = sorted(p for p in reference.stages if p.casefold() not in sub_stages)
    if missing:
        raise StageError(f"submission lacks {len(missing)} reference patient(s), e.g. {missing[:3]}")
    patients = sorted(reference.stages)
    ref = [reference.stages[p] for p in patients]
    sub = [sub_stages[p.casefold()] for p in patients]
    confusion = np.zeros((len(STAGES), len(STAGES)), dtype=int)
    for r, s in zip(ref, sub):
        confusion[stage_rank(r), stage_rank(s)] += 1
    shared_nodes = sorted(s for s in reference.nodes if s.casefold() in sub_nodes)
    node_accuracy = (float(np.mean([reference.nodes[s] == sub_nodes[s.casefold()] for s in shared_nodes]))
                     if shared_nodes else None)
    return {
        "node_accuracy": node_accuracy,
        "n_nodes": len(shared_nodes),
        "kappa_quadratic": quadratic_kappa(ref, sub),
        "n_patients": len(patients),
        "accuracy": float(np.mean([stage_rank(r) == stage_rank(s) for r, s in zip(ref, sub)])),
        "stages": list(STAGES),
        "confusion_rows_reference_cols_submission": confusion.tolist(),
        "extra_patients_ignored": sorted(p for p in submission.stages
                                         if p.casefold() not in {r.casefold() for r in reference.stages}),
    }


# ----------------------------------------------------------------------------
# Node classifier (section 2.4, step 3): a random forest on per-slide features.


def train_node_classifier(features: np.ndarray, labels: Sequence[str], seed: int = 0,
                          n_estimators: int = 300):
    """Fits a scikit-learn random forest from slide features to node labels.

    ``class_weight="balanced"`` because negative nodes dominate a cohort
    (Camelyon17: most of the 500 training nodes), and ITC/micro nodes are
    the ones that decide pN0(i+) and pN1mi.

    Args:
      features: ``[n_slides, n_features]`` (``features.feature_matrix``).
      labels: node label per slide (``negative|itc|micro|macro``, any case).
      seed: the forest's ``random_state``.
      n_estimators: number of trees.

    Returns:
      The fitted ``sklearn.ensemble.RandomForestClassifier``.
    """
    x = np.asarray(features, dtype=np.float64)
    y = [normalize_node_label(v) for v in labels]
    if x.ndim != 2 or x.shape[0] != len(y):
        raise StageError(f"need one feature row per label, got features {x.shape} and {len(y)} labels")
    if not len(y):
        raise StageError("no training slides with node labels; cannot train the node classifier")
    clf = RandomForestClassifier(n_estimators=n_estimators, random_state=seed,
                                 class_weight="balanced", min_samples_leaf=1, n_jobs=1)
    clf.fit(x, y)
    return clf


def predict_node_labels(classifier, features: np.ndarray) -> list[str]:
    """Node label per slide from a fitted classifier."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise StageError(f"features must be [n_slides, n_features], got shape {x.shape}")
    if not len(x):
        return []
    return [normalize_node_label(v) for v in classifier.predict(x)]


def stage_cohort(slide_features: Mapping[str, Mapping[str, float]], train_labels: Mapping[str, str],
                 test_slides: Sequence[str], seed: int = 0, n_estimators: int = 300,
                 thresholds: Sequence[float] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Section 2.4 step (3) end to end: forest on training nodes, stages of test patients.

    Args:
      slide_features: {slide id: feature dict} (``features.slide_features``).
      train_labels: {training slide id: node label}.
      test_slides: slide ids ``<patient>_node_<k>`` to classify.
      seed, n_estimators: the forest's settings.
      thresholds: the feature thresholds (default ``features.THRESHOLDS``).

    Returns:
      ``(node_labels, stages)``: predicted label per test slide and
      pN-stage per test patient.
    """
    thresholds = tuple(thresholds or feats.THRESHOLDS)
    train = sorted(train_labels)
    clf = train_node_classifier(feats.feature_matrix(slide_features, train, thresholds),
                                [train_labels[s] for s in train], seed=seed, n_estimators=n_estimators)
    test = sorted(test_slides)
    predicted = dict(zip(test, predict_node_labels(clf, feats.feature_matrix(slide_features, test, thresholds))))
    return predicted, stages_from_node_table(predicted)
