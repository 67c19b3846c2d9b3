"""A scan's settings (``ScanOptions``) and its error class.

``scan_level``, ``tissue``, ``tissue_downsample``, ``mpp`` and ``edge_rois``
decide which ROIs are scanned, so they are part of a map's fingerprint
(``engine.map_fingerprint``); ``threshold`` and ``heatmap`` only change what
post-processing derives from the map (``postprocess``); the rest are speed
knobs and where progress goes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, TextIO

import numpy as np

from pfascannet.errors import PfaError


STREAM_ROWS = 16
"""``stream_rows`` default: map rows per chunk of a streamed strip (512 input px at alpha 16)."""

STREAM_WIDTH = 256
"""``stream_width`` default: widest streamed strip in map pixels (8,852 input px at alpha 16)."""


class ScanError(PfaError):
    """Bad scan settings or inputs (slide list, shard, detector geometry)."""


@dataclasses.dataclass(frozen=True)
class ScanOptions:
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
      patch_batch: patches per model call in patch mode.
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

    batch: int = 2
    workers: int = 2
    prefetch_batches: int = 2
    scan_level: Optional[int] = None
    tissue: object = "otsu"
    tissue_downsample: int = 32
    checkpoint_every_s: float = 30.0
    patch_batch: int = 32
    threshold: float = 0.5
    mpp: Optional[float] = None
    edge_rois: bool = True
    heatmap: bool = True
    stream: bool = False
    stream_rows: int = STREAM_ROWS
    stream_width: int = STREAM_WIDTH
    progress: bool = True
    progress_stream: Optional[TextIO] = None

    def __post_init__(self):
        for name in ("batch", "workers", "prefetch_batches", "patch_batch", "stream_rows", "stream_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ScanError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.tissue, str) and self.tissue in ("otsu", "all")) and not callable(self.tissue):
            raise ScanError(f"tissue must be 'otsu', 'all' or a callable, got {self.tissue!r}")
        if self.mpp is not None and not (_is_number(self.mpp) and math.isfinite(self.mpp) and self.mpp > 0):
            raise ScanError(f"mpp must be a positive number of microns per level-0 pixel, got {self.mpp!r}")
        if not (_is_number(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ScanError(f"threshold must be a probability in [0, 1], got {self.threshold!r}")
        sl = self.scan_level
        if sl is not None and (isinstance(sl, bool) or not isinstance(sl, int) or sl < 0):
            raise ScanError(f"scan_level must be None (the model's pixel size) or an integer >= 0, got {sl!r}")
        td = self.tissue_downsample
        if isinstance(td, bool) or not isinstance(td, int) or td < 1:
            raise ScanError(f"tissue_downsample must be an integer >= 1, got {td!r}")
        if not (_is_number(self.checkpoint_every_s) and 0 <= self.checkpoint_every_s < math.inf):
            raise ScanError(f"checkpoint_every_s must be a number of seconds >= 0, got {self.checkpoint_every_s!r}")


def _is_number(value) -> bool:
    # NaN fails every comparison, so range checks written as `lo <= x <= hi` reject it.
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


