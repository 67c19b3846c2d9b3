"""Lesion candidates, contours and a slide score from a probability map.

Camelyon16's lesion-level task (Zhao et al., MICCAI 2019, §3, FROC) takes one
CSV per slide of ``confidence,X,Y`` points in level-0 pixels.

Candidates come from non-maximum suppression (NMS), not connected components.
Why: the FROC sweeps every confidence, so a candidate list must carry
low-confidence points and several points where two lesions touch; a connected
component at a fixed threshold merges touching lesions into one point (a lost
true positive) and loses everything under its threshold, while extra NMS points
on an already-hit lesion cost nothing (the FROC ignores repeated hits on a
lesion).  This is NCRF's choice too (Li & Ping 2018: greedy maximum, suppress a
disk, repeat).  Contours for viewers, on the other hand, are the connected
components of the map at a threshold, which is what a pathologist wants to see
outlined.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

CAMELYON_MPP = 0.243
"""Level-0 pixel size the Camelyon scripts assume when a slide carries none."""

DEFAULT_NMS_RADIUS_UM = 187.0
"""NCRF's suppression radius: 12 px at level 6 of a 0.243 um/px slide."""


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One candidate: probability and level-0 ``(x, y)`` of its map cell's centre."""

    confidence: float
    x: int
    y: int


def cell_centre_px(index: np.ndarray, stride_px: int) -> np.ndarray:
    """Level-0 pixel at the centre of map cell ``index`` (cell covers [S i, S (i + 1)))."""
    return np.asarray(index, np.int64) * stride_px + stride_px // 2


def nms_lesions(
    prob_map: np.ndarray,
    stride_px: int,
    threshold: float = 0.5,
    radius_um: float = DEFAULT_NMS_RADIUS_UM,
    mpp: Optional[float] = None,
    max_lesions: int = 10000,
) -> list[Lesion]:
    """Greedy NMS on the map: take the maximum, suppress a disk around it, repeat.

    Exactly the iterative ``argmax``-then-zero-a-disk of NCRF, computed over
    the pixels at or above ``threshold`` only (so a mostly empty 64k map costs
    little).  Ties break by row-major order.

    Args:
      prob_map: float ``[rows, cols]`` tumour probability.
      stride_px: level-0 pixels per map pixel.
      threshold: candidates below this are not reported.
      radius_um: suppression radius in microns.
      mpp: level-0 microns per pixel (None: Camelyon's 0.243).
      max_lesions: stop after this many.

    Returns:
      Lesions, by decreasing confidence.
    """
    prob_map = np.asarray(prob_map, np.float32)
    mpp = CAMELYON_MPP if mpp is None else float(mpp)
    radius_map_px = radius_um / (mpp * stride_px)
    rr, cc = np.nonzero(prob_map >= threshold)
    values = prob_map[rr, cc]
    order = np.argsort(-values, kind="stable")
    rr, cc, values = rr[order], cc[order], values[order]
    alive = np.ones(values.shape[0], bool)
    out: list[Lesion] = []
    r2 = radius_map_px**2
    start = 0
    while len(out) < max_lesions:
        idx = np.flatnonzero(alive[start:])
        if idx.size == 0:
            break
        k = start + int(idx[0])
        start = k + 1
        r, c = int(rr[k]), int(cc[k])
        out.append(Lesion(float(values[k]), int(cell_centre_px(c, stride_px)), int(cell_centre_px(r, stride_px))))
        near = (rr - r) ** 2 + (cc - c) ** 2 <= r2
        alive &= ~near
    return out


@dataclasses.dataclass(frozen=True)
class Contour:
    """A lesion outline in level-0 pixels: an outer ring and its holes (each ``[M, 2]`` xy, closed)."""

    outer: np.ndarray
    holes: tuple[np.ndarray, ...]
    max_probability: float
    area_px: int


def lesion_contours(prob_map: np.ndarray, stride_px: int, threshold: float = 0.5) -> list[Contour]:
    """Outlines of the connected regions (8-connectivity) where the map is >= ``threshold``.

    The rings run along the outer edges of the map cells (not through their
    centres), so a one-cell region is a square of side ``stride_px`` and the
    outline encloses exactly the level-0 area the map says is tumour.

    Args:
      prob_map: float ``[rows, cols]``.
      stride_px: level-0 pixels per map pixel.
      threshold: probability at or above which a cell is tumour.

    Returns:
      Contours by decreasing maximum probability.
    """
    import cv2  # noqa: PLC0415

    prob_map = np.asarray(prob_map, np.float32)
    mask = (prob_map >= threshold).astype(np.uint8)
    if not mask.any():
        return []
    from scipy import ndimage  # noqa: PLC0415

    n_labels, labels = cv2.connectedComponents(mask, connectivity=8)
    out = []
    for label in range(1, n_labels):
        region = labels == label
        rows, cols = np.nonzero(region)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        sub = region[r0:r1, c0:c1]
        # Holes are the background cells the region encloses (4-connected
        # among themselves, since the region is 8-connected).
        hole_cells = ndimage.binary_fill_holes(sub) & ~sub
        hole_labels, n_holes = ndimage.label(hole_cells)
        holes = tuple(_outer_ring(hole_labels == h, r0, c0, stride_px) for h in range(1, n_holes + 1))
        out.append(
            Contour(
                _outer_ring(sub, r0, c0, stride_px),
                holes,
                float(prob_map[region].max()),
                int(region.sum()) * stride_px**2,
            )
        )
    out.sort(key=lambda c: -c.max_probability)
    return out


def _outer_ring(cells: np.ndarray, r0: int, c0: int, stride_px: int) -> np.ndarray:
    """The closed level-0 ring along the outer cell edges of one connected set of map cells.

    cv2 traces pixel centres; to follow cell edges we trace the 'corner
    lattice' instead: corner (a, b), at level-0 (S b, S a), is set when any of
    its four cells is set, and its outer boundary runs along the cells' edges.
    """
    import cv2  # noqa: PLC0415

    padded = np.pad(cells, 1)
    corners = padded[:-1, :-1] | padded[1:, :-1] | padded[:-1, 1:] | padded[1:, 1:]
    contours, _ = cv2.findContours(corners.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    ring = max(contours, key=len)[:, 0, :].astype(np.int64)
    xy = (ring + np.array([c0, r0])) * stride_px
    return np.concatenate([xy, xy[:1]], axis=0)  # closed, as GeoJSON wants


def slide_score(prob_map: np.ndarray) -> float:
    """The slide-level tumour probability: the map's maximum (Camelyon16 slide AUC).

    The maximum is the usual first-order score; the random-forest features of
    ``evaluation.features`` refine it for pN-staging.
    """
    prob_map = np.asarray(prob_map)
    return float(prob_map.max()) if prob_map.size else 0.0
