"""A scan's settings (``ScanSettings``) and its error class.

``scan_level``, ``tissue``, ``tissue_downsample``, ``mpp`` and ``edge_rois``
decide which ROIs are scanned, so they are part of a map's fingerprint
(``engine.map_fingerprint``); ``threshold`` and ``heatmap`` only change what
post-processing derives from the map (``postprocess``); the rest are speed
knobs and where progress goes.

Each field is declared once (``pfascannet.settings.setting``: default, help,
check); ``pfascannet scan`` generates its flags from them, and
``postprocess.PostSettings`` holds ``threshold`` and ``heatmap`` as declared here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, TextIO

import numpy as np

from pfascannet.errors import PfaError
from pfascannet.settings import at_least, check_fields, probability, setting


STREAM_ROWS = 16
"""``stream_rows`` default: map rows per chunk of a streamed strip (512 input px at alpha 16)."""

STREAM_WIDTH = 256
"""``stream_width`` default: widest streamed strip in map pixels (8,852 input px at alpha 16)."""


class ScanError(PfaError):
    """Bad scan settings or inputs (slide list, shard, detector geometry)."""


TISSUE_CHOICES = ("otsu", "all")


def _tissue(value) -> Optional[str]:
    ok = (isinstance(value, str) and value in TISSUE_CHOICES) or (not isinstance(value, str) and callable(value))
    return None if ok else "must be 'otsu', 'all' or a callable"


def _mpp(value) -> Optional[str]:
    ok = value is None or (_is_number(value) and math.isfinite(value) and value > 0)
    return None if ok else "must be a positive number of microns per level-0 pixel"


def _scan_level(value) -> Optional[str]:
    ok = value is None or (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0)
    return None if ok else "must be None (the model's pixel size) or an integer >= 0"


VIEW_CHOICES = (1, 2, 4, 8)
"""``candidate_views``: the orientation groups of ``inference.views`` (identity, mirrors, quarter turns)."""


def _views(value) -> Optional[str]:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value in VIEW_CHOICES
    return None if ok else f"must be one of {', '.join(map(str, VIEW_CHOICES))}"


def _seconds(value) -> Optional[str]:
    return None if _is_number(value) and 0 <= value < math.inf else "must be a number of seconds >= 0"


@dataclasses.dataclass(frozen=True)
class ScanSettings:
    """Runtime settings of a scan.

    ``scan_level``, ``tissue``, ``tissue_downsample`` and ``mpp`` (the tissue
    mask's morphology is physical) decide which ROIs are scanned, so they are
    part of a map's fingerprint; ``threshold`` and ``heatmap`` only change
    what is derived from the map; the rest are speed knobs.

    Attributes:
      batch: ROIs per model call.
      workers: reader threads.
      prefetch_batches: batches read ahead of the model.
      scan_level: None (default): every slide is read at the model's training
        pixel size, from the level just finer than it, resampled where needed
        (``slide.resample``); a level: read that level pixel for pixel,
        whatever the slide's pixel size (its downsample must be whole).
      tissue: ``"otsu"`` (``slide.tissue.tissue_mask``), ``"all"`` (every ROI),
        or a callable ``reader -> bool mask`` at ``tissue_downsample``.
      tissue_downsample: level-0 pixels per tissue-mask pixel.
      checkpoint_every_s: seconds between checkpoints (0: after every batch).
      patch_batch: patches per model call in patch mode and for the candidate views.
      candidate_views: each lesion candidate >= 0.2 is scored again as the
        mean of the patch classifier over this many orientations of its patch
        (``inference.views``: 1, 2, 4 or 8); 1 keeps the map's value.  Part of
        the map's fingerprint (computed with the map; the map is one view).
      threshold: probability for the contours (lesion candidates are every local maximum >= 0.05).
      mpp: microns per level-0 pixel, overriding the slides' own.
      edge_rois: at the tissue's edge, plan quarter-tile ROIs where they cost
        fewer pixels than the whole ROI (``plan`` module docstring); dense
        mode with a detector that serves smaller sides (``at_roi_px``) only.
        The pixels computed are the whole ROIs' (the central invariant); the
        glass-only quarters are left at 0 like unplanned ROIs, so it is part
        of the map's fingerprint.
      heatmap: write the heatmap PNG.
      stream: compute each map by streaming tall strips through the detector,
        every layer keeping its halo (``inference.stream``): no ROI border
        computed twice; the same map as the ROI scan (float32 within 1e-5).
        Dense mode with the ``.keras`` model; part of the map's fingerprint.
      stream_rows: map rows per streamed chunk (memory and speed knob; in the fingerprint).
      stream_width: widest streamed strip in map pixels (bounds memory; in the fingerprint).
      progress: report progress with rate and ETA (``pfascannet.progress``).
      progress_stream: where progress and the scan's messages go; None: a
        terminal line on stderr and messages through ``logging``.
    """

    batch: int = setting(1, check=at_least(1), help="ROIs per model call.")
    workers: int = setting(2, check=at_least(1), help="Reader threads prefetching ROIs.")
    prefetch_batches: int = setting(2, flag="prefetch", check=at_least(1), help="Batches read ahead of the model.")
    scan_level: Optional[int] = setting(
        None, check=_scan_level,
        help="Read this pyramid level pixel for pixel (its downsample must be whole) instead of the default: every "
             "slide read at the model's training pixel size, from the level just finer than it, resampled where "
             "needed (the map JSON records the read plan).")
    tissue: object = setting("otsu", choices=TISSUE_CHOICES, check=_tissue,
                             help="Scan only tissue (Otsu), or every ROI.")
    tissue_downsample: int = setting(32, flag=False, check=at_least(1), help="Level-0 pixels per tissue-mask pixel.")
    checkpoint_every_s: float = setting(30.0, flag="checkpoint_s", check=_seconds,
                                        help="Seconds between checkpoints of a slide in progress.")
    patch_batch: int = setting(32, check=at_least(1),
                               help="Patches per model call in --mode=patch and for the candidate views.")
    candidate_views: int = setting(
        8, check=_views,
        help="Score each lesion candidate >= 0.2 again as the mean of the patch classifier over this many of its "
             "patch's rotations and mirror images (8: all; 1: the map's value); the map itself is one view.")
    threshold: float = setting(0.5, check=probability,
                               help="Probability for the contours (lesion candidates: every local maximum >= 0.05).")
    mpp: Optional[float] = setting(
        None, check=_mpp,
        help="Microns per level-0 pixel, overriding the slides' own; required for slides that carry none.")
    edge_rois: bool = setting(
        True, help="At the tissue's edge, quarter-size ROIs where they cost less than whole ones (same pixels; "
                   "glass-only quarters stay 0). Needs the .keras model or a recent export.")
    heatmap: bool = setting(True, help="Write heatmap PNGs (needs the slide files for their thumbnails).")
    stream: bool = setting(
        False, help="Stream tall strips of each slide through the detector, every layer keeping its halo: no ROI "
                    "border computed twice, the same map (dense mode; loads the export's .keras model).")
    stream_rows: int = setting(STREAM_ROWS, check=at_least(1), help="Map rows per streamed chunk (--stream).")
    stream_width: int = setting(STREAM_WIDTH, check=at_least(1),
                                help="Widest streamed strip in map pixels; bounds the memory of a chunk (--stream).")
    progress: bool = setting(True, help="Report progress with rate and ETA (on stderr).")
    progress_stream: Optional[TextIO] = setting(None, flag=False, help="Where progress goes (code only).")

    def __post_init__(self):
        check_fields(self, ScanError)


def _is_number(value) -> bool:
    # NaN fails every comparison, so range checks written as `lo <= x <= hi` reject it.
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


