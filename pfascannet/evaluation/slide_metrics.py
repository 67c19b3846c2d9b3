"""Camelyon16 slide-level classification: ROC AUC with a bootstrap CI, ROC plot.

Zhao et al. (MICCAI 2019), section 3 and Table 1 ("AUC"): each slide gets one
tumour probability (``name,probability`` CSV, ``ARCHITECTURE.md``); the AUC
is sklearn's ``roc_auc_score`` against the slides' tumour/normal truth.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from pfascannet import camelyon_files, io_utils
from pfascannet.errors import PfaError


class SlideMetricsError(PfaError, ValueError):
    """Bad slide scores or references for the slide-level AUC."""


def read_slide_scores(path: str | os.PathLike) -> dict[str, float]:
    """A ``name,probability`` CSV (``camelyon_files.read_slide_scores``: {slide id: probability}), or
    ``SlideMetricsError`` naming the file and line of the first bad line."""
    return camelyon_files.read_slide_scores(path, SlideMetricsError)


def auc_with_ci(labels: Sequence[int], scores: Sequence[float], n_bootstrap: int = 1000,
                seed: int = 0, ci: float = 0.95) -> dict:
    """ROC AUC and a percentile bootstrap CI over slides.

    Args:
      labels: 1 tumour slide, 0 normal.
      scores: tumour probability per slide.
      n_bootstrap: resamples (slides drawn with replacement); replicates with
        one class only are skipped and counted.
      seed: ``np.random.default_rng`` seed.
      ci: coverage of the interval.

    Returns:
      ``{"auc", "auc_ci": [lo, hi] or None, "n_slides", "n_tumour", "n_normal", "bootstrap"}``.
    """
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise SlideMetricsError(f"labels and scores must be equal-length lists, got {y.shape} and {s.shape}")
    if set(np.unique(y)) - {0, 1}:
        raise SlideMetricsError(f"slide labels must be 0 (normal) or 1 (tumour), got {sorted(set(y.tolist()))}")
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if not n_pos or not n_neg:
        raise SlideMetricsError(f"AUC needs tumour and normal slides, got {n_pos} tumour and {n_neg} normal")
    out = {"auc": float(roc_auc_score(y, s)), "n_slides": int(len(y)),
           "n_tumour": n_pos, "n_normal": n_neg, "auc_ci": None}
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        vals, skipped = [], 0
        for _ in range(n_bootstrap):
            idx = rng.integers(0, len(y), len(y))
            if y[idx].min() == y[idx].max():
                skipped += 1
                continue
            vals.append(roc_auc_score(y[idx], s[idx]))
        lo, hi = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
        out["auc_ci"] = [float(np.percentile(vals, lo)), float(np.percentile(vals, hi))] if vals else None
        out["bootstrap"] = {"n": n_bootstrap, "seed": seed, "ci": ci, "skipped_one_class": skipped}
    return out


def match_scores(reference: Mapping[str, int], scores: Mapping[str, float],
                 missing_score: Optional[float] = None, *, known_slides: Optional[Iterable[str]] = None,
                 ignore_extra: bool = False, source: Optional[str] = None
                 ) -> tuple[list[str], list[int], list[float]]:
    """Aligns slide scores to a reference {slide: 0/1}; slide ids match in any case.

    A reference slide without a score is an error unless ``missing_score``
    is given (e.g. 0.0: a method that skipped a slide called it normal).  A
    score for a slide outside ``known_slides`` (default: ``reference``; pass
    the whole reference file when ``reference`` is one split of it) is an
    error unless ``ignore_extra``: it is a typo or a wrong reference, not a
    slide to drop silently.

    Args:
      source: where the scores came from (a file or folder), named in errors.
    """
    where = f"{source}: " if source else ""
    names = sorted(reference)
    # Slide ids match in any case (datasets.slide_key): CAMELYON16's reference.csv says
    # Test_001 where the download names the slide test_001.tif.
    by_key: dict[str, str] = {}
    for n in scores:
        k = n.casefold()
        if k in by_key:
            raise SlideMetricsError(f"{where}slides {by_key[k]!r} and {n!r} differ only in case: one slide, two scores")
        by_key[k] = n
    missing = [n for n in names if n.casefold() not in by_key]
    if missing and missing_score is None:
        raise SlideMetricsError(f"{where}no score for {len(missing)} reference slide(s), e.g. {missing[:3]}")
    known = {n.casefold() for n in (reference if known_slides is None else known_slides)}
    extra = sorted(n for n in scores if n.casefold() not in known)
    if extra and not ignore_extra:
        raise SlideMetricsError(f"{where}score for {len(extra)} slide(s) not in the reference, e.g. {extra[:3]}; "
                                f"fix the names or ignore such rows explicitly (--ignore_extra)")
    return (names, [int(reference[n]) for n in names],
            [float(scores[by_key[n.casefold()]]) if n.casefold() in by_key else float(missing_score)
             for n in names])


def plot_roc(path: str | os.PathLike, labels: Sequence[int], scores: Sequence[float],
             title: str = "Slide-level ROC") -> None:
    """Writes the ROC curve as a PNG atomically (matplotlib Agg)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(fpr, tpr, color="black", label=f"AUC = {roc_auc_score(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], color="0.7", ls="--", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (normal slides)")
    ax.set_ylabel("true positive rate (tumour slides)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with io_utils.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
