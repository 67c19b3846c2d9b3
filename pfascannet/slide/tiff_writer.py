"""Pyramidal tiled TIFF writing that never holds a whole level in memory.

Camelyon's slides and masks are pyramidal tiled TIFFs (``shared/DESIGN.md``
section 4): tiles of 512 px, each level half the size of the one above, down
to about 1k px.  OpenSlide 4 opens such a file as ``generic-tiff`` when the
levels are successive pages and the resolution tags are in centimetres, and
then reports every level and ``openslide.mpp-x`` / ``mpp-y``.

The writer is shared: the synthetic cohort writes slides (RGB, JPEG) and
masks (uint8, one channel, deflate) with it, and the scanner writes
probability-map TIFFs.

Signature::

    write_pyramid_tiff(
        path, dimensions_xy, tile_source, *,
        tiff_tile_px=512, mpp=LEVEL0_MPP, compression="jpeg" | "deflate" | "none",
        channels=3 | 1, dtype=np.uint8, background=None, quality=90,
        resample="mean" | "nearest" | "max", level_source=None,
        min_side_px=1024, num_levels=None, workers=None, description=None,
    ) -> list[(width, height)]   # the dimensions of every level written

``tile_source(x, y, w, h)`` returns the level-0 region with top-left
``(x, y)`` and size ``(w, h)`` as an array of shape ``(h, w, channels)`` (or
``(h, w)`` when ``channels == 1``), or ``None`` when the whole region is
background: such tiles cost one cached, already-encoded tile.  Level ``L+1``
is made from level ``L`` by 2x2 ``resample`` while level ``L`` is streamed
out; the half-resolution bands go to a raw scratch file beside the output and
are read back band by band, so at most a band of tiles of one level is ever
in memory.  The temporary TIFF and the scratch folder are hidden
(``.<name>.tmp-*``) and locked while in use, so the next run's
``io_utils.remove_stale_temps`` clears what a killed one left.  Pass ``level_source(level, x, y, w, h)`` (coordinates and sizes
in that level's pixels) to render lower levels directly instead, e.g. to
rasterise a mask's polygons exactly at level 5.

Level ``L`` has size ``ceil(W / 2**L) x ceil(H / 2**L)``; levels are added
until the longer side is <= ``min_side_px`` (or exactly ``num_levels``).
Both callbacks are called from a thread pool and must be thread-safe.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Callable, Optional, Sequence

import imagecodecs
import numpy as np
import tifffile

from pfascannet.camelyon import LEVEL0_MPP
from pfascannet.errors import PfaError
from pfascannet.io_utils import atomic_path, temp_dir

TileSource = Callable[[int, int, int, int], Optional[np.ndarray]]
LevelSource = Callable[[int, int, int, int, int], Optional[np.ndarray]]

_COMPRESSIONS = ("jpeg", "deflate", "none")
_RESAMPLES = ("mean", "nearest", "max")


class TiffWriteError(PfaError, ValueError):
    """Arguments that cannot describe a pyramidal TIFF (size, tile, dtype, codec)."""


def pyramid_dimensions(
    dimensions_xy: Sequence[int], min_side_px: int = 1024, num_levels: Optional[int] = None
) -> list[tuple[int, int]]:
    """Level sizes ``(w, h)``: halved (rounding up) until the longer side <= min_side_px.

    Args:
      dimensions_xy: level-0 ``(width, height)``.
      min_side_px: stop once the longer side is at most this.
      num_levels: if given, exactly this many levels instead.
    """
    w, h = int(dimensions_xy[0]), int(dimensions_xy[1])
    dims = [(w, h)]
    while (len(dims) < num_levels) if num_levels is not None else (max(dims[-1]) > min_side_px):
        pw, ph = dims[-1]
        dims.append((-(-pw // 2), -(-ph // 2)))
    return dims


def write_pyramid_tiff(
    path: str | os.PathLike,
    dimensions_xy: Sequence[int],
    tile_source: TileSource,
    *,
    tiff_tile_px: int = 512,
    mpp: Optional[float] = LEVEL0_MPP,
    compression: str = "jpeg",
    channels: int = 3,
    dtype: np.dtype | type = np.uint8,
    background: Optional[float | Sequence[float]] = None,
    quality: int = 90,
    resample: str = "mean",
    level_source: Optional[LevelSource] = None,
    min_side_px: int = 1024,
    num_levels: Optional[int] = None,
    workers: Optional[int] = None,
    description: Optional[str] = None,
) -> list[tuple[int, int]]:
    """Writes a pyramidal tiled TIFF tile by tile, atomically.

    Args:
      path: output ``.tif``; appears whole or not at all.
      dimensions_xy: level-0 ``(width, height)`` in pixels.
      tile_source: ``(x, y, w, h) -> array | None`` giving level-0 regions
        (``None`` = all background); see the module docstring.
      tiff_tile_px: tile side, a multiple of 16 (TIFF) and of 16 for JPEG 4:2:0.
      mpp: microns per level-0 pixel, written as resolution in pixels per
        centimetre (level L gets ``mpp * 2**L``); ``None`` writes none.
      compression: ``"jpeg"`` (uint8 only; RGB is stored YCbCr 4:2:0 as
        Camelyon's scanners do), ``"deflate"`` (lossless, for masks and
        maps) or ``"none"``.
      channels: 3 (RGB) or 1 (grey / mask / map).
      dtype: sample type; uint8 unless ``compression`` is not JPEG.
      background: value of background tiles and padding, a scalar or one
        value per channel; default 255 for RGB (white glass) and 0 for one
        channel (no tumour).
      quality: JPEG quality (1..100).
      resample: how level L+1 is made from level L: ``"mean"`` (2x2 box,
        images), ``"nearest"`` or ``"max"`` (keep label values, masks).
      level_source: optional ``(level, x, y, w, h) -> array | None`` that
        renders lower levels directly (coordinates in that level's pixels).
      min_side_px: levels are added until the longer side is <= this.
      num_levels: exact number of levels instead (e.g. 6 so a mask always
        has Camelyon's level-5 page).
      workers: threads rendering and encoding tiles (default: CPU count, <= 4).
      description: ImageDescription of the level-0 page.

    Returns:
      The ``(width, height)`` of every level written, level 0 first.

    Raises:
      TiffWriteError: invalid arguments, or a tile of the wrong shape/dtype.
    """
    width, height = int(dimensions_xy[0]), int(dimensions_xy[1])
    if width < 1 or height < 1:
        raise TiffWriteError(f"slide dimensions must be positive, got {tuple(dimensions_xy)}")
    if tiff_tile_px < 16 or tiff_tile_px % 16:
        raise TiffWriteError(f"tiff_tile_px must be a positive multiple of 16, got {tiff_tile_px}")
    if compression not in _COMPRESSIONS:
        raise TiffWriteError(f"compression must be one of {_COMPRESSIONS}, got {compression!r}")
    if channels not in (1, 3):
        raise TiffWriteError(f"channels must be 1 or 3, got {channels}")
    if resample not in _RESAMPLES:
        raise TiffWriteError(f"resample must be one of {_RESAMPLES}, got {resample!r}")
    dtype = np.dtype(dtype)
    if compression == "jpeg" and dtype != np.uint8:
        raise TiffWriteError(f"JPEG tiles must be uint8, got {dtype}; use compression='deflate'")
    if mpp is not None and not mpp > 0:
        raise TiffWriteError(f"mpp must be > 0 (microns per pixel), got {mpp}")
    if num_levels is not None and num_levels < 1:
        raise TiffWriteError(f"num_levels must be >= 1, got {num_levels}")
    if background is None:
        background = 255 if channels == 3 else 0
    workers = workers or min(os.cpu_count() or 1, 4)

    dims = pyramid_dimensions((width, height), min_side_px, num_levels)
    tile_shape = (tiff_tile_px, tiff_tile_px, channels) if channels == 3 else (tiff_tile_px, tiff_tile_px)
    sample_shape = (channels,) if channels == 3 else ()
    encode = _encoder(compression, channels, quality)
    blank = np.full(tile_shape, background, dtype)
    blank_bytes = encode(blank)
    # BigTIFF only when a classic TIFF's 4 GB offsets could overflow.
    raw_bytes = sum(w * h for w, h in dims) * channels * dtype.itemsize
    bigtiff = raw_bytes > 2**31 and compression != "jpeg" or raw_bytes > 2**33

    def fit(tile: Optional[np.ndarray], w: int, h: int, where: str) -> Optional[np.ndarray]:
        # Normalises a callback's tile to a full, padded tile (None = background).
        if tile is None:
            return None
        tile = np.asarray(tile)
        if channels == 1 and tile.ndim == 3 and tile.shape[2] == 1:
            tile = tile[..., 0]
        if tile.shape != (h, w, *sample_shape):
            raise TiffWriteError(f"tile source gave shape {tile.shape} at {where}, expected {(h, w, *sample_shape)}")
        if tile.dtype != dtype:
            raise TiffWriteError(f"tile source gave dtype {tile.dtype} at {where}, expected {dtype}")
        if (h, w) != (tiff_tile_px, tiff_tile_px):
            full = np.full(tile_shape, background, dtype)
            full[:h, :w] = tile
            tile = full
        return tile

    def is_blank(tile: np.ndarray) -> bool:
        return bool((tile == blank[: tile.shape[0], : tile.shape[1]]).all())

    def encode_or_blank(tile: Optional[np.ndarray]) -> bytes:
        if tile is None or is_blank(tile):
            return blank_bytes
        return encode(tile)

    # The scratch folder is hidden and locked like the temporary TIFF
    # (``io_utils``): a killed run's leftovers are removed by the next run.
    with atomic_path(path, suffix=".tif") as tmp, temp_dir(path) as scratch, concurrent.futures.ThreadPoolExecutor(
        workers
    ) as pool, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tiff:
        prev_file: Optional[str] = None
        for level, (lw, lh) in enumerate(dims):
            need_next = level + 1 < len(dims) and level_source is None
            next_file = os.path.join(scratch, f"level{level + 1}.raw") if need_next else None
            tiles = _level_tiles(
                level, (lw, lh), tiff_tile_px, pool, tile_source, level_source, prev_file, next_file,
                fit, is_blank, encode_or_blank, resample, dtype, sample_shape, background,
            )
            kwargs = {}
            if mpp is not None:
                res = 1e4 / (mpp * (width / lw))  # pixels per centimetre at this level
                kwargs.update(resolution=(res, res), resolutionunit="CENTIMETER")
            if compression == "jpeg" and channels == 3:
                kwargs.update(subsampling=(2, 2))
            tiff.write(
                data=tiles,
                shape=(lh, lw, *sample_shape),
                dtype=dtype,
                tile=(tiff_tile_px, tiff_tile_px),
                photometric="rgb" if channels == 3 else "minisblack",
                compression=None if compression == "none" else compression,
                subfiletype=0 if level == 0 else 1,
                description=description if level == 0 else None,
                metadata=None,
                **kwargs,
            )
            tiles.close()  # closes this level's scratch output
            if prev_file is not None:
                os.remove(prev_file)
            prev_file = next_file
    return dims


def _encoder(compression: str, channels: int, quality: int) -> Callable[[np.ndarray], bytes]:
    if compression == "jpeg":
        if channels == 3:
            # What tifffile itself writes for photometric RGB + JPEG: YCbCr 4:2:0.
            return lambda t: imagecodecs.jpeg8_encode(
                t, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
            )
        return lambda t: imagecodecs.jpeg8_encode(t, level=quality)
    if compression == "deflate":
        return lambda t: imagecodecs.zlib_encode(np.ascontiguousarray(t), level=6)
    return lambda t: np.ascontiguousarray(t).tobytes()


def _downsample2(tile: np.ndarray, resample: str) -> np.ndarray:
    """A full (even-sided) tile halved by 2x2 mean, nearest or max."""
    if resample == "nearest":
        return tile[::2, ::2]
    quads = (tile[0::2, 0::2], tile[1::2, 0::2], tile[0::2, 1::2], tile[1::2, 1::2])
    if resample == "max":
        return np.maximum(np.maximum(quads[0], quads[1]), np.maximum(quads[2], quads[3]))
    if np.issubdtype(tile.dtype, np.integer):
        acc = sum(q.astype(np.uint32) for q in quads)
        return ((acc + 2) // 4).astype(tile.dtype)
    return ((quads[0] + quads[1] + quads[2] + quads[3]) / 4).astype(tile.dtype)


def _level_tiles(
    level, dims, tiff_tile_px, pool, tile_source, level_source, prev_file, next_file,
    fit, is_blank, encode_or_blank, resample, dtype, sample_shape, background,
):
    """Yields the encoded tiles of one level in row-major order.

    Level 0 comes from ``tile_source``; lower levels from ``level_source`` or
    from the raw half-resolution bands the previous level wrote to
    ``prev_file``.  When ``next_file`` is set, this level's halved bands are
    appended there for the next level.
    """
    lw, lh = dims
    cols, rows = -(-lw // tiff_tile_px), -(-lh // tiff_tile_px)
    half = tiff_tile_px // 2
    next_w, next_h = -(-lw // 2), -(-lh // 2)
    row_bytes = lw * int(np.prod(sample_shape or (1,))) * dtype.itemsize
    out = open(next_file, "wb") if next_file else None
    try:
        for r in range(rows):
            y = r * tiff_tile_px
            th = min(tiff_tile_px, lh - y)
            band = None
            if level > 0 and level_source is None:
                # The previous level wrote exactly lh rows of lw samples.
                band = np.fromfile(prev_file, dtype=dtype, count=th * row_bytes // dtype.itemsize,
                                   offset=y * row_bytes).reshape(th, lw, *sample_shape)

            def one(c, y=y, th=th, band=band):
                x = c * tiff_tile_px
                tw = min(tiff_tile_px, lw - x)
                where = f"level {level} ({x}, {y}, {tw}, {th})"
                if level == 0:
                    tile = fit(tile_source(x, y, tw, th), tw, th, where)
                elif level_source is not None:
                    tile = fit(level_source(level, x, y, tw, th), tw, th, where)
                else:
                    region = band[:, x:x + tw]
                    if is_blank(region):
                        tile = None
                    else:
                        tile = fit(region, tw, th, where)
                small = None
                if out is not None and tile is not None:
                    small = _downsample2(tile, resample)
                return encode_or_blank(tile), small

            results = list(pool.map(one, range(cols)))
            # The band goes out before the row's tiles are yielded: the writer
            # stops pulling after the last tile, so code after it never runs.
            if out is not None:
                next_rows = min(half, next_h - y // 2)
                next_band = np.full((half, cols * half, *sample_shape), background, dtype)
                for c, (_, small) in enumerate(results):
                    if small is not None:
                        next_band[:, c * half:(c + 1) * half] = small
                out.write(np.ascontiguousarray(next_band[:next_rows, :next_w]).tobytes())
                out.flush()
            for encoded, _ in results:
                yield encoded
            del results
    finally:
        if out is not None:
            out.close()
