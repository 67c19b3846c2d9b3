"""Lesion geometry of the synthetic cohort: classes, sizes and blob polygons.

Camelyon17 (``shared/DESIGN.md`` section 3) classes a metastasis by its
longest diameter: isolated tumour cells (ITC) <= 0.2 mm, micro-metastasis
above that up to 2 mm, macro-metastasis > 2 mm (``pfascannet.camelyon.node_class``,
the one statement of the rule).  The generator draws each lesion's size
well inside its class (away from the thresholds) so that both the
longest diameter and the moment-based major axis that the Camelyon16
evaluation uses (skimage's ``major_axis_length``) land in the same class.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from pfascannet.camelyon import METASTASIS_CLASSES
from pfascannet.errors import PfaError

# Sizes the generator draws (major axis, um), inside each class with margins
# so that measurement differences (moments vs. longest diameter, rasterising
# at level 5, JPEG) never move a lesion across a threshold.
ITC_RANGE_UM = (40.0, 150.0)
MICRO_RANGE_UM = (300.0, 1700.0)
MACRO_RANGE_UM = (2150.0, 2450.0)


class LesionError(PfaError, ValueError):
    """A lesion that cannot be drawn as asked (size, class)."""


def class_range_um(cls: str, max_um: Optional[float] = None) -> tuple[float, float]:
    """The major-axis range (um) the generator draws for ``cls``, capped at ``max_um``.

    Raises:
      LesionError: unknown class, or a cap that leaves no room in the class.
    """
    ranges = {"itc": ITC_RANGE_UM, "micro": MICRO_RANGE_UM, "macro": MACRO_RANGE_UM}
    if cls not in ranges:
        raise LesionError(f"lesion class must be one of {METASTASIS_CLASSES}, got {cls!r}")
    lo, hi = ranges[cls]
    if max_um is not None:
        hi = min(hi, max_um)
    if hi < lo:
        raise LesionError(
            f"a {cls} lesion needs a major axis of at least {lo:.0f} um but the slide only "
            f"leaves room for {hi:.0f} um; use a larger slide_size"
        )
    return lo, hi


def polygon_moments(coords_xy: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Area, centroid ``(x, y)`` and 2x2 covariance of a filled simple polygon (Green's theorem)."""
    x, y = coords_xy[:, 0].astype(np.float64), coords_xy[:, 1].astype(np.float64)
    # Centre first: the moment sums then do not lose precision at large offsets.
    ox, oy = x.mean(), y.mean()
    x, y = x - ox, y - oy
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    area = cross.sum() / 2.0
    if abs(area) < 1e-9:
        raise LesionError("degenerate polygon (zero area)")
    cx = ((x + x1) * cross).sum() / (6.0 * area)
    cy = ((y + y1) * cross).sum() / (6.0 * area)
    sxx = ((x * x + x * x1 + x1 * x1) * cross).sum() / (12.0 * area)
    syy = ((y * y + y * y1 + y1 * y1) * cross).sum() / (12.0 * area)
    sxy = ((x * y1 + 2 * x * y + 2 * x1 * y1 + x1 * y) * cross).sum() / (24.0 * area)
    cov = np.array([[sxx - cx * cx, sxy - cx * cy], [sxy - cx * cy, syy - cy * cy]])
    return abs(area), np.array([cx + ox, cy + oy]), cov


def major_axis_px(coords_xy: np.ndarray) -> float:
    """Major axis of the polygon's moment ellipse, ``4 sqrt(lambda_max)``, as skimage defines it."""
    _, _, cov = polygon_moments(coords_xy)
    return float(4.0 * math.sqrt(max(np.linalg.eigvalsh(cov)[-1], 0.0)))


def longest_diameter_px(coords_xy: np.ndarray) -> float:
    """Largest distance between two vertices (Camelyon17's "longest diameter")."""
    d = coords_xy[:, None, :] - coords_xy[None, :, :]
    return float(np.sqrt((d**2).sum(-1)).max())


def blob_polygon(
    rng: np.random.Generator,
    centre_xy: tuple[float, float],
    major_px: float,
    *,
    aspect: float = 1.0,
    angle_rad: float = 0.0,
    roughness: float = 0.08,
    vertices: int = 96,
) -> np.ndarray:
    """A smooth irregular closed polygon whose moment major axis is exactly ``major_px``.

    The outline is an ellipse of the given aspect (minor / major) whose radius
    is modulated by a few random low harmonics (amplitude ~``roughness``), as
    tumour nests and tissue sections look at low power.

    Returns:
      float64 ``(vertices, 2)`` level-0 ``(x, y)``, counter-clockwise.
    """
    theta = np.linspace(0.0, 2 * math.pi, vertices, endpoint=False)
    radius = np.ones_like(theta)
    for k in range(2, 7):
        radius += roughness / (k - 1) ** 0.7 * rng.uniform(-1, 1) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    radius = np.clip(radius, 0.4, None)
    x = radius * np.cos(theta)
    y = aspect * radius * np.sin(theta)
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    pts = np.stack([c * x - s * y, s * x + c * y], axis=1)
    _, centroid, _ = polygon_moments(pts)
    pts -= centroid
    pts *= major_px / major_axis_px(pts)
    return pts + np.asarray(centre_xy, dtype=np.float64)
