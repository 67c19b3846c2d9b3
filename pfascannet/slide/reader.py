"""Whole-slide reading over OpenSlide, in level-0 pixel coordinates.

Every coordinate in the project is level-0 ``(x, y)`` (column, row) unless a
name says otherwise; the level a region is read at is always explicit.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

import numpy as np

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
        slide's own ``openslide.mpp-x``. Required for slides that carry none.

    Attributes:
      dimensions: level-0 ``(width, height)`` in pixels.
      level_count, level_dimensions, level_downsamples: as OpenSlide.
      mpp: microns per level-0 pixel (``None`` if unknown and not given).

    Raises:
      SlideError: missing, empty, truncated or unsupported file.
    """

    def __init__(self, path: str | os.PathLike, mpp: Optional[float] = None):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise SlideError(f"{self.path}: no such slide file")
        if os.path.isdir(self.path):
            raise SlideError(f"{self.path}: is a directory, not a slide file")
        if os.path.getsize(self.path) == 0:
            raise SlideError(f"{self.path}: empty file (0 bytes)")
        openslide = _openslide()
        try:
            self._slide = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideError(f"{self.path}: not a slide format OpenSlide supports") from exc
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self.path}: cannot be opened ({exc}); is it truncated?") from exc
        self._lock = threading.Lock()
        self.dimensions: tuple[int, int] = tuple(self._slide.dimensions)
        self.level_count: int = self._slide.level_count
        self.level_dimensions = tuple(tuple(d) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = dict(self._slide.properties)
        if mpp is not None:
            if not mpp > 0:
                raise SlideError(f"{self.path}: mpp override must be > 0, got {mpp}")
            self.mpp: Optional[float] = float(mpp)
        else:
            raw = self.properties.get("openslide.mpp-x")
            self.mpp = float(raw) if raw not in (None, "") else None

    @property
    def name(self) -> str:
        """The file name without its extension (Camelyon's slide id)."""
        return os.path.splitext(os.path.basename(self.path))[0]

    def require_mpp(self) -> float:
        """The level-0 pixel size, or a clear error if the slide has none."""
        if self.mpp is None:
            raise SlideError(f"{self.path}: the slide carries no microns-per-pixel; pass mpp explicitly")
        return self.mpp

    def best_level(self, downsample: float) -> int:
        """The highest-resolution level whose downsample is <= ``downsample`` (within 1%)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.01:
                best = level
        return best

    def read_region(self, xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array of shape ``(h, w, 3)`` read at ``level``.

        Args:
          xy: level-0 ``(x, y)`` of the top-left corner; may lie outside the
            slide (outside and transparent areas come back white).
          level: pyramid level to read.
          size: ``(w, h)`` in pixels of that level.
        """
        if not 0 <= level < self.level_count:
            raise SlideError(f"{self.path}: level {level} out of range 0..{self.level_count - 1}")
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise SlideError(f"{self.path}: region size must be positive, got {size}")
        openslide = _openslide()
        try:
            with self._lock:
                rgba = np.asarray(self._slide.read_region((int(xy[0]), int(xy[1])), level, (w, h)))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self.path}: read failed at {xy} level {level} ({exc}); truncated file?") from exc
        return composite_on_white(rgba)

    def read_level(self, level: int) -> np.ndarray:
        """The whole of one (small) level as RGB uint8."""
        return self.read_region((0, 0), level, self.level_dimensions[level])

    def read_at_downsample(self, downsample: float) -> np.ndarray:
        """The whole slide at (about) ``downsample``, reading the nearest finer level and resizing.

        The result has shape ``(ceil(H / downsample), ceil(W / downsample), 3)``.
        """
        import cv2  # noqa: PLC0415

        level = self.best_level(downsample)
        img = self.read_level(level)
        w0, h0 = self.dimensions
        out_w, out_h = -(-w0 // int(downsample)), -(-h0 // int(downsample))
        if img.shape[1] != out_w or img.shape[0] != out_h:
            img = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)
        return img

    def close(self) -> None:
        self._slide.close()

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
