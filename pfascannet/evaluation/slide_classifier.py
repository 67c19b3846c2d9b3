"""A slide score beyond the map's maximum: a random forest on map features (the CAMELYON16 leaders' slide label).

The map maximum ranks a slide by its single most confident pixel, so one
bright false positive on a normal slide outranks a small real metastasis.
The CAMELYON16 winners (Wang et al., 2016) and the paper's own pN-stage step
(Sec. 2.4) instead learn from features of the whole map.  Here a random
forest learns *tumour vs normal* from ``SLIDE_FEATURES`` of the training
slides' maps (their labels from the reference) and scores each test slide by
its tumour probability: the second named slide score (``SCORE_NAMES``) that
``pfascannet auc --maps_dir``, the demo and Table 1 report beside the maximum.

The features (``features.slide_features``, physical units from each map's
metadata) are chosen to tell one sharp blob from a lesion: the maximum and
the 99th percentile, and at 0.5 and 0.9 the number of regions, the largest
region's area, major axis and mean probability, and the total area.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from pfascannet.evaluation import features as feats
from pfascannet.evaluation.features import FeatureError

SCORE_NAMES = {
    "map_max": "map maximum (the slide's most confident lesion candidate, after its candidate views)",
    "classifier": "slide classifier (random forest on map features, trained on the training slides' maps)",
}
"""The named slide scores, in the order reports list them."""

SLIDE_FEATURES = (
    "max_prob", "p99_prob",
    "n_regions@0.5", "total_area_mm2@0.5", "largest_area_mm2@0.5", "largest_major_axis_um@0.5",
    "largest_mean_prob@0.5",
    "n_regions@0.9", "total_area_mm2@0.9", "largest_area_mm2@0.9", "largest_major_axis_um@0.9",
    "largest_mean_prob@0.9",
)
"""Entries of ``features.slide_features`` the forest reads (names as in ``features.feature_names``)."""

N_ESTIMATORS = 300


def _matrix(slide_features: Mapping[str, Mapping[str, float]], slides: Sequence[str]) -> np.ndarray:
    missing = [s for s in slides if s not in slide_features]
    if missing:
        raise FeatureError(f"no map features for {len(missing)} slide(s), e.g. {missing[:3]}")
    return np.asarray([[float(slide_features[s][n]) for n in SLIDE_FEATURES] for s in slides],
                      np.float64).reshape(len(slides), len(SLIDE_FEATURES))


def fit(slide_features: Mapping[str, Mapping[str, float]], tumour: Mapping[str, bool], *, seed: int = 0,
        n_estimators: int = N_ESTIMATORS) -> Optional[RandomForestClassifier]:
    """The forest trained on ``tumour``'s slides (slide -> is tumour), or None if they hold only one class.

    ``class_weight="balanced"``: a cohort holds more normal than tumour slides.
    """
    train = sorted(tumour)
    labels = np.asarray([int(bool(tumour[s])) for s in train])
    if len(set(labels.tolist())) < 2:
        return None
    forest = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, class_weight="balanced",
                                    min_samples_leaf=1, n_jobs=1)
    forest.fit(_matrix(slide_features, train), labels)
    return forest


def score(forest: RandomForestClassifier, slide_features: Mapping[str, Mapping[str, float]],
          slides: Sequence[str]) -> dict[str, float]:
    """Tumour probability of each slide under a fitted forest."""
    slides = sorted(slides)
    if not slides:
        return {}
    column = list(forest.classes_).index(1)
    probs = forest.predict_proba(_matrix(slide_features, slides))[:, column]
    return {s: float(p) for s, p in zip(slides, probs)}


def importances(forest: RandomForestClassifier) -> dict[str, float]:
    """The forest's impurity importance of each of ``SLIDE_FEATURES`` (what it learnt to look at)."""
    return {n: round(float(v), 4) for n, v in zip(SLIDE_FEATURES, forest.feature_importances_)}


def check_features() -> None:
    """Every name of ``SLIDE_FEATURES`` is one ``features.slide_features`` computes."""
    unknown = sorted(set(SLIDE_FEATURES) - set(feats.feature_names()))
    if unknown:
        raise FeatureError(f"slide classifier features not computed by features.slide_features: {unknown}")


check_features()
