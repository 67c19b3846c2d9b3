"""Whole-slide reading over OpenSlide, in level-0 pixel coordinates.

Every coordinate in the project is level-0 ``(x, y)`` (column, row) unless a
name says otherwise; the level a region is read at is always explicit.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from typing import Optional

import cv2
import numpy as np
import tifffile

from pfascannet import camelyon
from pfascannet.errors import PfaError


class SlideError(PfaError):
    """A slide that cannot be opened or read; the message names the file."""


def _openslide():
    try:
        import openslide  # noqa: PLC0415  (import is slow and optional for eval-only users)
    except Exception as exc:  # pragma: no cover - depends on the install
        raise SlideError(
            f"OpenSlide is not importable ({exc}); install it with "
            "`pip install openslide-python openslide-bin`"
        ) from exc
    return openslide


class SlideReader:
    """A whole-slide image opened with OpenSlide.

    Args:
      path: the slide file (.tif, .svs, .mrxs, ...).
      mpp: microns per level-0 pixel, overriding (or standing in for) the
        slide's own (``openslide.mpp-x``, else an Aperio ``MPP =`` field).
        Required for slides that carry none.

    Attributes:
      dimensions: level-0 ``(width, height)`` in pixels.
      level_count, level_dimensions: as OpenSlide.
      level_downsamples: the true scale of each level: OpenSlide's value
        snapped to the power of two whose rounded-up or -down size the level
        has (OpenSlide reports 31.88 for a ceil-sized level 5 of a 5000 px
        slide: it is 32), else to a whole number within 1%.
      openslide_downsamples: OpenSlide's own values, which it uses to map the
        level-0 ``xy`` of :meth:`read_region` onto a level. Level-0 ``xy``
        that are not multiples of it land between level pixels and OpenSlide
        interpolates; read level > 0 from ``(0, 0)`` or at such multiples.
      mpp: microns per level-0 pixel: the override, else ``openslide.mpp-x``,
        else ``None`` (see :meth:`require_mpp`).
      properties: OpenSlide's property map.

    Coordinates are level-0 ``(x, y)``; regions outside the slide and
    transparent areas read as white glass (255), as a scanner would show them.

    Raises:
      SlideError: missing, empty, truncated or unsupported file.
    """

    def __init__(self, path: str | os.PathLike, mpp: Optional[float] = None):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise SlideError(f"{self.path}: no such slide file")
        if os.path.isdir(self.path):
            raise SlideError(f"{self.path}: is a directory, not a slide file")
        if not os.access(self.path, os.R_OK):
            raise SlideError(f"{self.path}: cannot be read (permission denied)")
        size = os.path.getsize(self.path)
        if size == 0:
            raise SlideError(f"{self.path}: empty file (0 bytes)")
        if mpp is not None:
            try:
                mpp = float(mpp)
            except (TypeError, ValueError):
                mpp = float("nan")
            if not (math.isfinite(mpp) and mpp > 0):
                raise SlideError(f"{self.path}: mpp override must be a positive number of microns per pixel")
        openslide = _openslide()
        is_tiff = _has_tiff_magic(self.path)
        self._inflight = 0
        self._inflight_cond = threading.Condition()
        self._slide = None
        try:
            self._slide = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as exc:
            if is_tiff:
                # A TIFF that OpenSlide rejects is usually cut short (its page
                # chain points past the end) or not tiled; say which if we can.
                problem = _tiff_problem(self.path, size, opened=False)
                raise SlideError(
                    f"{self.path}: {problem or 'a TIFF that OpenSlide cannot read (not tiled, or not a slide?)'}"
                ) from exc
            raise SlideError(
                f"{self.path}: not a whole-slide image format OpenSlide supports "
                "(expected e.g. a tiled pyramidal .tif, .svs, .ndpi, .mrxs)"
            ) from exc
        except openslide.OpenSlideError as exc:
            problem = _tiff_problem(self.path, size, opened=False) if is_tiff else None
            raise SlideError(f"{self.path}: {problem or f'cannot be opened ({exc}); corrupt or truncated file?'}") from exc
        if is_tiff:
            # OpenSlide opens a TIFF from its directories alone; a file cut after
            # them only fails at the first read of a lost tile, mid-scan. Catch it now.
            problem = _tiff_problem(self.path, size, opened=True)
            if problem is not None:
                self._slide.close()
                raise SlideError(f"{self.path}: {problem}")
        self.dimensions: tuple[int, int] = tuple(int(v) for v in self._slide.dimensions)
        self.level_count: int = self._slide.level_count
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in self._slide.level_dimensions)
        # OpenSlide maps level-0 coordinates to a level by its own (averaged)
        # downsample; keep it for reads, and the snapped one for geometry.
        self.openslide_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.level_downsamples = tuple(
            _snap_downsample(ds, self.dimensions, dims)
            for ds, dims in zip(self.openslide_downsamples, self.level_dimensions)
        )
        self.properties = dict(self._slide.properties)
        if mpp is not None:
            self.mpp: Optional[float] = mpp
        else:
            self.mpp = _property_mpp(self.properties)

    @property
    def name(self) -> str:
        """The file name without its extension (Camelyon's slide id)."""
        return camelyon.slide_id(self.path)

    def require_mpp(self) -> float:
        """The level-0 pixel size, or a clear error if the slide has none."""
        if self.mpp is None:
            raise SlideError(
                f"{self.path}: the slide carries no pixel size (no TIFF resolution, openslide.mpp-x or Aperio "
                "MPP field); give it with --mpp (microns per level-0 pixel, 0.243 for Camelyon)"
            )
        return self.mpp

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is <= ``downsample`` (within 1%)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.01:
                best = level
        return best

    def read_region(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array of shape ``(h, w, 3)`` read at ``level``.

        Args:
          xy: level-0 ``(x, y)`` of the top-left corner; may lie partly or
            wholly outside the slide (outside and transparent areas come back white).
          level: pyramid level to read.
          size: ``(w, h)`` in pixels of that level.

        At ``level > 0`` OpenSlide maps ``xy`` onto the level by
        :attr:`openslide_downsamples`; ``xy`` that are not multiples of it
        fall between level pixels and come back interpolated.

        Raises:
          SlideError: bad level or size, or a tile that cannot be decoded.
        """
        if not 0 <= level < self.level_count:
            raise SlideError(f"{self.path}: level {level} out of range 0..{self.level_count - 1}")
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise SlideError(f"{self.path}: region size must be positive, got {size}")
        if w * h > _MAX_REGION_PX:
            raise SlideError(
                f"{self.path}: region {w}x{h} at level {level} is larger than {_MAX_REGION_PX} pixels; "
                "read it in tiles or at a coarser level"
            )
        openslide = _openslide()
        # No lock around the read: OpenSlide handles are thread-safe and ctypes
        # releases the GIL, so prefetching threads decode tiles in parallel.
        # Reads in flight are counted so close() waits for them: OpenSlide
        # aborts the process if a handle is closed under a running read.
        with self._inflight_cond:
            if self._slide is None:
                raise SlideError(f"{self.path}: read after close()")
            self._inflight += 1
            slide = self._slide
        try:
            rgba = np.asarray(slide.read_region((int(xy[0]), int(xy[1])), level, (w, h)))
        except openslide.OpenSlideError as exc:
            raise SlideError(
                f"{self.path}: read failed at {tuple(xy)} level {level} ({exc}); corrupt or truncated file?"
            ) from exc
        finally:
            with self._inflight_cond:
                self._inflight -= 1
                self._inflight_cond.notify_all()
        return composite_on_white(rgba)

    def read_level(self, level: int) -> np.ndarray:
        """The whole of one (small) level as RGB uint8."""
        return self.read_region((0, 0), level, self.level_dimensions[level])

    def read_at_downsample(self, downsample: float, max_region_px: int = 2**26) -> np.ndarray:
        """The whole slide on the grid of ``downsample``, as RGB uint8.

        Output pixel ``(r, c)`` is the mean of level-0 cell
        ``[ds*c, ds*(c+1)) x [ds*r, ds*(r+1))`` (off-slide parts white; the
        last row and column are partly off the slide), read from the coarsest
        level at most that fine and box-resized (exact when the level's scale
        divides ``ds``, as for Camelyon's power-of-two pyramids).

        The level is read in one piece from ``(0, 0)`` when it has at most
        ``max_region_px`` pixels (OpenSlide then maps coordinates exactly),
        otherwise in bands of rows, so a slide without a pyramid never has its
        whole level 0 in memory.

        Returns:
          Shape ``(ceil(H / downsample), ceil(W / downsample), 3)``.
        """
        ds = float(downsample)
        if not ds > 0 or not math.isfinite(ds):
            raise SlideError(f"{self.path}: downsample must be a positive number, got {downsample}")
        level = self.best_level(ds)
        factor = ds / self.level_downsamples[level]  # level pixels per output pixel, >= ~1
        w0, h0 = self.dimensions
        out_w, out_h = math.ceil(w0 / ds), math.ceil(h0 / ds)
        region_w = max(1, int(round(out_w * factor)))
        region_h = max(1, int(round(out_h * factor)))
        if region_w * region_h <= max_region_px:
            bands = [(0, out_h)]
        else:
            rows_per_band = max(1, int(max_region_px // (region_w * max(factor, 1.0))))
            bands = [(r0, min(out_h, r0 + rows_per_band)) for r0 in range(0, out_h, rows_per_band)]
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for r0, r1 in bands:
            y_level = int(round(r0 * factor))
            band_h = max(1, int(round(r1 * factor)) - y_level)
            y0 = int(round(y_level * self.openslide_downsamples[level]))
            img = self.read_region((0, y0), level, (region_w, band_h))
            if img.shape[:2] != (r1 - r0, out_w):
                img = cv2.resize(img, (out_w, r1 - r0), interpolation=cv2.INTER_AREA)
            out[r0:r1] = img
        return out

    def close(self) -> None:
        """Releases the OpenSlide handle (idempotent)."""
        cond = getattr(self, "_inflight_cond", None)
        if cond is None:  # __init__ failed before the handle was opened
            return
        with cond:
            slide, self._slide = self._slide, None
            cond.wait_for(lambda: self._inflight == 0)
        if slide is not None:
            slide.close()

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA (premultiplied-free, as OpenSlide returns it) composited on white, as RGB uint8."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


# A region larger than this (RGBA, 4 bytes a pixel: 1 GiB) is a caller's bug.
_MAX_REGION_PX = 2**28

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _has_tiff_magic(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in _TIFF_MAGICS


def _tiff_problem(path: str, size: int, *, opened: bool) -> Optional[str]:
    """Why a TIFF-family file is incomplete, or None if its tiles all lie inside it.

    Reads only the directories (tile offsets and byte counts), never tile data.
    ``opened``: whether OpenSlide opened the file; if it did, a file that
    tifffile cannot parse is let through (OpenSlide knows more formats).
    """
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)  # tifffile logs what we are about to report
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) == 0:
                return "truncated or corrupt TIFF (no readable page)"
            for index, page in enumerate(tif.pages):
                offsets, counts = page.dataoffsets, page.databytecounts
                if len(offsets) and len(counts):
                    end = max(int(o) + int(c) for o, c in zip(offsets, counts))
                    if end > size:
                        return (
                            f"truncated file: page {index} needs {end} bytes but the file has {size} "
                            "(an interrupted copy or download?)"
                        )
    except Exception as exc:  # noqa: BLE001 - any parse failure of a TIFF is reported as such
        if opened:
            return None
        return f"truncated or corrupt TIFF ({type(exc).__name__}: {exc})"
    finally:
        log.setLevel(level)
    return None


def _snap_downsample(ds: float, level0_xy: tuple[int, int], level_xy: tuple[int, int]) -> float:
    """A level's true scale from OpenSlide's averaged downsample and the level's size.

    A power-of-two pyramid level has size ``ceil`` or ``floor`` of ``W / 2**k``;
    OpenSlide averages ``W / w`` and ``H / h``, which drifts off ``2**k`` at
    small levels (63.2 for a 47 x 32 level of a 3000 x 2000 slide).
    """
    if ds >= 1:
        p = 2.0 ** round(math.log2(ds))
        fits = all(
            size in (math.ceil(full / p), math.floor(full / p)) for full, size in zip(level0_xy, level_xy)
        )
        if fits:
            return p
    nearest = round(ds)
    return float(nearest) if nearest >= 1 and abs(ds - nearest) <= 0.01 * ds else ds


# Aperio's ImageDescription: "Aperio Image Library v10 ... |AppMag = 40|MPP = 0.2430|...".
_DESCRIPTION_MPP_RE = re.compile(r"(?:^|[|;\n])\s*MPP\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)", re.IGNORECASE)


def _positive(raw) -> Optional[float]:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _property_mpp(properties: dict) -> Optional[float]:
    """The level-0 pixel size in microns from the slide's properties, else None.

    In order: ``openslide.mpp-x`` / ``-y`` (TIFF resolution tags or the
    vendor's own field), ``aperio.MPP``, then an Aperio-style ``MPP = 0.2430``
    field in the TIFF ImageDescription, which OpenSlide reads only for files
    it recognises as Aperio (a generic TIFF written by Aperio's tools, or a
    converted slide, carries it there and nowhere else).
    """
    for key in ("openslide.mpp-x", "openslide.mpp-y", "aperio.MPP"):
        value = _positive(properties.get(key))
        if value is not None:
            return value
    match = _DESCRIPTION_MPP_RE.search(str(properties.get("tiff.ImageDescription") or ""))
    return _positive(match.group(1)) if match else None
