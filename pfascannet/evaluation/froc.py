"""Camelyon16 lesion-level FROC, by the organisers' rules (``shared/DESIGN.md`` section 3).

Zhao et al. (MICCAI 2019), section 3, report "average FROC": the mean
sensitivity at 1/4, 1/2, 1, 2, 4 and 8 false positives per whole-slide image.
Two implementations of that number circulate and they differ, so this module
computes both from one FROC curve and names them everywhere:

* ``froc_interpolated``: ``np.interp`` of the curve at the six FP rates, FPs
  averaged over all slides (the widely used Python port of the organisers'
  ``Evaluation_FROC.py``);
* ``froc_nearest_point``: the organisers' grading, which takes, for each
  target FP rate, the first curve point (in increasing-FP order) whose
  average FP count is at or above the target (``bisect_left``), or the
  last point if none is. This is the score of the paper's group.

The curve follows ``Evaluation_FROC.py``:

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
* thresholds: every distinct probability (TP probabilities, with 0 for a
  missed lesion and for every ITC region of a tumour slide, and FP
  probabilities) except the lowest; a final point (0 FP, 0 sensitivity)
  closes the curve.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import os
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from pfascannet import io_utils
from pfascannet.errors import PfaError

LEVEL0_MPP = 0.243
"""Level-0 pixel size (um) the organisers' scripts hard-code."""

EVAL_DOWNSAMPLE = 32
"""Evaluation level 5 = 2**5 level-0 px."""

GROWTH_UM = 75.0
"""Tumour growth before labelling, "the size of 5 tumour cells" (half per side)."""

ITC_MAJOR_AXIS_UM = 275.0
"""ITC limit on the grown region's major axis: 200 um plus the 75 um growth."""

FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""False positives per slide at which the average sensitivity is taken."""

SCORE_NAMES = {
    "froc_interpolated": "FROC, interpolated (np.interp at 1/4..8 FPs per slide, FPs over all "
                         "slides; the widely used port of Evaluation_FROC.py)",
    "froc_nearest_point": "FROC, nearest curve point (first curve point with average FPs >= each "
                          "target; the organisers' grading, the score of Zhao et al.)",
}
"""One-line names printed beside every FROC number this project reports."""

SIZE_CLASSES = ("itc", "micro", "macro")


class FrocError(PfaError, ValueError):
    """Bad detections, masks or references for the FROC evaluation."""


# ----------------------------------------------------------------------------
# Evaluation masks.


def growth_threshold_px(mpp: float = LEVEL0_MPP, downsample: int = EVAL_DOWNSAMPLE) -> float:
    """Distance-transform limit in evaluation-level px: 75 / (mpp * downsample * 2)."""
    return GROWTH_UM / (mpp * downsample * 2.0)


def itc_threshold_px(mpp: float = LEVEL0_MPP, downsample: int = EVAL_DOWNSAMPLE) -> float:
    """Major-axis limit below which a grown region is ITC: 275 / (mpp * downsample)."""
    return ITC_MAJOR_AXIS_UM / (mpp * downsample)


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
    return mask == 255


def evaluation_mask(mask: np.ndarray, mpp: float = LEVEL0_MPP,
                    downsample: int = EVAL_DOWNSAMPLE) -> np.ndarray:
    """The organisers' labelled evaluation mask from a level-5 tumour mask.

    Args:
      mask: ``[rows, cols]`` level-5 mask, tumour = 255 (or bool).
      mpp: level-0 pixel size in um (0.243 in the official scripts).
      downsample: level-0 px per mask pixel (32).

    Returns:
      int32 ``[rows, cols]`` labels, 0 = background, 1..n = grown lesions
      (holes filled, 8-connected).
    """
    from scipy import ndimage  # noqa: PLC0415
    from skimage import measure  # noqa: PLC0415

    tumour = tumour_from_mask(mask)
    if not tumour.any():
        # scipy's EDT of an all-nonzero image measures to nothing; no tumour, no lesions.
        return np.zeros(tumour.shape, dtype=np.int32)
    distance = ndimage.distance_transform_edt(~tumour)
    grown = distance < growth_threshold_px(mpp, downsample)
    filled = ndimage.binary_fill_holes(grown)
    return measure.label(filled, connectivity=2).astype(np.int32)


def itc_labels(labels: np.ndarray, mpp: float = LEVEL0_MPP,
               downsample: int = EVAL_DOWNSAMPLE) -> set[int]:
    """Labels of the evaluation regions that are isolated tumour cells (major axis < 275 um)."""
    from skimage import measure  # noqa: PLC0415

    limit = itc_threshold_px(mpp, downsample)
    return {int(p.label) for p in measure.regionprops(labels) if _major_axis(p) < limit}


def lesion_sizes_um(labels: np.ndarray, mask: np.ndarray, mpp: float = LEVEL0_MPP,
                    downsample: int = EVAL_DOWNSAMPLE) -> dict[int, float]:
    """Major axis (um) of the ungrown tumour inside each evaluation region.

    Used for the size class of a lesion when no truth table gives it.
    """
    from skimage import measure  # noqa: PLC0415

    tumour_labels = np.where(tumour_from_mask(mask), labels, 0)
    out = {int(lab): 0.0 for lab in np.unique(labels) if lab}
    for p in measure.regionprops(tumour_labels):
        out[int(p.label)] = _major_axis(p) * mpp * downsample
    return out


def _major_axis(region) -> float:
    """skimage's major axis length (renamed ``axis_major_length`` in 0.26; same value)."""
    value = getattr(region, "axis_major_length", None)
    return float(region.major_axis_length if value is None else value)


def size_class(major_axis_um: float) -> str:
    """Camelyon17 size class of a lesion: itc (< 200 um), micro (<= 2 mm), macro (> 2 mm)."""
    if major_axis_um > 2000.0:
        return "macro"
    if major_axis_um > 200.0:
        return "micro"
    return "itc"


def evaluation_mask_from_tiff(path: str | os.PathLike, mpp: float = LEVEL0_MPP) -> np.ndarray:
    """Labelled evaluation mask from a Camelyon mask TIFF's level-5 (downsample 32) page."""
    from pfascannet.slide import annotations  # noqa: PLC0415

    return evaluation_mask(annotations.read_mask_level(path, downsample=EVAL_DOWNSAMPLE), mpp=mpp)


def evaluation_mask_from_xml(path: str | os.PathLike, dimensions_xy: tuple[int, int],
                             mpp: float = LEVEL0_MPP) -> np.ndarray:
    """Labelled evaluation mask from an ASAP XML rasterised at downsample 32.

    Args:
      path: ASAP XML annotation file.
      dimensions_xy: level-0 ``(width, height)`` of the slide.
    """
    return evaluation_mask(tumour_mask_from_xml(path, dimensions_xy), mpp=mpp)


def tumour_mask_from_xml(path: str | os.PathLike, dimensions_xy: tuple[int, int]) -> np.ndarray:
    """Level-5 uint8 tumour mask (255 tumour) of an ASAP XML file."""
    from pfascannet.slide import annotations  # noqa: PLC0415

    return annotations.rasterize(annotations.read_asap_xml(path), dimensions_xy,
                                 downsample=EVAL_DOWNSAMPLE)


# ----------------------------------------------------------------------------
# Detections and per-slide counting.


def read_detections_csv(path: str | os.PathLike) -> np.ndarray:
    """Reads a Camelyon16 lesion CSV: rows ``confidence,X,Y`` (level-0 px), no header.

    A header line whose first field is not a number is tolerated and skipped.

    Returns:
      float64 ``[n, 3]`` array of (confidence, X, Y).
    """
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not any(c.strip() for c in row):
                continue
            try:
                values = [float(c) for c in row[:3]]
            except ValueError:
                if lineno == 1 and not rows:
                    continue  # a header
                raise FrocError(f"{path}:{lineno}: expected `confidence,X,Y` numbers, got {','.join(row)!r}") from None
            if len(values) != 3 or not np.all(np.isfinite(values)):
                raise FrocError(f"{path}:{lineno}: expected three finite numbers `confidence,X,Y`, got {','.join(row)!r}")
            rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


@dataclasses.dataclass
class SlideResult:
    """Per-slide outcome of the hit counting.

    Attributes:
      name: slide id.
      fp_probs: probabilities of the false positives.
      tp_probs: per counted lesion (non-ITC label, ascending), its highest hit
        probability, 0 if missed.
      lesion_labels: evaluation-mask label of each entry of ``tp_probs``.
      lesion_classes: size class of each counted lesion (``itc``/``micro``/``macro``).
      n_ignored: hits on ITC regions plus repeated hits on a lesion.
      n_itc: ITC regions on the slide. The organisers keep a TP probability
        of 0 for each of them, which puts 0 among the distinct probabilities
        (and so decides which probability is "the lowest").
    """

    name: str
    fp_probs: np.ndarray
    tp_probs: np.ndarray
    lesion_labels: list[int]
    lesion_classes: list[str]
    n_ignored: int = 0
    n_itc: int = 0

    @property
    def n_lesions(self) -> int:
        return len(self.tp_probs)


def score_slide(name: str, detections: np.ndarray, labels: Optional[np.ndarray],
                itc: Iterable[int] = (), classes: Optional[Mapping[int, str]] = None,
                downsample: int = EVAL_DOWNSAMPLE) -> SlideResult:
    """Counts TPs and FPs of one slide by the organisers' rules.

    Args:
      name: slide id (for messages).
      detections: ``[n, 3]`` (confidence, X, Y) in level-0 px.
      labels: labelled evaluation mask of a tumour slide, or ``None`` for a
        normal slide (every detection is then a FP).
      itc: labels of ITC regions (hits ignored, not counted as lesions).
      classes: size class per label; labels without one are ``"unknown"``.
      downsample: level-0 px per evaluation-mask pixel.

    Raises:
      FrocError: a detection outside the mask.
    """
    detections = np.asarray(detections, dtype=np.float64).reshape(-1, 3)
    probs = detections[:, 0]
    if labels is None:
        return SlideResult(name, probs.copy(), np.zeros(0), [], [], 0)
    itc = set(int(i) for i in itc)
    n_labels = int(labels.max()) if labels.size else 0
    lesion_labels = [lab for lab in range(1, n_labels + 1) if lab not in itc]
    best = np.zeros(n_labels + 1, dtype=np.float64)
    hit = np.zeros(n_labels + 1, dtype=bool)
    fps, n_ignored = [], 0
    rows = np.floor_divide(detections[:, 2].astype(np.int64), downsample)
    cols = np.floor_divide(detections[:, 1].astype(np.int64), downsample)
    for p, r, c, x, y in zip(probs, rows, cols, detections[:, 1], detections[:, 2]):
        if not (0 <= r < labels.shape[0] and 0 <= c < labels.shape[1]):
            raise FrocError(f"slide {name}: detection at level-0 (X={x:g}, Y={y:g}) lies outside "
                            f"the {labels.shape[1]}x{labels.shape[0]} level-5 mask")
        lab = int(labels[r, c])
        if lab == 0:
            fps.append(p)
        elif lab in itc:
            n_ignored += 1
        else:
            n_ignored += int(hit[lab])
            hit[lab] = True
            # Strict '>' as the organisers: only the highest hit is kept.
            if p > best[lab]:
                best[lab] = p
    classes = classes or {}
    return SlideResult(name, np.asarray(fps, dtype=np.float64), best[lesion_labels],
                       lesion_labels, [classes.get(lab, "unknown") for lab in lesion_labels], n_ignored,
                       n_itc=sum(1 for lab in range(1, n_labels + 1) if lab in itc))


def classes_from_truth(labels: np.ndarray, lesions_xy_class: Sequence[tuple[float, float, str]],
                       downsample: int = EVAL_DOWNSAMPLE) -> dict[int, str]:
    """Size class per evaluation label from truth lesions (centre X, Y level-0 px, class).

    A region holding several truth lesions (merged by the growth) takes the
    largest class among them.
    """
    order = {c: i for i, c in enumerate(SIZE_CLASSES)}
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
# The FROC curve and the two scores.


def froc_curve(results: Sequence[SlideResult]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The organisers' FROC curve over slides.

    Returns:
      ``(avg_fps, sensitivity, thresholds)``: for each threshold (every
      distinct probability but the lowest, ascending) the FPs per slide
      (averaged over all slides) and the lesion sensitivity, then a closing
      point (0, 0) with threshold ``inf``. ``avg_fps`` is non-increasing.
    """
    if not results:
        raise FrocError("FROC needs at least one slide")
    n_lesions = sum(r.n_lesions for r in results)
    if n_lesions == 0:
        raise FrocError("FROC needs at least one (non-ITC) lesion among the slides")
    fps = np.concatenate([r.fp_probs for r in results])
    tps = np.concatenate([r.tp_probs for r in results])
    # The organisers' TP list has an entry per label of a tumour slide, ITC labels
    # included (always 0): those zeros join the distinct probabilities, so with an
    # ITC (or a missed lesion) "the lowest" dropped is 0, not the lowest detection.
    itc_zeros = np.zeros(int(sum(r.n_itc for r in results)))
    thresholds = np.unique(np.concatenate([fps, tps, itc_zeros]))[1:]
    # Counts of values >= t for all t at once (sorted search, exact like the loop).
    fps_sorted, tps_sorted = np.sort(fps), np.sort(tps)
    n_fp = len(fps_sorted) - np.searchsorted(fps_sorted, thresholds, side="left")
    n_tp = len(tps_sorted) - np.searchsorted(tps_sorted, thresholds, side="left")
    avg_fps = np.append(n_fp, 0) / float(len(results))
    sensitivity = np.append(n_tp, 0) / float(n_lesions)
    return avg_fps, sensitivity, np.append(thresholds, np.inf)


def froc_interpolated(avg_fps: np.ndarray, sensitivity: np.ndarray,
                      rates: Sequence[float] = FP_RATES) -> tuple[float, list[float]]:
    """The port's score: ``np.interp`` of the reversed curve at each FP rate, averaged."""
    at = np.interp(rates, np.asarray(avg_fps)[::-1], np.asarray(sensitivity)[::-1])
    return float(np.mean(at)), [float(v) for v in at]


def froc_nearest_point(avg_fps: np.ndarray, sensitivity: np.ndarray,
                       rates: Sequence[float] = FP_RATES) -> tuple[float, list[float]]:
    """The organisers' grading: per rate, the first reversed-curve point with FPs >= rate."""
    fps_r = list(np.asarray(avg_fps, dtype=np.float64)[::-1])
    sens_r = list(np.asarray(sensitivity, dtype=np.float64)[::-1])
    at = [sens_r[min(bisect.bisect_left(fps_r, r), len(sens_r) - 1)] for r in rates]
    return float(np.mean(at)), [float(v) for v in at]


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
    """Both FROC scores, the curve, per-class sensitivity and bootstrap CIs.

    The bootstrap resamples slides with replacement (``np.random.default_rng(seed)``);
    replicates that draw no lesion have no sensitivity: they are skipped and counted.

    Returns:
      A JSON-ready dict; ``score_names`` says which FROC score is which.
    """
    avg_fps, sens, thr = froc_curve(results)
    interp, interp_at = froc_interpolated(avg_fps, sens)
    nearest, nearest_at = froc_nearest_point(avg_fps, sens)
    report = {
        "froc_interpolated": interp,
        "froc_nearest_point": nearest,
        "score_names": dict(SCORE_NAMES),
        "fp_rates": list(FP_RATES),
        "sensitivity_at_rates_interpolated": interp_at,
        "sensitivity_at_rates_nearest_point": nearest_at,
        "n_slides": len(results),
        "n_lesions": int(sum(r.n_lesions for r in results)),
        "n_false_positives": int(sum(len(r.fp_probs) for r in results)),
        "n_ignored_hits": int(sum(r.n_ignored for r in results)),
        "curve": {"avg_fps": avg_fps.tolist(), "sensitivity": sens.tolist(),
                  "thresholds": [float(t) if np.isfinite(t) else None for t in thr]},
        "class_threshold": class_threshold,
        "sensitivity_by_class": class_sensitivity(results, class_threshold),
    }
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        boots = {"froc_interpolated": [], "froc_nearest_point": []}
        skipped = 0
        for _ in range(n_bootstrap):
            sample = [results[i] for i in rng.integers(0, len(results), len(results))]
            if not sum(r.n_lesions for r in sample):
                skipped += 1
                continue
            f, s, _ = froc_curve(sample)
            boots["froc_interpolated"].append(froc_interpolated(f, s)[0])
            boots["froc_nearest_point"].append(froc_nearest_point(f, s)[0])
        lo, hi = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
        report["bootstrap"] = {"n": n_bootstrap, "seed": seed, "ci": ci,
                               "skipped_without_lesions": skipped}
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
        title += "\n" + ", ".join(f"{k} = {v:.3f}" for k, v in scores.items())
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with io_utils.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------
# Whole submissions: a folder of lesion CSVs against masks or XML annotations.


def read_truth_lesions(path: str | os.PathLike) -> dict[str, list[tuple[float, float, str]]]:
    """Reads the cohort's ``lesions.csv`` (``slide,lesion_id,class,centre_x,centre_y,...``).

    Returns:
      {slide: [(centre X, centre Y, class)]} in level-0 px.
    """
    out: dict[str, list[tuple[float, float, str]]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = {"slide", "class", "centre_x", "centre_y"}
        if not reader.fieldnames or need - set(reader.fieldnames):
            raise FrocError(f"{path}: needs columns {sorted(need)}, got {reader.fieldnames}")
        for lineno, row in enumerate(reader, start=2):
            cls = row["class"].strip().lower()
            if cls not in SIZE_CLASSES:
                raise FrocError(f"{path}:{lineno}: lesion class {row['class']!r} is not one of {SIZE_CLASSES}")
            try:
                x, y = float(row["centre_x"]), float(row["centre_y"])
            except ValueError:
                raise FrocError(f"{path}:{lineno}: centre_x/centre_y must be numbers") from None
            out.setdefault(row["slide"].strip(), []).append((x, y, cls))
    return out


def _find(directory: str, names: Sequence[str]) -> Optional[str]:
    """First of ``names`` in ``directory``; case-insensitive as a fallback, since
    Camelyon16 files circulate as ``Test_001_Mask.tif`` as well as ``test_001_mask.tif``."""
    for name in names:
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    if not os.path.isdir(directory):
        raise FrocError(f"{directory}: not a folder")
    by_lower = {f.lower(): f for f in sorted(os.listdir(directory))}
    for name in names:
        if name.lower() in by_lower:
            return os.path.join(directory, by_lower[name.lower()])
    return None


def slide_tumour_mask(slide: str, masks_dir: Optional[str] = None,
                      annotations_dir: Optional[str] = None,
                      dimensions_xy: Optional[tuple[int, int]] = None,
                      images_dir: Optional[str] = None) -> np.ndarray:
    """Level-5 tumour mask (255 tumour) of a tumour slide, from its mask TIFF or ASAP XML.

    Looks for ``<masks_dir>/<slide>_mask.tif`` (or ``<slide>.tif``) first, then
    ``<annotations_dir>/<slide>.xml`` rasterised at downsample 32 with the
    slide's level-0 size from ``dimensions_xy`` or from ``<images_dir>/<slide>.tif``.
    """
    from pfascannet.slide import annotations  # noqa: PLC0415

    if masks_dir:
        path = _find(masks_dir, [f"{slide}_mask.tif", f"{slide}_mask.tiff", f"{slide}.tif", f"{slide}.tiff"])
        if path:
            return annotations.read_mask_level(path, downsample=EVAL_DOWNSAMPLE)
    if annotations_dir:
        path = _find(annotations_dir, [f"{slide}.xml"])
        if path:
            if dimensions_xy is None and images_dir:
                from pfascannet.slide.reader import SlideReader  # noqa: PLC0415

                image = _find(images_dir, [f"{slide}.tif", f"{slide}.tiff", f"{slide}.svs"])
                if image:
                    with SlideReader(image) as reader:
                        dimensions_xy = tuple(reader.dimensions)
            if dimensions_xy is None:
                raise FrocError(f"slide {slide}: rasterising {path} needs the slide's level-0 size; "
                                f"give a reference with width,height or the images folder")
            return tumour_mask_from_xml(path, dimensions_xy)
    where = " or ".join(d for d in (masks_dir, annotations_dir) if d) or "(no masks or annotations folder given)"
    raise FrocError(f"tumour slide {slide}: no mask `{slide}_mask.tif` or annotation `{slide}.xml` in {where}")


def score_submission(lesions_dir: str, reference: Mapping[str, object],
                     masks_dir: Optional[str] = None, annotations_dir: Optional[str] = None,
                     images_dir: Optional[str] = None,
                     truth_lesions: Optional[Mapping[str, list]] = None,
                     allow_missing: bool = False, mpp: float = LEVEL0_MPP) -> list[SlideResult]:
    """Per-slide results of a folder of Camelyon16 lesion CSVs (``<slide>.csv``).

    Args:
      lesions_dir: folder of ``confidence,X,Y`` CSVs, one per slide.
      reference: {slide: SlideRef} (``evaluation.reference``); the slides scored.
      masks_dir, annotations_dir, images_dir: where tumour slides' truth is.
      truth_lesions: {slide: [(X, Y, class)]} for per-class sensitivity;
        without it a lesion's class is measured from the ungrown mask.
      allow_missing: a slide without a CSV has no detections (else an error,
        as the organisers' script requires a file per slide).
      mpp: level-0 pixel size for the growth and ITC limits (0.243).
    """
    results = []
    for slide in sorted(reference):
        ref = reference[slide]
        csv_path = _find(lesions_dir, [f"{slide}.csv"])
        if csv_path:
            detections = read_detections_csv(csv_path)
        elif allow_missing:
            detections = np.zeros((0, 3))
        else:
            raise FrocError(f"no lesion CSV for slide {slide} in {lesions_dir} (expected {slide}.csv; "
                            f"allow_missing scores it as empty)")
        if not getattr(ref, "tumour"):
            results.append(score_slide(slide, detections, None))
            continue
        mask = slide_tumour_mask(slide, masks_dir, annotations_dir,
                                 getattr(ref, "dimensions_xy", None), images_dir)
        labels = evaluation_mask(mask, mpp=mpp)
        itc = itc_labels(labels, mpp=mpp)
        if truth_lesions is not None:
            classes = classes_from_truth(labels, truth_lesions.get(slide, []))
        else:
            classes = {lab: size_class(um) for lab, um in lesion_sizes_um(labels, mask, mpp).items()}
        results.append(score_slide(slide, detections, labels, itc, classes))
    return results
