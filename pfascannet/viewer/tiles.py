"""Deep Zoom tiles of a slide and of its probability map, on one tile grid.

The slide's tiles come from ``openslide.deepzoom.DeepZoomGenerator`` (its
DZI geometry: level ``L`` is the slide at downsample ``2**(max_level - L)``,
tiles of ``TILE_PX`` plus ``OVERLAP_PX`` on inner edges).  The map's overlay
uses the very same grid, so the viewer stacks the two images without any
registration: :class:`MapOverlay` renders each tile from a per-level raster
of the map that is made once per slide and level (block maximum where a
screen pixel covers several map cells, so a one-cell lesion stays visible
zoomed out) and cached; a request only samples it and applies a colour table.

Overlay pixels are coded ``0`` = not tissue (transparent: the heatmaps tint
tissue only, ``maps/<slide>_scanned.png``) and ``1 + round(254 p)`` for a
tissue cell of probability ``p``; the colour table is jet (as the heatmap
PNGs and the paper's Fig. 3), transparent below the threshold.
"""

from __future__ import annotations

import io
import math
import threading
from typing import Optional

import cv2
import numpy as np

from pfascannet.slide.reader import SlideError, SlideReader

TILE_PX = 254
OVERLAP_PX = 1
"""Deep Zoom tiles: 254 + 2 x 1 overlap = 256 px, OpenSlide's own server's choice."""
JPEG_QUALITY = 80
THUMBNAIL_MAX_PX = 200


def _jet_rgb() -> np.ndarray:
    from matplotlib import colormaps  # noqa: PLC0415  (matplotlib is slow to import)

    return np.round(colormaps["jet"](np.linspace(0.0, 1.0, 255))[:, :3] * 255).astype(np.uint8)


class SlidePyramid:
    """An opened slide's Deep Zoom pyramid (thread-safe: OpenSlide reads are).

    Raises:
      SlideError: a missing, truncated or unsupported slide (``SlideReader``'s checks).
    """

    def __init__(self, path: str):
        import openslide  # noqa: PLC0415
        from openslide.deepzoom import DeepZoomGenerator  # noqa: PLC0415

        with SlideReader(path) as reader:  # its checks catch truncated TIFFs that OpenSlide opens
            self.mpp = reader.mpp
        try:
            self._slide = openslide.OpenSlide(path)
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{path}: cannot be opened ({exc})") from exc
        self.path = path
        self.dz = DeepZoomGenerator(self._slide, tile_size=TILE_PX, overlap=OVERLAP_PX, limit_bounds=False)
        self.dimensions = tuple(int(v) for v in self._slide.dimensions)
        self.level_dimensions = [tuple(int(v) for v in d) for d in self.dz.level_dimensions]

    def dzi(self, fmt: str) -> str:
        """The DZI descriptor (XML) of this grid, with tiles in ``fmt`` (``jpeg`` or ``png``)."""
        return self.dz.get_dzi(fmt)

    def tile_jpeg(self, level: int, col: int, row: int) -> bytes:
        """One JPEG tile.  Raises ValueError for a tile off the grid."""
        image = self.dz.get_tile(level, (col, row))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=JPEG_QUALITY)
        return buf.getvalue()

    def thumbnail_level(self) -> int:
        """The deepest level that fits a thumbnail (one tile)."""
        fits = [i for i, (w, h) in enumerate(self.level_dimensions) if max(w, h) <= THUMBNAIL_MAX_PX]
        return fits[-1]

    def close(self) -> None:
        self._slide.close()


class MapOverlay:
    """A probability map as Deep Zoom tiles on a slide's grid.

    Args:
      prob: float32 ``[rows, cols]`` map; cell (r, c) covers level-0 [s c, s (c+1)) x [s r, s (r+1)).
      stride_px: ``s``, level-0 px per map cell.
      level_dimensions: the slide pyramid's Deep Zoom level sizes (``SlidePyramid.level_dimensions``).
      tissue: bool ``[rows, cols]`` cells to show (scanned tissue), or None: every cell.
    """

    def __init__(self, prob: np.ndarray, stride_px: int, level_dimensions, tissue: Optional[np.ndarray] = None):
        prob = np.nan_to_num(np.asarray(prob, np.float32), nan=0.0)
        codes = 1 + np.rint(np.clip(prob, 0.0, 1.0) * 254.0).astype(np.uint8)
        if tissue is not None:
            codes[~np.asarray(tissue, bool)] = 0
        self.codes = codes
        self.stride_px = int(stride_px)
        self.level_dimensions = list(level_dimensions)
        self.max_level = len(self.level_dimensions) - 1
        self._rasters: dict[int, tuple[np.ndarray, int]] = {}
        self._luts: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._jet = _jet_rgb()

    # -- the per-level rasters, made once

    def raster(self, level: int) -> tuple[np.ndarray, int]:
        """``(codes, cell_px)``: the map at a level's scale (block maximum of whole cells), made once."""
        with self._lock:
            cached = self._rasters.get(level)
        if cached is not None:
            return cached
        downsample = 2 ** (self.max_level - level)
        f = max(1, int(downsample // self.stride_px))
        if f == 1:
            out = (self.codes, self.stride_px)
        else:
            rows, cols = self.codes.shape
            padded = np.zeros((-(-rows // f) * f, -(-cols // f) * f), np.uint8)
            padded[:rows, :cols] = self.codes
            out = (padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).max(axis=(1, 3)),
                   self.stride_px * f)
        with self._lock:
            self._rasters.setdefault(level, out)
        return out

    def lut(self, threshold_pct: int) -> np.ndarray:
        """BGRA colour table of the codes: jet, transparent below ``threshold_pct`` % and off tissue."""
        with self._lock:
            table = self._luts.get(threshold_pct)
        if table is None:
            table = np.zeros((256, 4), np.uint8)
            p = (np.arange(1, 256) - 1) / 254.0
            table[1:, :3] = self._jet[:, ::-1]
            table[1:, 3] = np.where(p >= threshold_pct / 100.0 - 1e-6, 255, 0)
            with self._lock:
                self._luts[threshold_pct] = table
        return table

    # -- tiles

    def tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """``(x0, y0, w, h)`` in the level's pixels of a tile, as DeepZoomGenerator cuts it.

        Raises:
          ValueError: a tile off the grid.
        """
        if not 0 <= level <= self.max_level:
            raise ValueError(f"no level {level}")
        w, h = self.level_dimensions[level]
        cols, rows = math.ceil(w / TILE_PX), math.ceil(h / TILE_PX)
        if not (0 <= col < cols and 0 <= row < rows):
            raise ValueError(f"no tile ({col}, {row}) at level {level}")

        def span(t: int, n: int, size: int) -> tuple[int, int]:
            lo = OVERLAP_PX if t > 0 else 0
            hi = OVERLAP_PX if t < n - 1 else 0
            return TILE_PX * t - lo, min(TILE_PX, size - TILE_PX * t) + lo + hi

        x0, tw = span(col, cols, w)
        y0, th = span(row, rows, h)
        return x0, y0, tw, th

    def tile_codes(self, level: int, col: int, row: int) -> np.ndarray:
        """The codes of one tile (uint8 ``[h, w]``), sampled at each level pixel's centre."""
        x0, y0, w, h = self.tile_box(level, col, row)
        codes, cell_px = self.raster(level)
        downsample = float(2 ** (self.max_level - level))

        def index(start: int, n: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
            i = np.floor((np.arange(start, start + n) + 0.5) * downsample / cell_px).astype(np.int64)
            return np.minimum(i, limit - 1), i < limit

        ri, rok = index(y0, h, codes.shape[0])
        ci, cok = index(x0, w, codes.shape[1])
        out = codes[ri[:, None], ci[None, :]]
        out[~(rok[:, None] & cok[None, :])] = 0
        return out

    def tile_png(self, level: int, col: int, row: int, threshold_pct: int) -> bytes:
        """One RGBA PNG tile.  Raises ValueError for a tile off the grid."""
        bgra = self.lut(threshold_pct)[self.tile_codes(level, col, row)]
        ok, png = cv2.imencode(".png", bgra, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:  # pragma: no cover - OpenCV fails only without memory
            raise RuntimeError("PNG encoding failed")
        return png.tobytes()


def thumbnail_png(pyramid: SlidePyramid, overlay: Optional[MapOverlay], threshold_pct: int = 50,
                  opacity: float = 0.6) -> bytes:
    """A small PNG of the slide with the map above ``threshold_pct`` blended in (the slide list's)."""
    level = pyramid.thumbnail_level()
    rgb = np.asarray(pyramid.dz.get_tile(level, (0, 0)).convert("RGB"), np.float32)
    if overlay is not None:
        codes = overlay.tile_codes(level, 0, 0)
        # DeepZoomGenerator keeps a tile's aspect ratio when it scales it, so it may be a pixel short.
        codes = cv2.resize(codes, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
        bgra = overlay.lut(threshold_pct)[codes].astype(np.float32)
        a = opacity * bgra[..., 3:4] / 255.0
        rgb = rgb * (1 - a) + bgra[..., 2::-1] * a
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()
