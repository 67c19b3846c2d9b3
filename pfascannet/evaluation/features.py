"""Per-slide morphological features of a tumour probability map (section 2.4, step 3).

Zhao et al. (MICCAI 2019): "Morphological features (i.e., major axis length
and metastasis area) are extracted from the probability maps to formulate
feature vectors" for the random forest that classifies each node as
negative / ITC / micro / macro. Those classes are defined by the largest
metastasis' longest diameter (ITC < 0.2 mm, micro 0.2-2 mm, macro > 2 mm),
so the features describe the largest regions in physical units at several
probability thresholds.

A map comes from a scan as ``maps/<slide>.npy`` (float32 ``[rows, cols]``
tumour probability) beside ``maps/<slide>.json`` whose ``stride_px`` (level-0
px per map pixel) and ``mpp`` (um per level-0 px) give the map's
``um_per_px = stride_px * mpp`` (``ARCHITECTURE.md``, "Files between stages").
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np
from skimage import measure

from pfascannet import io_utils
from pfascannet.camelyon import major_axis_length
from pfascannet.errors import PfaError
from pfascannet.evaluation import csv_rows

THRESHOLDS = (0.5, 0.7, 0.9)
"""Probability thresholds at which regions are measured."""

_PER_THRESHOLD = ("n_regions", "total_area_mm2", "largest_area_mm2", "second_area_mm2",
                  "largest_major_axis_um", "longest_major_axis_um", "largest_mean_prob")


class FeatureError(PfaError, ValueError):
    """A probability map or its metadata that the features cannot be computed from."""


def feature_names(thresholds: Sequence[float] = THRESHOLDS) -> list[str]:
    """Names of the feature vector's entries, in order."""
    names = ["max_prob", "mean_prob", "p99_prob"]
    for t in thresholds:
        names += [f"{n}@{t:g}" for n in _PER_THRESHOLD]
    return names


def read_probability_map(npy_path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Loads ``<slide>.npy`` and its ``<slide>.json``; returns (map, metadata).

    Raises:
      FeatureError: unreadable map, wrong shape, or metadata without
        ``stride_px`` and ``mpp``.
    """
    npy_path = os.fspath(npy_path)
    json_path = os.path.splitext(npy_path)[0] + ".json"
    try:
        prob = np.load(npy_path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken .npy raises many kinds
        raise FeatureError(f"{npy_path}: cannot read probability map ({type(exc).__name__}: {exc})") from exc
    if prob.ndim != 2:
        raise FeatureError(f"{npy_path}: a probability map must be 2-D, got shape {prob.shape}")
    try:
        with open(json_path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise FeatureError(f"{json_path}: missing; a map needs its .json (stride_px, mpp)") from None
    except json.JSONDecodeError as exc:
        raise FeatureError(f"{json_path}: not valid JSON ({exc})") from None
    for key in ("stride_px", "mpp"):
        if not isinstance(meta.get(key), (int, float)) or not meta[key] > 0:
            raise FeatureError(f"{json_path}: needs a positive number `{key}`, got {meta.get(key)!r}")
    return prob.astype(np.float32, copy=False), meta


def um_per_map_px(meta: Mapping) -> float:
    """Micrometres per probability-map pixel: ``stride_px * mpp``."""
    return float(meta["stride_px"]) * float(meta["mpp"])


def slide_features(prob: np.ndarray, um_per_px: float,
                   thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
    """Morphological feature vector of one slide's probability map.

    For each threshold, regions are the 8-connected components of
    ``prob >= t``; "largest" is by area. The major axis is skimage's
    moment-based ``axis_major_length``, the same measure the Camelyon16
    evaluation uses for ITC; it is 0 for a single-pixel region.

    Args:
      prob: ``[rows, cols]`` tumour probability in [0, 1].
      um_per_px: micrometres per map pixel.
      thresholds: probability thresholds.

    Returns:
      {name: value} in the order of ``feature_names(thresholds)``.
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise FeatureError(f"a probability map must be 2-D, got shape {prob.shape}")
    if not um_per_px > 0:
        raise FeatureError(f"um_per_px must be positive, got {um_per_px}")
    finite = np.nan_to_num(prob, nan=0.0)
    mm2_per_px = (um_per_px / 1000.0) ** 2
    feats = {"max_prob": float(finite.max()) if finite.size else 0.0,
             "mean_prob": float(finite.mean()) if finite.size else 0.0,
             "p99_prob": float(np.percentile(finite, 99)) if finite.size else 0.0}
    for t in thresholds:
        labels = measure.label(finite >= t, connectivity=2)
        regions = sorted(measure.regionprops(labels, intensity_image=finite),
                         key=lambda r: r.area, reverse=True)
        areas = [float(r.area) * mm2_per_px for r in regions]
        axes = [major_axis_length(r) * um_per_px for r in regions]
        feats[f"n_regions@{t:g}"] = float(len(regions))
        feats[f"total_area_mm2@{t:g}"] = float(sum(areas))
        feats[f"largest_area_mm2@{t:g}"] = areas[0] if areas else 0.0
        feats[f"second_area_mm2@{t:g}"] = areas[1] if len(areas) > 1 else 0.0
        feats[f"largest_major_axis_um@{t:g}"] = axes[0] if axes else 0.0
        feats[f"longest_major_axis_um@{t:g}"] = max(axes) if axes else 0.0
        feats[f"largest_mean_prob@{t:g}"] = float(regions[0].intensity_mean) if regions else 0.0
    return {k: feats[k] for k in feature_names(thresholds)}


def features_from_map_file(npy_path: str | os.PathLike,
                           thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
    """``slide_features`` of a saved map, in physical units from its ``.json``."""
    prob, meta = read_probability_map(npy_path)
    return slide_features(prob, um_per_map_px(meta), thresholds)


def feature_matrix(features: Mapping[str, Mapping[str, float]], slides: Sequence[str],
                   thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray:
    """Stacks per-slide feature dicts into ``[len(slides), n_features]`` in ``feature_names`` order."""
    names = feature_names(thresholds)
    missing = [s for s in slides if s not in features]
    if missing:
        raise FeatureError(f"no features for {len(missing)} slide(s), e.g. {missing[:3]}")
    return np.asarray([[float(features[s][n]) for n in names] for s in slides],
                      dtype=np.float64).reshape(len(slides), len(names))


def write_features_csv(path: str | os.PathLike, features: Mapping[str, Mapping[str, float]],
                       thresholds: Sequence[float] = THRESHOLDS) -> None:
    """Writes ``slide,<feature names>`` rows atomically (the stage's inspectable output)."""
    names = feature_names(thresholds)
    lines = [",".join(["slide", *names])]
    for slide in sorted(features):
        lines.append(",".join([slide, *(repr(float(features[slide][n])) for n in names)]))
    io_utils.write_text(path, "\n".join(lines) + "\n")


def read_features_csv(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Reads a CSV written by ``write_features_csv``; a bad line is an error naming file and line."""
    rows = csv_rows.read_rows(path, FeatureError)
    if not rows or rows[0][0] != 1 or rows[0][1][:1] != ["slide"]:
        raise FeatureError(f"{path}: expected a first line (header) starting with `slide`")
    names = rows[0][1][1:]
    out = {}
    for lineno, row in rows[1:]:
        if len(row) != len(names) + 1:
            raise FeatureError(f"{path}:{lineno}: expected {len(names) + 1} fields, got {len(row)}")
        if not all(csv_rows.is_number(v) for v in row[1:]):
            raise FeatureError(f"{path}:{lineno}: feature values must be numbers, got {csv_rows.show(row)}")
        if row[0] in out:
            raise FeatureError(f"{path}:{lineno}: slide {row[0]!r} is listed twice")
        out[row[0]] = {n: float(v) for n, v in zip(names, row[1:])}
    return out
