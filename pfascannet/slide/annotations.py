"""ASAP XML annotations, polygon rasterising and Camelyon-style mask TIFFs.

The ground truth of Camelyon16/17 (and of the synthetic cohort, DESIGN.md §3-4)
is a set of ASAP polygons in level-0 pixel coordinates. Groups ``_0``, ``_1``
and ``Tumor`` are tumour; ``_2``, ``Exclusion`` and ``None`` are excluded
regions cut out of the tumour (holes). The organisers' evaluation reads a
pyramidal mask TIFF with tumour = 255 on its level-5 page (downsample 32); the
paper's training masks (512 x 512 centred in each 692 patch, §2.1/Fig. 1) are
windows of the same raster at level 0.

Pixel convention (used by :func:`rasterize`, :func:`write_mask_tiff` and so by
every mask in the project):

* Polygon vertices are continuous level-0 coordinates in which level-0 pixel
  ``i`` has its centre at ``i`` (OpenSlide, ASAP and OpenCV agree on this).
* Output pixel ``(r, c)`` at downsample ``ds`` with level-0 origin
  ``(ox, oy)`` is the cell of level-0 pixels ``[ox + ds*c, ox + ds*(c+1))``
  by ``[oy + ds*r, oy + ds*(r+1))``; its centre is ``ox + ds*c + (ds-1)/2``.
* The cell is tumour when its centre lies inside a tumour polygon and not
  inside an exclusion polygon; left/top edges count as inside, right/bottom
  edges as outside (half-open, so a polygon's raster has its exact area and
  adjacent windows tile without overlap). Cells wholly off the slide are 0.

This centre-sampling rule is unbiased at every level (a raster's area equals
the polygon's, up to sampling noise), so a level-5 page says what the level-0
polygons say about each 32 x 32 cell, which the Camelyon evaluation looks up as
``mask[Y // 32, X // 32]``. OpenCV's ``fillPoly`` instead sets every pixel an
edge passes within half a pixel of, which grows each lesion by half an output
pixel per side (a 1-px diameter error at level 5, ~8 µm, next to the 35-px
ITC threshold). So the fill here is a numpy scanline conversion painted as
merged runs, which is as fast (a Camelyon-sized level 5 in about a second).
"""

from __future__ import annotations

import math
import os
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import defusedxml
import defusedxml.ElementTree as DET
import numpy as np
import tifffile

from pfascannet import io_utils
from pfascannet.camelyon import (EXCLUSION_GROUPS, MASK_DOWNSAMPLE, MASK_LEVEL, MASK_TUMOUR_VALUE,
                                 TUMOUR_GROUPS)
from pfascannet.errors import PfaError
from pfascannet.slide.tiff_writer import pyramid_dimensions, write_pyramid_tiff

# Annotation types that enclose an area; Dot / PointSet carry no region.
AREA_TYPES = frozenset({"polygon", "spline", "rectangle"})

_GROUP_COLOURS = {True: "#d0021b", False: "#64fe2e"}


class AnnotationError(PfaError):
    """An annotation file that is missing, malformed or hostile; the message names it."""


@dataclass(frozen=True, eq=False)
class Annotation:
    """One ASAP annotation: a closed polygon in level-0 ``(x, y)`` pixels.

    Attributes:
      name: the annotation's ``Name`` attribute.
      group: its ``PartOfGroup`` (``_0``/``_1``/``Tumor`` tumour; ``_2``/
        ``Exclusion``/``None`` exclusion).
      coords_xy: float64 ``(N, 2)`` level-0 ``x, y`` vertices (read-only).
      type: ASAP's ``Type`` (``Polygon``, ``Spline``, ``Rectangle``, ``Dot``,
        ``PointSet``); only area types are rasterised.
    """

    name: str
    group: str
    coords_xy: np.ndarray
    type: str = "Polygon"

    def __post_init__(self):
        coords = np.array(self.coords_xy, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
            raise AnnotationError(
                f"annotation {self.name!r}: coords_xy must be an (N, 2) array with N >= 1, "
                f"got shape {coords.shape}"
            )
        if not np.isfinite(coords).all():
            raise AnnotationError(f"annotation {self.name!r}: coordinates must be finite")
        coords.setflags(write=False)
        object.__setattr__(self, "coords_xy", coords)
        # Cached: rasterising a window tests every annotation's bounds first.
        lo, hi = coords.min(axis=0), coords.max(axis=0)
        object.__setattr__(self, "_bounds", (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])))

    @property
    def is_tumour(self) -> bool:
        """True for Camelyon's tumour groups (``_0``, ``_1``, ``Tumor``, metastasis)."""
        return self.group.strip().lower() in TUMOUR_GROUPS

    @property
    def is_exclusion(self) -> bool:
        """True for Camelyon's excluded regions (``_2``, ``Exclusion``, ``None``)."""
        return self.group.strip().lower() in EXCLUSION_GROUPS

    @property
    def is_area(self) -> bool:
        """True if the annotation encloses an area (>= 3 vertices, not a point set)."""
        return self.type.strip().lower() in AREA_TYPES and len(self.coords_xy) >= 3

    def bounds_xy(self) -> tuple[float, float, float, float]:
        """``(x_min, y_min, x_max, y_max)`` in level-0 pixels."""
        return self._bounds

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Annotation):
            return NotImplemented
        return (
            self.name == other.name
            and self.group == other.group
            and self.type == other.type
            and np.array_equal(self.coords_xy, other.coords_xy)
        )

    __hash__ = None  # mutable-looking array field: compare, never hash


# ---------------------------------------------------------------------------
# ASAP XML


def read_asap_xml(path: str | os.PathLike) -> list[Annotation]:
    """Reads an ASAP XML annotation file with a hardened parser.

    DTDs, entities and external references are refused (defusedxml with
    ``forbid_dtd``): ASAP never writes them, and they are how an XML file
    reads local files (XXE) or exhausts memory ("billion laughs").

    Args:
      path: the ``.xml`` file.

    Returns:
      The annotations in file order, vertices sorted by their ``Order``.

    Raises:
      AnnotationError: missing, empty, malformed, hostile or non-ASAP file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AnnotationError(f"{path}: no such annotation file")
    if os.path.isdir(path):
        raise AnnotationError(f"{path}: is a directory, not an ASAP XML file")
    if os.path.getsize(path) == 0:
        raise AnnotationError(f"{path}: empty annotation file (0 bytes)")
    with open(path, "rb") as f:
        return parse_asap_xml(f.read(), path)


def parse_asap_xml(data: bytes, source: str) -> list[Annotation]:
    """``read_asap_xml`` on the bytes of an ASAP XML file (e.g. a member of a zip), hardened the same way.

    Args:
      data: the file's bytes.
      source: what to name in errors (``lesion_annotations.zip:tumor_001.xml``).
    """
    path = source
    if not data:
        raise AnnotationError(f"{path}: empty annotation file (0 bytes)")
    try:
        root = DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DTDForbidden as exc:
        raise AnnotationError(
            f"{path}: refused: the XML declares a DTD (possible entity-expansion or "
            "external-entity attack); ASAP files have none"
        ) from exc
    except defusedxml.EntitiesForbidden as exc:
        raise AnnotationError(
            f"{path}: refused: the XML declares entities (possible billion-laughs or "
            "external-entity attack)"
        ) from exc
    except defusedxml.DefusedXmlException as exc:
        raise AnnotationError(f"{path}: refused: unsafe XML ({type(exc).__name__})") from exc
    except ET.ParseError as exc:
        raise AnnotationError(f"{path}: malformed XML ({exc})") from exc
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(f"{path}: not an ASAP annotation file (root element <{root.tag}>, "
                              "expected <ASAP_Annotations>)")
    annotations = []
    for index, node in enumerate(root.iter("Annotation")):
        name = node.get("Name", f"Annotation {index}")
        group = node.get("PartOfGroup", "None")
        kind = node.get("Type", "Polygon")
        coords = []
        for coord in node.iter("Coordinate"):
            try:
                order = float(coord.get("Order", len(coords)))
                x = _parse_number(coord.get("X"))
                y = _parse_number(coord.get("Y"))
            except (TypeError, ValueError) as exc:
                raise AnnotationError(
                    f"{path}: annotation {name!r} has a coordinate with a missing or non-numeric "
                    f"X/Y/Order ({dict(coord.attrib)})"
                ) from exc
            coords.append((order, x, y))
        if not coords:
            raise AnnotationError(f"{path}: annotation {name!r} has no coordinates")
        coords.sort(key=lambda t: t[0])
        try:
            annotations.append(Annotation(name, group, np.array([c[1:] for c in coords]), kind))
        except AnnotationError as exc:
            raise AnnotationError(f"{path}: {exc}") from exc
    return annotations


def _parse_number(text: Optional[str]) -> float:
    if text is None:
        raise ValueError("missing")
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        # Some Camelyon17 files were exported with a decimal comma.
        return float(text.replace(",", "."))


def write_asap_xml(path: str | os.PathLike, annotations: Sequence[Annotation]) -> None:
    """Writes annotations as ASAP XML (with an ``AnnotationGroups`` section), atomically.

    Coordinates are written with ``repr`` precision, so reading the file back
    gives the same float64 vertices.
    """
    root = ET.Element("ASAP_Annotations")
    annos = ET.SubElement(root, "Annotations")
    groups: dict[str, bool] = {}
    for a in annotations:
        groups.setdefault(a.group, a.is_tumour)
        node = ET.SubElement(
            annos,
            "Annotation",
            Name=a.name,
            Type=a.type,
            PartOfGroup=a.group,
            Color=_GROUP_COLOURS[a.is_tumour],
        )
        coords = ET.SubElement(node, "Coordinates")
        for order, (x, y) in enumerate(a.coords_xy):
            ET.SubElement(coords, "Coordinate", Order=str(order), X=repr(float(x)), Y=repr(float(y)))
    group_root = ET.SubElement(root, "AnnotationGroups")
    for group, tumour in groups.items():
        g = ET.SubElement(group_root, "Group", Name=group, PartOfGroup="None", Color=_GROUP_COLOURS[tumour])
        ET.SubElement(g, "Attributes")
    ET.indent(root, space="\t")
    text = '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
    io_utils.write_text(path, text)


# ---------------------------------------------------------------------------
# Rasterising


def rasterize(
    annotations: Iterable[Annotation],
    dimensions_xy: tuple[int, int],
    downsample: float = 1.0,
    *,
    origin_xy: tuple[int, int] = (0, 0),
    size_wh: Optional[tuple[int, int]] = None,
) -> np.ndarray:
    """Tumour mask of a slide (or a window of it) at any downsample.

    See the module docstring for the pixel convention: output pixel ``(r, c)``
    is the level-0 cell ``[ox + ds*c, ox + ds*(c+1)) x [oy + ds*r, oy + ds*(r+1))``,
    tumour iff its centre is inside a tumour polygon and outside every
    exclusion polygon.

    Args:
      annotations: the slide's annotations; non-area types (Dot, PointSet) and
        groups that are neither tumour nor exclusion are ignored.
      dimensions_xy: the slide's level-0 ``(width, height)``; cells wholly
        outside it are 0.
      downsample: level-0 pixels per output pixel (1 for a training mask,
        32 for Camelyon's level 5).
      origin_xy: level-0 ``(x, y)`` of the window's top-left corner.
      size_wh: output ``(w, h)`` in output pixels; default: up to the slide's
        right/bottom edge, ``ceil((W - ox) / ds)`` by ``ceil((H - oy) / ds)``.

    Returns:
      uint8 ``(h, w)``: 255 tumour, 0 elsewhere.

    Raises:
      AnnotationError: non-positive downsample or size.
    """
    ds = float(downsample)
    if not ds > 0 or not math.isfinite(ds):
        raise AnnotationError(f"downsample must be a positive number, got {downsample}")
    width0, height0 = int(dimensions_xy[0]), int(dimensions_xy[1])
    ox, oy = origin_xy
    if size_wh is None:
        size_wh = (max(math.ceil((width0 - ox) / ds), 0), max(math.ceil((height0 - oy) / ds), 0))
    w, h = int(size_wh[0]), int(size_wh[1])
    if w < 0 or h < 0:
        raise AnnotationError(f"window size must be non-negative, got {size_wh}")
    out = np.zeros((h, w), dtype=np.uint8)
    if w == 0 or h == 0:
        return out
    annotations = [a for a in annotations if a.is_area and (a.is_tumour or a.is_exclusion)]
    # Window bounds in level-0 centre coordinates, with a one-cell margin.
    x_lo, x_hi = ox - ds, ox + ds * (w + 1)
    y_lo, y_hi = oy - ds, oy + ds * (h + 1)

    def overlapping(a: Annotation) -> bool:
        bx0, by0, bx1, by1 = a.bounds_xy()
        return bx1 >= x_lo and bx0 <= x_hi and by1 >= y_lo and by0 <= y_hi

    tumour = [a for a in annotations if a.is_tumour and overlapping(a)]
    if not tumour:
        return out
    exclusion = [a for a in annotations if a.is_exclusion and overlapping(a)]
    out = _fill(tumour, ox, oy, ds, w, h)
    if exclusion:
        np.bitwise_and(out, ~_fill(exclusion, ox, oy, ds, w, h), out=out)
    # Cells wholly off the slide carry no tumour even if a polygon strays there.
    cols = ox + ds * np.arange(w)
    rows = oy + ds * np.arange(h)
    out[:, (cols >= width0) | (cols + ds <= 0)] = 0
    out[(rows >= height0) | (rows + ds <= 0), :] = 0
    return out


def _split_offset(origin: float, ds: float) -> tuple[int, float]:
    """Window origin in output pixels as (integer part, fraction).

    Crossings are computed in slide-wide output coordinates minus only the
    fraction, and the integer part is subtracted after rounding: a window whose
    origin is a multiple of ``ds`` is then bit-for-bit a crop of the full raster.
    """
    off = origin / ds
    k = math.floor(off)
    return k, off - k


def _fill(annotations: Sequence[Annotation], ox: float, oy: float, ds: float, w: int, h: int) -> np.ndarray:
    """uint8 (h, w): 255 on the union of the polygons' interiors (even-odd within each), centre-sampled."""
    kx, fx = _split_offset(ox, ds)
    ky, fy = _split_offset(oy, ds)
    centre = (ds - 1.0) / 2.0
    all_rows, all_start, all_end = [], [], []
    for a in annotations:
        # Output-pixel units, cell centres at integers (slide-wide, minus the fraction).
        u = (a.coords_xy[:, 0] - centre) / ds - fx
        v = (a.coords_xy[:, 1] - centre) / ds - fy
        u1, v1 = np.roll(u, -1), np.roll(v, -1)
        moving = v != v1  # horizontal edges cross no row centre
        u0, v0, u1, v1 = u[moving], v[moving], u1[moving], v1[moving]
        if u0.size == 0:
            continue
        vlo, vhi = np.minimum(v0, v1), np.maximum(v0, v1)
        # Rows r (slide-wide) with vlo <= r < vhi, clipped to the window's rows.
        r_start = np.maximum(np.ceil(vlo).astype(np.int64), ky)
        r_end = np.minimum(np.ceil(vhi).astype(np.int64), ky + h)
        count = np.maximum(r_end - r_start, 0)
        total = int(count.sum())
        if total == 0:
            continue
        edge = np.repeat(np.arange(u0.size), count)
        first = np.repeat(np.cumsum(count) - count, count)
        rows = r_start[edge] + (np.arange(total) - first)
        x = u0[edge] + (rows - v0[edge]) * ((u1 - u0) / (v1 - v0))[edge]
        order = np.lexsort((x, rows))
        rows, x = rows[order], x[order]
        # Each row crosses a closed polygon an even number of times (half-open
        # rule), so consecutive sorted crossings pair up into spans.
        r_pair = rows[0::2]
        if r_pair.size != rows[1::2].size or not np.array_equal(r_pair, rows[1::2]):
            raise AnnotationError(f"annotation {a.name!r}: polygon could not be scan-converted")
        all_rows.append(r_pair - ky)
        # Columns c with x_a <= c < x_b.
        all_start.append(np.clip(np.ceil(x[0::2]).astype(np.int64) - kx, 0, w))
        all_end.append(np.clip(np.ceil(x[1::2]).astype(np.int64) - kx, 0, w))
    if not all_rows:
        return np.zeros((h, w), dtype=np.uint8)
    return _paint_spans(np.concatenate(all_rows), np.concatenate(all_start), np.concatenate(all_end), w, h)


def _paint_spans(rows: np.ndarray, start: np.ndarray, end: np.ndarray, w: int, h: int) -> np.ndarray:
    """uint8 ``(h, w)`` image, 255 on the union of spans ``[start, end)`` of their rows.

    Overlapping spans (of different polygons) are merged, then the image is
    one ``np.repeat`` of alternating 0/255 runs over the flattened rows: a
    memset-speed fill, where a per-row cumulative sum costs ~10x more.
    """
    keep = start < end
    rows, start, end = rows[keep], start[keep], end[keep]
    if rows.size == 0:
        return np.zeros((h, w), dtype=np.uint8)
    order = np.lexsort((start, rows))
    rows, start, end = rows[order], start[order], end[order]
    # Keys row * (w + 1) + col grow across rows, so one running maximum gives
    # every span the furthest end reached so far in its own row.
    base = rows * (w + 1)
    reach = np.maximum.accumulate(base + end)
    previous = np.concatenate(([-1], reach[:-1]))
    opens = base + start > previous  # a span that starts a new merged run
    first = np.flatnonzero(opens)
    last = np.concatenate((first[1:] - 1, [rows.size - 1]))
    run_start = rows[first] * w + start[first]
    run_end = rows[last] * w + (reach[last] - base[last])
    bounds = np.empty(2 * first.size, dtype=np.int64)
    bounds[0::2], bounds[1::2] = run_start, run_end
    lengths = np.diff(bounds, prepend=0, append=h * w)
    values = np.zeros(lengths.size, dtype=np.uint8)
    values[1::2] = MASK_TUMOUR_VALUE
    return np.repeat(values, lengths).reshape(h, w)


# ---------------------------------------------------------------------------
# Mask TIFFs


def mask_level_count(dimensions_xy: tuple[int, int], min_side_px: int = 512) -> int:
    """Pyramid levels of a mask TIFF: halving until the longer side <= min_side_px, and at least 6.

    Six levels guarantee Camelyon's level-5 page (downsample 32) on any slide.
    """
    return max(len(pyramid_dimensions(dimensions_xy, min_side_px)), MASK_LEVEL + 1)


def write_mask_tiff(
    path: str | os.PathLike,
    annotations: Sequence[Annotation],
    dimensions_xy: tuple[int, int],
    mpp: Optional[float] = None,
    *,
    tiff_tile_px: int = 512,
) -> None:
    """Writes a Camelyon-style pyramidal mask TIFF (tumour 255, one channel), atomically.

    Page ``k`` is the raster at downsample ``2**k`` with size
    ``ceil(W / 2**k) x ceil(H / 2**k)``, rasterised directly from the polygons
    (so every page, level 5 included, equals :func:`rasterize` at its
    downsample, rather than a resampled copy of level 0) tile by tile through
    :func:`pfascannet.slide.tiff_writer.write_pyramid_tiff`: memory stays at
    a band of tiles whatever the slide size. Pages are tiled,
    deflate-compressed and successive, which OpenSlide opens as ``generic-tiff``.

    Args:
      path: the output ``.tif``.
      annotations: the slide's annotations.
      dimensions_xy: the slide's level-0 ``(width, height)``.
      mpp: microns per level-0 pixel, written as resolution tags (OpenSlide
        reports it as ``openslide.mpp-x``); None writes none.
      tiff_tile_px: tile side, a multiple of 16.

    Raises:
      AnnotationError: non-positive dimensions.
    """
    width0, height0 = int(dimensions_xy[0]), int(dimensions_xy[1])
    if width0 <= 0 or height0 <= 0:
        raise AnnotationError(f"{os.fspath(path)}: slide dimensions must be positive, got {dimensions_xy}")
    annotations = [a for a in annotations if a.is_area and (a.is_tumour or a.is_exclusion)]

    # The writer asks for one tile at a time, from worker threads, a row of
    # tiles at a time. Rasterising a band of up to ``chunk_px`` columns once and
    # slicing its tiles costs one scan conversion per band instead of one per
    # tile; only the current row's bands are kept (<= W x tiff_tile_px bytes).
    chunk_px = max(tiff_tile_px, (8192 // tiff_tile_px) * tiff_tile_px)
    bands: dict[tuple[int, int, int], list] = {}
    bands_lock = threading.Lock()

    def level_source(level: int, x: int, y: int, w: int, h: int) -> Optional[np.ndarray]:
        ds = 2**level
        level_w = -(-width0 // ds)
        x0 = (x // chunk_px) * chunk_px
        key = (level, y, x0)
        with bands_lock:
            entry = bands.get(key)
            if entry is None:
                for old in [k for k in bands if k[:2] != (level, y)]:
                    del bands[old]
                entry = bands[key] = [threading.Lock(), None]
        with entry[0]:
            if entry[1] is None:
                entry[1] = rasterize(
                    annotations,
                    (width0, height0),
                    ds,
                    origin_xy=(x0 * ds, y * ds),
                    size_wh=(min(chunk_px, level_w - x0), h),
                )
        tile = entry[1][:, x - x0:x - x0 + w]
        return tile if tile.any() else None  # None: the writer reuses one encoded blank tile

    write_pyramid_tiff(
        path,
        (width0, height0),
        lambda x, y, w, h: level_source(0, x, y, w, h),
        tiff_tile_px=tiff_tile_px,
        mpp=mpp,
        compression="deflate",
        channels=1,
        level_source=level_source,
        num_levels=mask_level_count((width0, height0)),
        description="pfascannet tumour mask (255 = tumour)",
    )


def read_mask_level(path: str | os.PathLike, downsample: int = MASK_DOWNSAMPLE) -> np.ndarray:
    """The page of a mask TIFF at ``downsample`` (level 5 by default), as uint8 ``(h, w)``.

    Reads with tifffile the page whose size is ``W / downsample`` (rounded
    either way, as writers differ) so pixel values come back exactly (no
    resampling or RGBA conversion); multi-channel masks give their first channel.

    Raises:
      AnnotationError: missing or unreadable file, or no page at that downsample.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AnnotationError(f"{path}: no such mask file")
    if os.path.getsize(path) == 0:
        raise AnnotationError(f"{path}: empty mask file (0 bytes)")
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            h0, w0 = pages[0].shape[:2]
            want = (w0 / downsample, h0 / downsample)
            for page in pages:
                h, w = page.shape[:2]
                if abs(w - want[0]) < 1 and abs(h - want[1]) < 1:
                    arr = page.asarray()
                    break
            else:
                sizes = ", ".join(f"{p.shape[1]}x{p.shape[0]}" for p in pages)
                raise AnnotationError(
                    f"{path}: no page at downsample {downsample} (level-0 {w0}x{h0}; pages {sizes})"
                )
    except AnnotationError:
        raise
    except Exception as exc:  # tifffile raises many kinds on a broken file
        raise AnnotationError(f"{path}: cannot read mask TIFF ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 3:
        arr = arr[..., 0]
    return np.ascontiguousarray(arr.astype(np.uint8, copy=False))
