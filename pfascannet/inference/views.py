"""Candidate views: each lesion candidate scored again under the patch's rotations and mirror images.

A lesion candidate is a local maximum of the map (``lesions.local_maxima``).
Picked as the highest cell of its neighbourhood, its value is biased upward
wherever the map is noisy: on a germinal centre or a sinus full of
histiocytes, one orientation of the 692 px patch can score 0.55 where the
others score 0.1-0.3.  A tumour focus scores high in every orientation.  So
the scanner scores each candidate at or above ``VIEWS_FLOOR`` again as the
mean of the patch classifier (the detector's own weights at alpha 1,
``predict_patches``; exactly the map's value in the identity view) over the
patch's ``views`` orientations, and writes that mean as the candidate's
confidence: test-time augmentation over the dihedral group, as Liu et al.
(2017) averaged their Camelyon16 maps over 8 rotations and flips, but spent
only where a candidate is, so it costs seconds per slide rather than 8 maps.
The candidates are still found on the map, at the same cells; the map, its
heatmap and contours are the single view.

``views``: 1 (off: the map's value), 2 (plus the mirror image), 4 (plus the
vertical mirror and the half turn) or 8 (every rotation by 90 degrees, each
mirrored); each set is a group, so the mean does not prefer an orientation.
An ensemble's candidate is the mean over its members, each member's the mean
over its map cells inside the candidate's cell (as ``ensemble_maps`` pools).

Where it is computed: in the map step (``engine._make_map``), where the
model and the slide are at hand; the re-scored cells go into the map's
sidecar (``candidate_views``) and the views setting into the map's
fingerprint, so post-processing (``postprocess``) never calls the model and
a threshold change keeps them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from pfascannet import geometry
from pfascannet.inference import lesions as lesions_lib
from pfascannet.inference import model_run
from pfascannet.inference.scan_settings import VIEW_CHOICES, ScanError

VIEWS_FLOOR = 0.2
"""Candidates at or above this map value are scored under the views; lower ones keep the map's value.
On the held-out cohorts of BENCHMARKS.md the views moved a candidate up by at most 0.15, so one below
0.2 stays far below every reported threshold (0.5), and the floor bounds the cost on noisy maps."""


def orientations(patch: np.ndarray, views: int) -> list[np.ndarray]:
    """The ``views`` orientations of an ``[H, W, C]`` patch (``VIEW_CHOICES``), the patch itself first."""
    if views not in VIEW_CHOICES:
        raise ScanError(f"candidate views must be one of {VIEW_CHOICES}, got {views}")
    mirror = patch[:, ::-1]
    group = [patch, mirror, patch[::-1], patch[::-1, ::-1]]  # identity, mirror, vertical mirror, half turn
    quarter = np.rot90(patch)
    group += [quarter, quarter[:, ::-1], quarter[::-1], quarter[::-1, ::-1]]
    return group[:views]


def record(views: int) -> Optional[dict]:
    """What a map made with ``views`` records in its fingerprint (None for 1: maps made before it stay valid)."""
    if views == 1:
        return None
    return {"views": int(views), "floor": VIEWS_FLOOR, "candidates": dict(lesions_lib.CANDIDATE_RULE)}


def member_classifier(run):
    """The member's patch classifier (``model_run.patch_classifier``), or a ScanError naming the setting."""
    classify = model_run.patch_classifier(run.detector)
    if classify is None:
        raise ScanError(f"{run.name}: the candidate views need the detector's patch classifier (predict_patches), "
                        "which this detector lacks; scan with --candidate_views=1")
    return classify


def score_candidates(reader, runs: Sequence, plans: Sequence, prob_map: np.ndarray, stride_px: int,
                     views: int, mpp: Optional[float], patch_batch: int) -> dict:
    """The views' mean at every candidate cell >= ``VIEWS_FLOOR`` of an (ensemble) map (``views`` > 1).

    Args:
      reader: the slide, open.
      runs, plans: the map's members and their ROI plans (read plans and grids).
      prob_map: the (ensemble) map on the coarsest member's grid, ``stride_px`` level-0 px per cell.
      views: ``VIEW_CHOICES``.
      mpp: level-0 um/px (the candidate rule's reach).
      patch_batch: patches per model call.

    Returns:
      ``{"views", "floor", "cells": [[row, col, map value, views' mean], ...]}``.
    """
    rr, cc, values = lesions_lib.local_maxima(prob_map, stride_px, mpp=mpp)
    keep = values >= VIEWS_FLOOR
    rr, cc, values = rr[keep], cc[keep], values[keep]
    total = np.zeros(len(rr), np.float64)
    for run, plan in zip(runs, plans):
        classify = member_classifier(run)
        factor = stride_px // plan.stride_px
        rows, cols = plan.map_shape
        model_stride = plan.geometry.stride_px
        origin = geometry.map_origin_px(plan.geometry.alpha)
        # The member's cells inside each candidate's cell (``ensemble.pool_to_stride`` averages them).
        cells = [[(r, c) for r in range(R * factor, min((R + 1) * factor, rows))
                  for c in range(C * factor, min((C + 1) * factor, cols))] for R, C in zip(rr, cc)]
        flat = [(k, r, c) for k, member_cells in enumerate(cells) for r, c in member_cells]
        sums = np.zeros(len(rr), np.float64)
        per_batch = max(1, patch_batch // views)
        for s in range(0, len(flat), per_batch):
            chunk = flat[s:s + per_batch]
            batch = np.stack([o for _, r, c in chunk for o in orientations(
                plan.read.read(reader, (c * model_stride - origin, r * model_stride - origin), geometry.PATCH_PX),
                views)])
            probs = classify(batch).reshape(len(chunk), views).mean(axis=1)
            for (k, _, _), p in zip(chunk, probs):
                sums[k] += p
        total += sums / np.maximum([len(m) for m in cells], 1)
    scores = total / len(runs)
    return {
        "views": int(views), "floor": VIEWS_FLOOR,
        "cells": [[int(r), int(c), round(float(v), 6), round(float(p), 6)] for r, c, v, p in zip(rr, cc, values, scores)],
    }


def rescored_cells(meta: dict) -> dict:
    """The sidecar's re-scored candidates as ``{(row, col): confidence}`` (empty without views)."""
    found = (meta or {}).get("candidate_views") or {}
    return {(int(r), int(c)): float(p) for r, c, _, p in found.get("cells", [])}
