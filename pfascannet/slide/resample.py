"""Reading a slide at the model's pixel size, whatever the slide's own (the resolution contract).

The detector's receptive field and pooling windows are fixed in pixels, so it
must see tissue at the pixel size it was trained at (``training_mpp``, in every
export): a 20x scan (0.49 um/px) read pixel for pixel shows it cells at half
the size it learned.  TIAToolbox (``resolution`` with ``units="mpp"``) and
wsinfer (``spacing_um_px``) read every slide at the model's resolution; so do
we, in the scanner and in the training sampler.

A ``ReadPlan`` says how one slide is read:

- ``scale``: level-0 pixels per model pixel, ``f = training_mpp / slide_mpp``
  snapped to a multiple of ``1/q`` (``q``: the map stride in model pixels, 32
  at alpha 16), so that the probability map's stride ``S = q f`` is a whole
  number of level-0 pixels.  Every map, lesion CSV, contour and mask then stays
  on whole level-0 cells (Camelyon's level-5 grid at 0.243 um/px), and only
  the read changes.  The pixel size the model sees is within ``1/(2 q f)``
  of its training one (1.6 % at alpha 16 on a 40x slide, 3.1 % on a 20x one);
  ``realised_mpp`` records it.
- ``level``: the coarsest pyramid level at least as fine as ``scale`` whose
  downsample is whole and on which OpenSlide maps level-0 coordinates exactly.
- ``ratio = scale / downsample(level)``: level pixels per model pixel.  1 is a
  native read, pixel for pixel, as before this contract (a 0.243 um/px slide
  for a 0.243 model, or a 0.486 model on level 1 of it).  Otherwise the
  region is resampled:

  * downsampling (ratio > 1, a level finer than the target): a Gaussian
    anti-alias pre-filter of sigma ``(ratio - 1) / 2`` level pixels (the rule
    of ``skimage.transform.resize``), then bilinear interpolation; at ratio 2
    that is the 2 x 2 box average a pyramid level is made of;
  * upsampling (ratio < 1, no level as fine as the target, e.g. a 20x slide
    for a 40x model): bicubic interpolation, which keeps nuclear edges sharper
    than bilinear without Lanczos' ringing around dark nuclei.

Model pixel ``u`` of a read whose top-left model pixel is ``U0`` (absolute,
on the slide's model-pixel grid) is centred on level-0 coordinate
``(U0 + u + 0.5) f - 0.5`` and on level coordinate ``(U0 + u + 0.5) ratio - 0.5``.
Interpolation positions are fixed-point (OpenCV's 1/32 pixel) computed from
those absolute positions, so a pixel's value does not depend on which ROI,
edge ROI or patch it was read in: neighbouring ROIs agree where they overlap
and the dense map still equals the patch classifier on the resampled grid.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
from fractions import Fraction
from typing import Optional, Sequence

import cv2
import numpy as np

from pfascannet.errors import PfaError

_INTER_BITS = 5  # OpenCV's fixed-point interpolation: 2**5 = 32 positions per pixel
_INTER_TAB = 1 << _INTER_BITS
_PAD_PX = 3  # level pixels read beyond the outermost sample (bicubic reach 2, plus rounding)


class ResampleError(PfaError, ValueError):
    """A slide that cannot be read at the model's pixel size (bad pixel sizes, no usable level)."""


@dataclasses.dataclass(frozen=True)
class ReadPlan:
    """How one slide is read at the model's pixel size (module docstring).

    Attributes:
      level: the pyramid level read.
      level_downsample: its whole downsample (level-0 pixels per level pixel).
      scale: level-0 pixels per model pixel (a Fraction; ``q * scale`` is whole).
      slide_mpp: the slide's level-0 um/px (None: unknown, native read).
      target_mpp: the model's training um/px (None: unknown, native read).
    """

    level: int
    level_downsample: int
    scale: Fraction
    slide_mpp: Optional[float] = None
    target_mpp: Optional[float] = None

    @property
    def ratio(self) -> Fraction:
        """Level pixels per model pixel (1: native)."""
        return self.scale / self.level_downsample

    @property
    def native(self) -> bool:
        return self.ratio == 1

    @property
    def realised_mpp(self) -> Optional[float]:
        """The pixel size the model actually sees (``slide_mpp * scale``)."""
        return None if self.slide_mpp is None else float(self.slide_mpp * self.scale)

    @property
    def filter(self) -> str:
        if self.native:
            return "none"
        return "gaussian+bilinear" if self.ratio > 1 else "bicubic"

    def stride_px(self, model_stride_px: int) -> int:
        """Level-0 pixels per map pixel for a map of ``model_stride_px`` model pixels per cell."""
        s = self.scale * int(model_stride_px)
        if s.denominator != 1:
            raise ResampleError(
                f"a map stride of {model_stride_px} model px is {float(s):g} level-0 px at scale {self.scale}: "
                "not whole (plan the read with this stride in `map_strides_px`)"
            )
        return int(s)

    def describe(self) -> dict:
        """The read plan for a map's JSON sidecar and its fingerprint."""
        return {
            "level": self.level,
            "level_downsample": self.level_downsample,
            "scale": f"{self.scale.numerator}/{self.scale.denominator}",
            "ratio": float(self.ratio),
            "filter": self.filter,
            "slide_mpp": self.slide_mpp,
            "target_mpp": self.target_mpp,
            "realised_mpp": self.realised_mpp,
        }

    # ------------------------------------------------------------------ reading

    def read(self, reader, origin_model_xy: tuple[int, int], size_px: int | tuple[int, int]) -> np.ndarray:
        """RGB uint8 ``(h, w, 3)`` of model pixels whose top-left is model pixel ``origin_model_xy``.

        ``origin_model_xy`` is on the slide's model-pixel grid (model pixel
        ``U`` starts at level-0 ``U * scale``); parts off the slide read white.
        """
        w, h = _size(size_px)
        u0, v0 = int(origin_model_xy[0]), int(origin_model_xy[1])
        if self.native:
            d = self.level_downsample
            return reader.read_region((u0 * d, v0 * d), self.level, (w, h))
        r = float(self.ratio)
        xs = (np.arange(u0, u0 + w, dtype=np.float64) + 0.5) * r - 0.5
        ys = (np.arange(v0, v0 + h, dtype=np.float64) + 0.5) * r - 0.5
        return self._resample(reader, xs, ys)

    def read_level0(self, reader, top_left_xy: tuple[int, int], size_px: int | tuple[int, int]) -> np.ndarray:
        """RGB uint8 ``(h, w, 3)`` of model pixels whose field of view starts at level-0 pixel ``top_left_xy``.

        The training sampler's read: a patch keeps its level-0 position on its
        own slide and covers ``size * scale`` level-0 pixels from there.
        """
        w, h = _size(size_px)
        x0, y0 = int(top_left_xy[0]), int(top_left_xy[1])
        if self.native and self.level == 0:
            return reader.read_region((x0, y0), 0, (w, h))
        f, d = float(self.scale), float(self.level_downsample)
        xs = (x0 + (np.arange(w, dtype=np.float64) + 0.5) * f) / d - 0.5
        ys = (y0 + (np.arange(h, dtype=np.float64) + 0.5) * f) / d - 0.5
        return self._resample(reader, xs, ys)

    def _resample(self, reader, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        # Fixed-point source positions from absolute coordinates: the same model
        # pixel gets the same taps and weights in every read that contains it.
        ix = np.rint(xs * _INTER_TAB).astype(np.int64)
        iy = np.rint(ys * _INTER_TAB).astype(np.int64)
        ratio = float(self.ratio)
        sigma = max(0.0, (ratio - 1.0) / 2.0)
        blur_px = int(math.ceil(3 * sigma)) if sigma > 0 else 0
        pad = _PAD_PX + blur_px
        j0 = int(ix[0] >> _INTER_BITS) - pad
        i0 = int(iy[0] >> _INTER_BITS) - pad
        j1 = int(ix[-1] >> _INTER_BITS) + pad + 1
        i1 = int(iy[-1] >> _INTER_BITS) + pad + 1
        d = self.level_downsample
        region = reader.read_region((j0 * d, i0 * d), self.level, (j1 - j0, i1 - i0))
        if blur_px:
            region = cv2.GaussianBlur(region, (2 * blur_px + 1, 2 * blur_px + 1), sigmaX=sigma, sigmaY=sigma,
                                      borderType=cv2.BORDER_REPLICATE)
        map_xy, frac = _remap_tables(ix - j0 * _INTER_TAB, iy - i0 * _INTER_TAB)
        interp = cv2.INTER_LINEAR if ratio > 1 else cv2.INTER_CUBIC
        return cv2.remap(region, map_xy, frac, interp, borderMode=cv2.BORDER_REPLICATE)


_TABLES: "collections.OrderedDict[tuple, tuple[np.ndarray, np.ndarray]]" = collections.OrderedDict()
_TABLES_LOCK = threading.Lock()
_TABLES_MAX = 4  # whole ROIs, edge ROIs, patches: a few shapes per scan (2708 px: 44 MB each)


def _remap_tables(ix: np.ndarray, iy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's fixed-point remap tables (int16 ``[h, w, 2]`` whole positions, uint16 ``[h, w]`` fractions).

    Every ROI of a scan has the same positions relative to its region (ROI
    origins are whole map steps apart), so the tables are built once and
    reused, read-only, by every reader thread.
    """
    if ix.max() >= 2**15 * _INTER_TAB or iy.max() >= 2**15 * _INTER_TAB:
        raise ResampleError(f"a read of {len(ix)} x {len(iy)} model pixels is too large to resample at once")
    key = (ix.tobytes(), iy.tobytes())
    with _TABLES_LOCK:
        hit = _TABLES.get(key)
        if hit is not None:
            _TABLES.move_to_end(key)
            return hit
    map_xy = np.empty((len(iy), len(ix), 2), np.int16)
    map_xy[..., 0] = (ix >> _INTER_BITS)[None, :]
    map_xy[..., 1] = (iy >> _INTER_BITS)[:, None]
    frac = (((iy & (_INTER_TAB - 1)) << _INTER_BITS)[:, None] | (ix & (_INTER_TAB - 1))[None, :]).astype(np.uint16)
    map_xy.flags.writeable = False
    frac.flags.writeable = False
    with _TABLES_LOCK:
        _TABLES[key] = (map_xy, frac)
        while len(_TABLES) > _TABLES_MAX:
            _TABLES.popitem(last=False)
    return map_xy, frac


def _size(size_px) -> tuple[int, int]:
    if isinstance(size_px, (tuple, list)):
        return int(size_px[0]), int(size_px[1])
    return int(size_px), int(size_px)


def native_plan(level: int = 0, level_downsample: int = 1) -> ReadPlan:
    """A pixel-for-pixel read of ``level`` (``--scan_level``; models that state no pixel size)."""
    return ReadPlan(int(level), int(level_downsample), Fraction(int(level_downsample)))


def usable_levels(level_downsamples: Sequence[float], openslide_downsamples: Sequence[float]) -> list[tuple[int, int]]:
    """``(level, whole downsample)`` of the levels a plan may read.

    A level qualifies when its downsample is whole and OpenSlide maps level-0
    coordinates onto it with exactly that value (it uses its own averaged
    downsample; off that, a read lands between level pixels).  Level 0 always does.
    """
    out = [(0, 1)]
    for level in range(1, len(level_downsamples)):
        ds = float(level_downsamples[level])
        whole = int(round(ds))
        if whole >= 2 and abs(ds - whole) <= 1e-9 * whole and abs(float(openslide_downsamples[level]) - whole) <= 1e-9 * whole:
            out.append((level, whole))
    return out


def plan_read(
    slide_mpp: Optional[float],
    target_mpp: Optional[float],
    level_downsamples: Sequence[float],
    openslide_downsamples: Optional[Sequence[float]] = None,
    map_strides_px: Sequence[int] = (32,),
) -> ReadPlan:
    """The read plan of a slide for a model trained at ``target_mpp`` (module docstring).

    Args:
      slide_mpp: the slide's level-0 um/px (``--mpp`` already applied).
      target_mpp: the model's ``training_mpp``; None (a model that does not say)
        reads natively at level 0, as before the contract.
      level_downsamples, openslide_downsamples: the slide's (``SlideReader``).
      map_strides_px: the map strides in model pixels that must land on whole
        level-0 pixels (one per model of an ensemble); the scale is snapped to
        a multiple of ``1 / min(map_strides_px)``, and coarser strides must be
        multiples of the finest.

    Raises:
      ResampleError: non-positive pixel sizes, or strides that are not multiples of the finest.
    """
    if target_mpp is None or slide_mpp is None:
        return native_plan()
    slide_mpp, target_mpp = float(slide_mpp), float(target_mpp)
    for name, v in (("slide pixel size", slide_mpp), ("model pixel size", target_mpp)):
        if not (math.isfinite(v) and v > 0):
            raise ResampleError(f"{name} must be a positive number of um/px, got {v!r}")
    strides = sorted({int(s) for s in map_strides_px})
    q = strides[0]
    if any(s % q for s in strides):
        raise ResampleError(f"map strides {strides} (model px) are not multiples of the finest, {q}")
    steps = max(1, round(target_mpp / slide_mpp * q))
    return plan_at_scale(Fraction(steps, q), level_downsamples, openslide_downsamples, slide_mpp, target_mpp)


def plan_at_scale(
    scale: Fraction,
    level_downsamples: Sequence[float],
    openslide_downsamples: Optional[Sequence[float]] = None,
    slide_mpp: Optional[float] = None,
    target_mpp: Optional[float] = None,
) -> ReadPlan:
    """The read plan for ``scale`` level-0 px per output px: the coarsest usable level at least as fine
    (level 0 when even it is coarser: upsampling), the rest resampled."""
    levels = usable_levels(level_downsamples, openslide_downsamples or level_downsamples)
    level, ds = max((lv for lv in levels if lv[1] <= scale), key=lambda lv: lv[1], default=(0, 1))
    return ReadPlan(level, ds, scale, slide_mpp, target_mpp)
