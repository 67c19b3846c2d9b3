"""Camelyon16 lesion-level FROC, by the organisers' rules (``shared/DESIGN.md`` section 3).

Zhao et al. (MICCAI 2019), section 3, report "average FROC": the mean
sensitivity at 1/4, 1/2, 1, 2, 4 and 8 false positives per whole-slide image.
Three rules for that number circulate and they differ, so this module
computes all three from one FROC curve and names them everywhere
(``SCORE_NAMES``):

* ``froc_interpolated``: ``np.interp`` of the curve at the six FP rates, FPs
  averaged over all slides (the widely used Python port, e.g. NCRF);
* ``froc_nearest_point``: for each rate, the curve point (in the order the
  curve is built, lowest threshold first) with the smallest ``|fp - rate|``,
  the first one winning a tie; FPs over all slides (the paper's group's own
  script);
* ``froc_organisers``: the organisers' grading, the same nearest-point rule
  with only the FPs of normal slides counted, per normal slide.

The paper does not say which rule its 89.1 % / 90.2 % come from
(``PAPER_COMPARABILITY``).

The curve follows the organisers' ``Evaluation_FROC.py`` (the numbers and
the ITC rule are ``pfascannet.camelyon``'s):

* evaluation mask at level 5 (32 level-0 px): tumour is value 255; the
  Euclidean distance transform of the non-tumour is kept below
  ``75 / (0.243 * 32 * 2)`` px (37.5 um growth on each side, "5 tumour
  cells"), holes filled, regions labelled with 8-connectivity;
* an evaluation region whose skimage ``major_axis_length`` is below
  ``275 / (0.243 * 32)`` px is an isolated-tumour-cell (ITC) region: hits
  there are ignored and it is not counted as a lesion;
* a detection ``(confidence, X, Y)`` in level-0 px hits ``mask[Y // 32, X // 32]``;
  0 is a false positive; each lesion keeps its highest-probability hit as its
  TP probability; further hits on it are neither TP nor FP; on normal slides
  every detection is a FP;
* per slide, FP probabilities are Python floats and the lesion probabilities
  a float32 array starting at 0 (one entry per label, ITC regions included,
  which stay 0 like missed lesions); thresholds are the distinct values of
  both together, sorted, minus the lowest; for each threshold ``t``:
  FPs = #(FP >= t), TPs = #(lesion >= t, compared in float32); then a final
  (0, 0) point.

This module holds the rules only; reading a submission folder (one lesion CSV
per slide) and each tumour slide's truth is ``evaluation/submission.py``'s,
the lesion CSV format ``pfascannet/camelyon_files.py``'s.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage
from skimage import measure

from pfascannet import io_utils
from pfascannet.camelyon import (LEVEL0_MPP, MASK_DOWNSAMPLE, MASK_TUMOUR_VALUE, METASTASIS_CLASSES,
                                 froc_growth_limit_px, is_froc_itc, major_axis_length)
from pfascannet.errors import PfaError

FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""False positives per slide at which the average sensitivity is taken."""

SCORE_KEYS = ("froc_interpolated", "froc_nearest_point", "froc_organisers")
"""The three FROC scores, in the order every report prints them."""

SCORE_NAMES = {
    "froc_interpolated": "FROC, interpolated (np.interp of the curve at 1/4..8 FPs per slide, FPs over "
                         "all slides; the widely used port of Evaluation_FROC.py, e.g. NCRF)",
    "froc_nearest_point": "FROC, nearest point (per FP rate the curve point with the smallest |FPs - rate|, "
                          "first wins a tie, no interpolation, FPs over all slides; the paper's group's "
                          "own script)",
    "froc_organisers": "FROC, organisers' grading (the nearest-point rule with only the FPs of normal "
                       "slides counted, per normal slide; Camelyon16's grading)",
}
"""One-line names printed beside every FROC number this project reports."""

SCORE_SHORT = {"froc_interpolated": "interpolated", "froc_nearest_point": "nearest point",
               "froc_organisers": "organisers' grading"}
"""Column titles of the three scores in tables."""

PAPER_COMPARABILITY = (
    "Zhao et al. (2019) report an average FROC of 89.1 % (PFA-ScanNet) and 90.2 % (PFA-ScanNet*, "
    "ensemble) on the Camelyon16 test set, calling it the metric 'provided in Camelyon16 Challenge', "
    "but do not say which rule computed it. Their group's own script uses the nearest point over all "
    "slides (froc_nearest_point), the challenge graded by froc_organisers; the paper states neither, "
    "so no one of the three is known to be comparable.")
"""Which score the paper's numbers are comparable to: the paper does not say; every report states so."""

CAMELYON16_EXCLUDED = ("Test_049", "Test_114")
"""Camelyon16 test slides the organisers left out of the FROC evaluation (``exclude``)."""


class FrocError(PfaError, ValueError):
    """Bad detections, masks or references for the FROC evaluation."""


# ----------------------------------------------------------------------------
# Evaluation masks.


def tumour_from_mask(mask: np.ndarray) -> np.ndarray:
    """Boolean tumour of a level-5 mask: ``True`` where the mask is 255 (or a bool mask).

    The organisers take the distance transform of ``255 - mask``, so only the
    value 255 counts as tumour; an RGB(A) page is read on its first channel as
    they do.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise FrocError(f"a level-5 mask must be 2-D (rows, cols), got shape {mask.shape}")
    if mask.dtype == bool:
        return mask
    return mask == MASK_TUMOUR_VALUE


def evaluation_mask(mask: np.ndarray, mpp: float = LEVEL0_MPP,
                    downsample: int = MASK_DOWNSAMPLE) -> np.ndarray:
    """The organisers' labelled evaluation mask from a level-5 tumour mask.

    Args:
      mask: ``[rows, cols]`` level-5 mask, tumour = 255 (or bool).
      mpp: level-0 pixel size in um (0.243 in the official scripts).
      downsample: level-0 px per mask pixel (32).

    Returns:
      int32 ``[rows, cols]`` labels, 0 = background, 1..n = grown lesions
      (holes filled, 8-connected).
    """
    tumour = tumour_from_mask(mask)
    if not tumour.any():
        # scipy's EDT of an all-nonzero image measures to nothing; no tumour, no lesions.
        return np.zeros(tumour.shape, dtype=np.int32)
    distance = ndimage.distance_transform_edt(~tumour)
    grown = distance < froc_growth_limit_px(mpp, downsample)
    filled = ndimage.binary_fill_holes(grown)
    return measure.label(filled, connectivity=2).astype(np.int32)


def itc_labels(labels: np.ndarray, mpp: float = LEVEL0_MPP,
               downsample: int = MASK_DOWNSAMPLE) -> set[int]:
    """Labels of the evaluation regions that are isolated tumour cells (major axis < 275 um)."""
    return {int(p.label) for p in measure.regionprops(labels)
            if is_froc_itc(major_axis_length(p), mpp, downsample)}


def lesion_sizes_um(labels: np.ndarray, mask: np.ndarray, mpp: float = LEVEL0_MPP,
                    downsample: int = MASK_DOWNSAMPLE) -> dict[int, float]:
    """Major axis (um) of the ungrown tumour inside each evaluation region.

    Used for the size class of a lesion when no truth table gives it.
    """
    tumour_labels = np.where(tumour_from_mask(mask), labels, 0)
    out = {int(lab): 0.0 for lab in np.unique(labels) if lab}
    for p in measure.regionprops(tumour_labels):
        out[int(p.label)] = major_axis_length(p) * mpp * downsample
    return out


# ----------------------------------------------------------------------------
# Detections and per-slide counting.


@dataclasses.dataclass
class SlideResult:
    """Per-slide outcome of the hit counting.

    Attributes:
      name: slide id.
      fp_probs: probabilities of the false positives (float64: the organisers'
        FP list holds Python floats).
      tp_probs: per counted lesion (non-ITC label, ascending), its highest hit
        probability, 0 if missed; float32, as the organisers' ``TP_probs``.
      lesion_labels: evaluation-mask label of each entry of ``tp_probs``.
      lesion_classes: size class of each counted lesion (``itc``/``micro``/``macro``).
      n_ignored: hits on ITC regions plus repeated hits on a lesion.
      n_itc: ITC regions on the slide. The organisers keep a TP probability
        of 0 for each of them, which puts 0 among the distinct probabilities
        (and so decides which probability is "the lowest").
      tumour: a tumour slide (its FPs do not count in the organisers' grading).
      size_known: whether its detections were checked against the slide's
        level-0 size (a tumour slide's always are, against its mask).
    """

    name: str
    fp_probs: np.ndarray
    tp_probs: np.ndarray
    lesion_labels: list[int]
    lesion_classes: list[str]
    n_ignored: int = 0
    n_itc: int = 0
    tumour: bool = True
    size_known: bool = True

    @property
    def n_lesions(self) -> int:
        return len(self.tp_probs)


def score_slide(name: str, detections: np.ndarray, labels: Optional[np.ndarray],
                itc: Iterable[int] = (), classes: Optional[Mapping[int, str]] = None,
                downsample: int = MASK_DOWNSAMPLE, dimensions_xy: Optional[tuple[int, int]] = None,
                source: Optional[str] = None) -> SlideResult:
    """Counts TPs and FPs of one slide by the organisers' rules.

    Args:
      name: slide id (for messages).
      detections: ``[n, 3]`` (confidence, X, Y) in level-0 px.
      labels: labelled evaluation mask of a tumour slide, or ``None`` for a
        normal slide (every detection is then a FP).
      itc: labels of ITC regions (hits ignored, not counted as lesions).
      classes: size class per label; labels without one are ``"unknown"``.
      downsample: level-0 px per evaluation-mask pixel.
      dimensions_xy: the slide's level-0 ``(width, height)`` when known: a
        detection at or beyond it is an error, on normal slides too.
      source: the file the detections came from, for messages.

    Raises:
      FrocError: a detection outside the slide or its mask.
    """
    detections = np.asarray(detections, dtype=np.float64).reshape(-1, 3)
    where = source or f"slide {name}"
    for p, x, y in detections:
        outside = x < 0 or y < 0
        if dimensions_xy is not None:
            outside = outside or x >= dimensions_xy[0] or y >= dimensions_xy[1]
        if outside:
            size = f"{dimensions_xy[0]}x{dimensions_xy[1]} " if dimensions_xy is not None else ""
            raise FrocError(f"{where}: detection ({p:g}, X={x:g}, Y={y:g}) lies outside the {size}slide "
                            f"(slide {name}, level-0 px)")
    probs = detections[:, 0]
    if labels is None:
        return SlideResult(name, probs.copy(), np.zeros(0, np.float32), [], [], 0, tumour=False)
    itc = set(int(i) for i in itc)
    n_labels = int(labels.max()) if labels.size else 0
    lesion_labels = [lab for lab in range(1, n_labels + 1) if lab not in itc]
    # float32 as the organisers' TP_probs (np.zeros(max_label, dtype=np.float32)).
    best = np.zeros(n_labels + 1, dtype=np.float32)
    hit = np.zeros(n_labels + 1, dtype=bool)
    fps, n_ignored = [], 0
    rows = np.floor_divide(detections[:, 2].astype(np.int64), downsample)
    cols = np.floor_divide(detections[:, 1].astype(np.int64), downsample)
    for p, r, c, x, y in zip(probs, rows, cols, detections[:, 1], detections[:, 2]):
        if not (0 <= r < labels.shape[0] and 0 <= c < labels.shape[1]):
            raise FrocError(f"{where}: detection at level-0 (X={x:g}, Y={y:g}) lies outside "
                            f"the {labels.shape[1]}x{labels.shape[0]} level-5 mask of slide {name}")
        lab = int(labels[r, c])
        if lab == 0:
            fps.append(float(p))
        elif lab in itc:
            n_ignored += 1
        else:
            n_ignored += int(hit[lab])
            hit[lab] = True
            # Strict '>' as the organisers: only the highest hit is kept (compared as they
            # do, a Python float against a float32 entry, i.e. in float32).
            if np.float32(p) > best[lab]:
                best[lab] = p
    classes = classes or {}
    return SlideResult(name, np.asarray(fps, dtype=np.float64), best[lesion_labels],
                       lesion_labels, [classes.get(lab, "unknown") for lab in lesion_labels], n_ignored,
                       n_itc=sum(1 for lab in range(1, n_labels + 1) if lab in itc), tumour=True)


def classes_from_truth(labels: np.ndarray, lesions_xy_class: Sequence[tuple[float, float, str]],
                       downsample: int = MASK_DOWNSAMPLE) -> dict[int, str]:
    """Size class per evaluation label from truth lesions (centre X, Y level-0 px, class).

    A region holding several truth lesions (merged by the growth) takes the
    largest class among them.
    """
    order = {c: i for i, c in enumerate(METASTASIS_CLASSES)}
    out: dict[int, str] = {}
    for x, y, cls in lesions_xy_class:
        r, c = int(y) // downsample, int(x) // downsample
        if not (0 <= r < labels.shape[0] and 0 <= c < labels.shape[1]):
            continue
        lab = int(labels[r, c])
        if lab and (lab not in out or order.get(cls, -1) > order.get(out[lab], -1)):
            out[lab] = cls
    return out


# ----------------------------------------------------------------------------
# The FROC curve and the three scores.


def froc_curve(results: Sequence[SlideResult], fps_of: str = "all"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The organisers' FROC curve over slides (``shared/DESIGN.md`` section 3).

    Lesion probabilities are a float32 array (each lesion's highest hit, 0
    when missed, plus a 0 per ITC region); FP probabilities are float64 (the
    organisers' Python floats).  Thresholds are the distinct values of both
    together, sorted, minus the lowest; at each threshold ``t`` (ascending)
    FPs = #(FP >= t) and TPs = #(lesion >= t) compared in float32; a closing
    point (0, 0) follows.

    Why float32 is kept: the organisers' ``Evaluation_FROC.py`` stores
    ``TP_probs`` as ``np.float32`` and the FPs as Python floats, so a lesion
    and a FP that share a probability ``v`` with ``float32(v) != v`` are two
    thresholds, and where ``float32(v) > v`` the curve gains a point (the FP
    dropped, the lesion kept) that moves both scores. Every published
    Camelyon16 FROC carries that quirk; "fixing" it would make our numbers
    incomparable, so it is reproduced on purpose.

    Args:
      results: per-slide results.
      fps_of: ``"all"``: FPs of every slide, per slide (interpolated and
        nearest-point scores); ``"normal"``: only the FPs of normal slides,
        per normal slide (the organisers' grading). The thresholds are the
        same in both: the distinct values of every FP and lesion probability.

    Returns:
      ``(avg_fps, sensitivity, thresholds)``, lowest threshold first, then the
      closing point with threshold ``inf``; ``avg_fps`` is non-increasing.

    Raises:
      FrocError: no slide, no (non-ITC) lesion, or no normal slide for ``"normal"``.
    """
    if not results:
        raise FrocError("FROC needs at least one slide")
    if fps_of not in ("all", "normal"):
        raise FrocError(f"fps_of must be 'all' or 'normal', got {fps_of!r}")
    n_lesions = sum(r.n_lesions for r in results)
    if n_lesions == 0:
        raise FrocError("FROC needs at least one (non-ITC) lesion among the slides")
    fps = np.concatenate([np.asarray(r.fp_probs, np.float64) for r in results])
    # The organisers' TP list has an entry per label of a tumour slide, ITC labels
    # included (always 0): those zeros join the distinct probabilities, so with an
    # ITC (or a missed lesion) "the lowest" dropped is 0, not the lowest detection.
    lesions = np.concatenate([np.asarray(r.tp_probs, np.float32) for r in results]
                             + [np.zeros(int(sum(r.n_itc for r in results)), np.float32)])
    # Distinct values of the two lists: a float32 lesion value is exact in float64,
    # so np.unique over float64 is Python's sorted(set(FPs + TPs)).
    thresholds = np.unique(np.concatenate([fps, lesions.astype(np.float64)]))[1:]
    if fps_of == "normal":
        normal = [r for r in results if not r.tumour]
        if not normal:
            raise FrocError("the organisers' grading counts FPs on normal slides; there is none")
        counted = np.concatenate([np.asarray(r.fp_probs, np.float64) for r in normal])
        n_slides = len(normal)
    else:
        counted, n_slides = fps, len(results)
    # Counts of values >= t for all t at once (sorted search, exact like the loop).
    # FPs compare in float64; lesions in float32, as numpy compares a float32 array
    # with a Python float threshold (the threshold is rounded to float32).
    fps_sorted, lesions_sorted = np.sort(counted), np.sort(lesions)
    n_fp = len(fps_sorted) - np.searchsorted(fps_sorted, thresholds, side="left")
    n_tp = len(lesions_sorted) - np.searchsorted(lesions_sorted, thresholds.astype(np.float32), side="left")
    avg_fps = np.append(n_fp, 0) / float(n_slides)
    sensitivity = np.append(n_tp, 0) / float(n_lesions)
    return avg_fps, sensitivity, np.append(thresholds, np.inf)


def froc_interpolated(avg_fps: np.ndarray, sensitivity: np.ndarray,
                      rates: Sequence[float] = FP_RATES) -> tuple[float, list[float]]:
    """The port's score: ``np.interp(rates, fps[::-1], sens[::-1])``, averaged."""
    at = np.interp(rates, np.asarray(avg_fps)[::-1], np.asarray(sensitivity)[::-1])
    return float(np.mean(at)), [float(v) for v in at]


def froc_nearest_point(avg_fps: np.ndarray, sensitivity: np.ndarray,
                       rates: Sequence[float] = FP_RATES) -> tuple[float, list[float]]:
    """Nearest point: per rate, the sensitivity of the curve point with the smallest ``|fp - rate|``.

    The curve is taken in the order ``froc_curve`` builds it (lowest threshold
    first) and the first point wins a tie (strict ``<``; ``np.argmin`` returns
    the first minimum); no interpolation.  With ``froc_curve(..., "normal")``
    this is the organisers' grading.
    """
    fps = np.asarray(avg_fps, dtype=np.float64)
    sens = np.asarray(sensitivity, dtype=np.float64)
    at = [float(sens[int(np.argmin(np.abs(fps - r)))]) for r in rates]
    return float(np.mean(at)), at


def froc_scores(results: Sequence[SlideResult]) -> dict[str, Optional[tuple[float, list[float]]]]:
    """The three named scores ``{key: (score, sensitivity at each FP rate)}``.

    ``froc_organisers`` is None when no slide is normal (its FPs per normal
    slide are undefined).
    """
    fps, sens, _ = froc_curve(results)
    out = {"froc_interpolated": froc_interpolated(fps, sens),
           "froc_nearest_point": froc_nearest_point(fps, sens),
           "froc_organisers": None}
    if any(not r.tumour for r in results):
        nfps, nsens, _ = froc_curve(results, fps_of="normal")
        out["froc_organisers"] = froc_nearest_point(nfps, nsens)
    return out


def class_sensitivity(results: Sequence[SlideResult], threshold: float) -> dict[str, dict]:
    """Sensitivity per lesion size class at a probability threshold (TP prob >= threshold)."""
    out: dict[str, dict] = {}
    pairs = [(c, p) for r in results for c, p in zip(r.lesion_classes, r.tp_probs)]
    for cls in sorted({c for c, _ in pairs}):
        probs = np.asarray([p for c, p in pairs if c == cls])
        detected = int(np.sum((probs >= threshold) & (probs > 0)))
        out[cls] = {"n_lesions": int(len(probs)), "n_detected": detected,
                    "sensitivity": detected / len(probs)}
    return out


def evaluate(results: Sequence[SlideResult], n_bootstrap: int = 1000, seed: int = 0,
             ci: float = 0.95, class_threshold: float = 0.5) -> dict:
    """The three FROC scores, both curves, per-class sensitivity and bootstrap CIs.

    The bootstrap resamples slides with replacement (``np.random.default_rng(seed)``);
    replicates that draw no lesion have no sensitivity, and those that draw no
    normal slide no organisers' grading: they are skipped and counted.

    Returns:
      A JSON-ready dict; ``score_names`` says which FROC score is which and
      ``paper_comparability`` which one the paper's numbers compare with.
    """
    avg_fps, sens, thr = froc_curve(results)
    scores = froc_scores(results)
    n_normal = sum(1 for r in results if not r.tumour)
    report = {key: (scores[key][0] if scores[key] else None) for key in SCORE_KEYS}
    report.update({
        "score_names": dict(SCORE_NAMES),
        "paper_comparability": PAPER_COMPARABILITY,
        "fp_rates": list(FP_RATES),
    })
    for key in SCORE_KEYS:
        report[f"sensitivity_at_rates_{key[len('froc_'):]}"] = scores[key][1] if scores[key] else None
    report.update({
        "n_slides": len(results),
        "n_normal_slides": n_normal,
        "n_lesions": int(sum(r.n_lesions for r in results)),
        "n_false_positives": int(sum(len(r.fp_probs) for r in results)),
        "n_false_positives_normal_slides": int(sum(len(r.fp_probs) for r in results if not r.tumour)),
        "n_ignored_hits": int(sum(r.n_ignored for r in results)),
        "slides_size_unknown": [r.name for r in results if not r.size_known],
        "curve": {"avg_fps": avg_fps.tolist(), "sensitivity": sens.tolist(),
                  "thresholds": [float(t) if np.isfinite(t) else None for t in thr]},
        "class_threshold": class_threshold,
        "sensitivity_by_class": class_sensitivity(results, class_threshold),
    })
    if n_normal:
        nfps, nsens, _ = froc_curve(results, fps_of="normal")
        report["curve_normal_fps"] = {"avg_fps": nfps.tolist(), "sensitivity": nsens.tolist()}
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        boots: dict[str, list[float]] = {key: [] for key in SCORE_KEYS}
        skipped = skipped_normal = 0
        for _ in range(n_bootstrap):
            sample = [results[i] for i in rng.integers(0, len(results), len(results))]
            if not sum(r.n_lesions for r in sample):
                skipped += 1
                continue
            for key, value in froc_scores(sample).items():
                if value is None:
                    skipped_normal += 1
                else:
                    boots[key].append(value[0])
        lo, hi = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
        report["bootstrap"] = {"n": n_bootstrap, "seed": seed, "ci": ci,
                               "skipped_without_lesions": skipped,
                               "skipped_without_normal_slides": skipped_normal}
        for key, vals in boots.items():
            report[f"{key}_ci"] = ([float(np.percentile(vals, lo)), float(np.percentile(vals, hi))]
                                   if vals else None)
    return report


def plot_froc(path: str | os.PathLike, avg_fps: np.ndarray, sensitivity: np.ndarray,
              title: str = "FROC", scores: Optional[Mapping[str, float]] = None) -> None:
    """Writes the FROC curve as a PNG atomically (matplotlib Agg), FP axis in symlog base 2."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    # The curve's own points in increasing-FP order, joined by lines as the organisers plot it
    # (ties in FP are vertical jumps; a FP and a TP at one probability make a diagonal).
    ax.plot(np.asarray(avg_fps)[::-1], np.asarray(sensitivity)[::-1], color="black", marker=".", ms=3)
    for r in FP_RATES:
        ax.axvline(r, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("symlog", base=2, linthresh=0.25)
    ax.set_xlim(0, max(8.0, float(np.max(avg_fps)) if len(avg_fps) else 8.0))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("average false positives per slide")
    ax.set_ylabel("lesion sensitivity")
    if scores:
        title += "".join(f"\n{SCORE_SHORT.get(k, k)} = {v:.3f}" for k, v in scores.items() if v is not None)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with io_utils.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
