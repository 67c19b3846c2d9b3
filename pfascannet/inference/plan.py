"""The ROI plan of a whole-slide scan, from eq. (1), over tissue only.

Zhao et al., MICCAI 2019, §2.2: an ROI of side ``LR = Lp + (Lm - 1) Sp/alpha``
yields an ``Lm x Lm`` probability tile, and ROIs placed ``SR = (Sp/alpha) Lm``
apart tile the output exactly.  We place ROI ``(i, j)`` of the grid at scan-level
top-left ``(j SR - o, i SR - o)`` with ``o = geometry.map_origin_px(alpha)``, so
map pixel ``(r, c)`` covers the level-0 cell ``[S c, S (c + 1)) x [S r, S (r + 1))``
with ``S = (Sp / alpha) * downsample(scan level)``: at alpha 16 on level 0 that is
exactly Camelyon's level-5 grid.  The map has ``ceil(H / S) x ceil(W / S)`` pixels;
the parts of ROIs beyond the slide read as white (OpenSlide returns transparent
there and the reader composites on white), and the parts of the last row and
column of tiles beyond the map are dropped.

Every map pixel lies in exactly one ROI; an ROI whose pixels hold no tissue is
not planned at all (its map pixels stay 0, the background probability).

Edge ROIs (``split``): at the tissue's edge most of an ROI's tile is glass.
With ``split = s`` an ROI's ``Lm x Lm`` tile is cut into ``s x s`` sub-tiles of
``Lm/s``; when the sub-tiles that hold tissue cost fewer input pixels than the
whole ROI (``n (LR_sub)^2 < LR^2``, with ``LR_sub = Lp + (Lm/s - 1) Sp/alpha``),
only those are planned, as smaller ROIs of side ``LR_sub`` at the sub-tile's
place.  By the central invariant (DESIGN.md §1) their outputs are the very
pixels the whole ROI would give there; the saving is the margins and glass
not computed (at alpha 16, LR 2708: a quarter-tile ROI of 1684 px costs 39 %
of a whole one, so ROIs with tissue in one or two quarters are split).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Optional

import numpy as np

from pfascannet import geometry
from pfascannet.errors import PfaError
from pfascannet.slide.resample import ReadPlan, native_plan


class PlanError(PfaError, ValueError):
    """A scan plan that cannot be made (bad level, tissue mask of the wrong shape...)."""


@dataclasses.dataclass(frozen=True, eq=False)
class RoiPlan:
    """Where the ROIs of one slide go and which map pixels each fills.

    Attributes:
      geometry: alpha and ROI side LR (scan-level pixels).
      dimensions: level-0 slide ``(width, height)``.
      scan_level: the pyramid level ROIs are read at.
      downsample: level-0 pixels per model pixel: the level's whole downsample
        for a native read, a Fraction where the slide is resampled to the
        model's pixel size (``read``); the map stride ``S`` is whole either way.
      rois_rowcol: int array ``[K, 2]`` of planned ROI grid positions ``(i, j)``,
        row-major; ROI ``k`` fills map rows ``i Lm ..`` and columns ``j Lm ..``.
      split: s of the edge ROIs (1: none).
      edge_rowcol: int array ``[E, 2]`` of planned edge ROIs, positions
        ``(a, b)`` on the grid of sub-tiles (side ``Lm/s``); they are ROIs
        ``K .. K+E-1`` of the plan, after the whole ones.
    """

    geometry: geometry.ScanGeometry
    dimensions: tuple[int, int]
    scan_level: int
    downsample: int
    rois_rowcol: np.ndarray
    split: int = 1
    edge_rowcol: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.int64))
    read: Optional[ReadPlan] = None

    def __post_init__(self):
        if self.read is None:  # a native read of scan_level (the plan before the resolution contract)
            object.__setattr__(self, "read", native_plan(self.scan_level, int(self.downsample)))

    @property
    def stride_px(self) -> int:
        """S: level-0 pixels per map pixel."""
        return self.read.stride_px(self.geometry.stride_px)

    @property
    def tile_px(self) -> int:
        """Lm: map pixels per ROI side."""
        return self.geometry.tile_px

    @property
    def map_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the probability map: ``ceil(H / S), ceil(W / S)``."""
        w, h = self.dimensions
        return -(-h // self.stride_px), -(-w // self.stride_px)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the full ROI grid (planned or not)."""
        rows, cols = self.map_shape
        return -(-rows // self.tile_px), -(-cols // self.tile_px)

    def __len__(self) -> int:
        return int(self.rois_rowcol.shape[0] + self.edge_rowcol.shape[0])

    @property
    def n_whole(self) -> int:
        """K: the whole ROIs (plan indices ``0 .. K-1``); edge ROIs follow."""
        return int(self.rois_rowcol.shape[0])

    @property
    def edge_tile_px(self) -> int:
        """Map pixels per edge-ROI side (``Lm / split``)."""
        return self.tile_px // self.split

    @property
    def edge_roi_px(self) -> int:
        """Side of an edge ROI in scan-level pixels (eq. (1) for ``Lm / split``)."""
        return geometry.roi_px(self.edge_tile_px, self.geometry.alpha)

    def _cell(self, k: int) -> tuple[int, int, int]:
        # (first map row, first map column, tile side in map px) of ROI k
        if k < self.n_whole:
            i, j = (int(v) for v in self.rois_rowcol[k])
            lm = self.tile_px
        else:
            i, j = (int(v) for v in self.edge_rowcol[k - self.n_whole])
            lm = self.edge_tile_px
        return i * lm, j * lm, lm

    def roi_side_px(self, k: int) -> int:
        """LR of ROI ``k`` in scan-level pixels (smaller for edge ROIs)."""
        return self.geometry.roi_px if k < self.n_whole else self.edge_roi_px

    def roi_origin(self, k: int) -> tuple[int, int]:
        """Model-pixel ``(x, y)`` of ROI ``k``'s top-left on the slide's model-pixel grid (``ReadPlan.read``)."""
        r0, c0, _ = self._cell(k)
        stride = self.geometry.stride_px
        origin = geometry.map_origin_px(self.geometry.alpha)
        return c0 * stride - origin, r0 * stride - origin

    def roi_xy(self, k: int) -> tuple[float, float]:
        """Level-0 ``(x, y)`` of ROI ``k``'s top-left (negative at the top/left edge; whole for native reads)."""
        u, v = self.roi_origin(k)
        x, y = u * self.read.scale, v * self.read.scale
        return (int(x), int(y)) if x.denominator == y.denominator == 1 else (float(x), float(y))

    def read_roi(self, reader, k: int) -> np.ndarray:
        """RGB uint8 ``[LR, LR, 3]`` of ROI ``k`` at the model's pixel size (``read``)."""
        return self.read.read(reader, self.roi_origin(k), self.roi_side_px(k))

    def roi_window(self, k: int) -> tuple[int, int, int, int]:
        """Map rows ``r0:r1`` and columns ``c0:c1`` that ROI ``k`` fills (clipped to the map)."""
        r0, c0, lm = self._cell(k)
        rows, cols = self.map_shape
        return r0, min(r0 + lm, rows), c0, min(c0 + lm, cols)

    def planned_mask(self) -> np.ndarray:
        """Bool ``map_shape``: the map pixels the planned ROIs fill (whole and edge)."""
        need = np.zeros(self.map_shape, bool)
        for k in range(len(self)):
            r0, r1, c0, c1 = self.roi_window(k)
            need[r0:r1, c0:c1] = True
        return need

    def input_px(self) -> int:
        """Scan-level input pixels of all planned ROIs (what the model computes over)."""
        return self.n_whole * self.geometry.roi_px**2 + int(self.edge_rowcol.shape[0]) * self.edge_roi_px**2

    def describe(self) -> dict:
        """The plan's numbers for the map's JSON sidecar."""
        return {
            "alpha": self.geometry.alpha,
            "roi_px": self.geometry.roi_px,
            "tile_px": self.tile_px,
            "stride_px": self.stride_px,
            "scan_level": self.scan_level,
            "downsample": _json_number(self.downsample),
            "read": self.read.describe(),
            "dimensions": list(self.dimensions),
            "map_shape": list(self.map_shape),
            "map_origin_px": geometry.map_origin_px(self.geometry.alpha),
            "n_rois": len(self),
            "n_rois_grid": self.grid_shape[0] * self.grid_shape[1],
            # Only with edge ROIs, so plans (and checkpoints) made before them stay the same.
            **({"split": self.split, "n_edge_rois": int(self.edge_rowcol.shape[0]),
                "edge_roi_px": self.edge_roi_px} if self.edge_rowcol.shape[0] else {}),
        }


def _json_number(v):
    v = Fraction(v)
    return int(v) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def level_downsample(level_downsamples: tuple[float, ...], level: int) -> int:
    """The whole downsample of ``level``; raises where a pyramid level is not a whole power.

    The map grid is whole level-0 cells, so a level whose downsample is not a
    whole number (within 1%, as OpenSlide reports 2.0004 for odd sides) would
    misplace ROIs.
    """
    if not 0 <= level < len(level_downsamples):
        raise PlanError(f"scan level {level} out of range 0..{len(level_downsamples) - 1}")
    ds = float(level_downsamples[level])
    whole = int(round(ds))
    if whole < 1 or abs(ds - whole) > 0.01 * whole:
        raise PlanError(f"scan level {level} has downsample {ds:.4f}, not a whole number; scan at level 0")
    return whole


def tissue_on_map(
    tissue: np.ndarray, tissue_downsample: float, dimensions: tuple[int, int], stride_px: int
) -> np.ndarray:
    """A tissue mask resampled onto the map grid: a map pixel is tissue if any of its mask cells is.

    Args:
      tissue: bool ``(ceil(H / ds), ceil(W / ds))`` mask (True = tissue).
      tissue_downsample: ds, level-0 pixels per mask pixel.
      dimensions: level-0 ``(width, height)``.
      stride_px: S, level-0 pixels per map pixel.

    Returns:
      bool ``(ceil(H / S), ceil(W / S))``.
    """
    w, h = dimensions
    tissue = np.asarray(tissue).astype(bool)
    expected = (math.ceil(h / tissue_downsample), math.ceil(w / tissue_downsample))
    if tissue.ndim != 2 or tissue.shape != expected:
        raise PlanError(
            f"tissue mask has shape {tissue.shape}, expected {expected} "
            f"(ceil(H/{tissue_downsample:g}), ceil(W/{tissue_downsample:g})) for a {w}x{h} slide"
        )
    rows, cols = -(-h // stride_px), -(-w // stride_px)

    # Any-overlap resampling through an integral image: works for any ratio of
    # the two grids, so a 32-px tissue mask serves 16-px and 64-px maps alike.
    def bounds(n_map: int, n_mask: int, extent: int) -> tuple[np.ndarray, np.ndarray]:
        edges = np.minimum(np.arange(n_map + 1, dtype=np.int64) * stride_px, extent)
        lo = np.floor(edges[:-1] / tissue_downsample).astype(np.int64)
        hi = np.ceil(edges[1:] / tissue_downsample).astype(np.int64)
        return np.clip(lo, 0, n_mask), np.clip(np.maximum(hi, lo + 1), 0, n_mask)

    r_lo, r_hi = bounds(rows, tissue.shape[0], h)
    c_lo, c_hi = bounds(cols, tissue.shape[1], w)
    integral = np.zeros((tissue.shape[0] + 1, tissue.shape[1] + 1), np.int64)
    integral[1:, 1:] = tissue.cumsum(0).cumsum(1)
    count = (
        integral[np.ix_(r_hi, c_hi)]
        - integral[np.ix_(r_lo, c_hi)]
        - integral[np.ix_(r_hi, c_lo)]
        + integral[np.ix_(r_lo, c_lo)]
    )
    return count > 0


def make_plan(
    dimensions: tuple[int, int],
    scan_geometry: geometry.ScanGeometry,
    tissue: Optional[np.ndarray] = None,
    tissue_downsample: float = 32,
    scan_level: int = 0,
    downsample: int = 1,
    split: int = 1,
    read: Optional[ReadPlan] = None,
) -> RoiPlan:
    """Plans the ROIs of a slide (§2.2, eq. (1)), keeping only those over tissue.

    Args:
      dimensions: level-0 ``(width, height)``.
      scan_geometry: alpha and ROI side, in scan-level pixels.
      tissue: optional bool tissue mask at ``tissue_downsample``; None plans every ROI.
      tissue_downsample: level-0 pixels per tissue-mask pixel.
      scan_level: pyramid level to read ROIs at (recorded in the plan).
      downsample: that level's whole downsample (see ``level_downsample``).
      split: s > 1 plans edge ROIs (module docstring) where they cost fewer
        input pixels; ignored without a tissue mask or where ``Lm/s`` is not
        whole (``edge_split`` says which s a geometry allows).
      read: how the slide is read at the model's pixel size
        (``slide.resample.plan_read``); it sets the level and the scale, and
        ``scan_level`` / ``downsample`` are ignored.  None: a native read of
        ``scan_level``.

    Returns:
      The RoiPlan; ``len(plan)`` may be 0 for a slide with no tissue.
    """
    w, h = (int(v) for v in dimensions)
    if w < 1 or h < 1:
        raise PlanError(f"slide dimensions must be positive, got {dimensions}")
    if read is not None:
        scan_level, downsample = read.level, read.scale
        downsample = int(downsample) if downsample.denominator == 1 else downsample
    elif isinstance(downsample, bool) or int(downsample) != downsample or downsample < 1:
        raise PlanError(f"downsample must be a whole number >= 1, got {downsample!r}")
    else:
        downsample = int(downsample)
    plan = RoiPlan(scan_geometry, (w, h), int(scan_level), downsample, np.zeros((0, 2), np.int64), read=read)
    grid_rows, grid_cols = plan.grid_shape
    if tissue is None:
        keep = np.ones((grid_rows, grid_cols), bool)
    else:
        on_map = tissue_on_map(tissue, tissue_downsample, (w, h), plan.stride_px)
        lm = plan.tile_px
        padded = np.zeros((grid_rows * lm, grid_cols * lm), bool)
        padded[: on_map.shape[0], : on_map.shape[1]] = on_map
        keep = padded.reshape(grid_rows, lm, grid_cols, lm).any(axis=(1, 3))
    if tissue is None or split <= 1 or edge_split(scan_geometry, split) == 1:
        rois = np.argwhere(keep).astype(np.int64)  # row-major order
        return dataclasses.replace(plan, rois_rowcol=rois)
    sub = lm // split
    # Which sub-tiles of each ROI hold tissue: [rows, s, cols, s] -> per ROI.
    sub_keep = padded.reshape(grid_rows * split, sub, grid_cols * split, sub).any(axis=(1, 3))
    per_roi = sub_keep.reshape(grid_rows, split, grid_cols, split).sum(axis=(1, 3))
    sub_side = geometry.roi_px(sub, scan_geometry.alpha)
    cheaper = keep & (per_roi * sub_side**2 < scan_geometry.roi_px**2)
    rois = np.argwhere(keep & ~cheaper).astype(np.int64)
    edge_mask = sub_keep & np.repeat(np.repeat(cheaper, split, axis=0), split, axis=1)
    edges = np.argwhere(edge_mask).astype(np.int64)
    return dataclasses.replace(plan, rois_rowcol=rois, split=int(split), edge_rowcol=edges)


def edge_split(scan_geometry: geometry.ScanGeometry, split: int = 2) -> int:
    """``split`` if the geometry's tile cuts into ``split x split`` valid sub-tiles, else 1 (no edge ROIs)."""
    lm = scan_geometry.tile_px
    if split <= 1 or lm % split:
        return 1
    try:
        geometry.ScanGeometry(scan_geometry.alpha, geometry.roi_px(lm // split, scan_geometry.alpha))
    except geometry.GeometryError:
        return 1
    return split


def auto_roi_px(
    alpha: int,
    memory_budget_bytes: float,
    batch: int = 1,
    bytes_per_input_px: float = 768.0,
    max_tile_px: int = 256,
) -> int:
    """The largest ROI side on the grid of eq. (1) whose activations fit a memory budget.

    Larger ROIs waste less on the 660-px margins two neighbouring ROIs both
    read (the overlap is ``LR - SR = Lp - Sp/alpha``), so the largest that fits wins.

    Args:
      alpha: dense coefficient.
      memory_budget_bytes: bytes the model may use for one batch.
      batch: ROIs per batch.
      bytes_per_input_px: peak activation bytes per input pixel; the default
        is for the paper's VGG16 widths in float32 (conv1's two 64-channel maps
        plus the next layer's output, 3 * 64 * 4 = 768).
      max_tile_px: cap on Lm (beyond a few hundred the slide edge, not the
        margin, dominates waste).

    Returns:
      LR, a valid ROI side for ``geometry.ScanGeometry(alpha, LR)``.
    """
    geometry.check_alpha(alpha)
    best = None
    for lm in range(1, max_tile_px + 1):
        lr = geometry.roi_px(lm, alpha)
        if batch * lr * lr * bytes_per_input_px > memory_budget_bytes:
            break
        try:
            geometry.ScanGeometry(alpha, lr)
        except geometry.GeometryError:
            continue
        best = lr
    if best is None:
        need = batch * geometry.PATCH_PX**2 * bytes_per_input_px / 2**30
        raise PlanError(
            f"a memory budget of {memory_budget_bytes / 2**30:.2f} GiB does not fit even one "
            f"{geometry.PATCH_PX}-px ROI per batch of {batch} (needs {need:.2f} GiB)"
        )
    return best
