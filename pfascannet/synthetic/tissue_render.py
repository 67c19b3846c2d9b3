"""Procedural H&E-like lymph-node tissue, rendered tile by tile.

What a slide shows (``shared/DESIGN.md`` section 4):

* lymph-node parenchyma: dense small dark nuclei (lymphocytes, ~6.5 um);
* stroma: pink fibrous bands (trabeculae) with sparse elongated nuclei;
* capsule: a pink fibrous rim along the section's edge;
* fat: white vacuoles (adipocytes, ~55-65 um) with thin pink septa;
* tumour (the lesion polygons): nests of larger (~7-15 um), paler,
  pleomorphic, vesicular nuclei with nucleoli and more cytoplasm;
* hard mimics: germinal centres (large pale centroblasts among
  lymphocytes) and sinus histiocytes (large pale oval nuclei in abundant
  cytoplasm), whose mean colour matches tumour so that a colour threshold
  cannot separate them: only nuclear size, shape and arrangement can;
* white glass around the section.

Everything is a pure function of level-0 position: smooth fields live on a
coarse grid (one value per ``FIELD_DS`` level-0 pixels) and are bilinearly
upsampled per tile; nuclei sit on jittered grids whose parameters are hashes
of the grid cell; region polygons are rasterised per tile.  Any tile can
therefore be rendered alone, in any order or thread, and neighbouring tiles
meet without seams.  Only the per-pixel sensor noise depends on the tile
(seeded by its position), as it would on a scanner.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Optional

import cv2
import numpy as np

from pfascannet.slide.annotations import Annotation, rasterize
from pfascannet.synthetic.stain import StainProfile

_TILE_BANK = 1024
_BANK_SLACK = 512

FIELD_DS = 16
"""Level-0 pixels per cell of the smooth fields."""

TISSUE_TRUTH_DS = 32
"""Downsample of the tissue truth PNG (Camelyon's level 5)."""

# Region labels.
BACKGROUND, PARENCHYMA, STROMA, CAPSULE, FAT, GERMINAL_CENTRE, HISTIOCYTES, TUMOUR = range(8)
REGION_NAMES = ("background", "parenchyma", "stroma", "capsule", "fat", "germinal_centre", "sinus_histiocytes", "tumour")
MIMIC_KINDS = {"germinal_centre": GERMINAL_CENTRE, "sinus_histiocytes": HISTIOCYTES}

# Per-region stain amounts: diffuse eosin (cytoplasm, collagen) and diffuse haematoxylin.
_EOSIN = np.array([0.0, 0.22, 0.75, 0.85, 0.55, 0.42, 0.50, 0.45], np.float32)
_H_DIFFUSE = np.array([0.0, 0.16, 0.05, 0.05, 0.02, 0.13, 0.11, 0.12], np.float32)

# Nuclei: two jittered grids.  Per region: probability a grid cell holds a
# nucleus, radius (um), radius spread (+- fraction), minimum aspect
# (minor/major), haematoxylin amount, and whether it is vesicular (pale
# centre, dark rim, nucleolus) as tumour cells, centroblasts and histiocytes are.
_SMALL_PITCH_UM = 8.0
_LARGE_PITCH_UM = 13.5
_SMALL = {  # region: (p, radius_um, spread, min_aspect, H)
    PARENCHYMA: (0.92, 3.2, 0.15, 0.80, 1.55),
    STROMA: (0.12, 3.6, 0.20, 0.25, 1.20),
    CAPSULE: (0.15, 3.8, 0.20, 0.20, 1.25),
    FAT: (0.02, 3.0, 0.10, 0.50, 1.30),
    GERMINAL_CENTRE: (0.30, 3.2, 0.15, 0.80, 1.50),
    HISTIOCYTES: (0.22, 3.2, 0.15, 0.80, 1.50),
    TUMOUR: (0.05, 3.2, 0.15, 0.80, 1.50),
}
_LARGE = {  # region: (p, radius_um, spread, min_aspect, H)
    TUMOUR: (0.92, 5.4, 0.40, 0.55, 0.98),
    GERMINAL_CENTRE: (0.85, 5.0, 0.22, 0.70, 1.00),
    HISTIOCYTES: (0.80, 5.0, 0.18, 0.55, 0.90),
}
_NUCLEOLUS_P = {TUMOUR: 0.6, GERMINAL_CENTRE: 0.45, HISTIOCYTES: 0.25}


@dataclasses.dataclass
class Lesion:
    """One tumour region of a slide and its ground truth.

    Attributes:
      lesion_id: 0-based index within the slide.
      cls: ``itc``, ``micro`` or ``macro`` (from its major axis).
      outline: the tumour annotation (group ``_0`` or ``_1``).
      holes: exclusion annotations (group ``_2``) inside it.
      major_axis_um: moment major axis of the outline in microns.
    """

    lesion_id: int
    cls: str
    outline: Annotation
    holes: list[Annotation]
    major_axis_um: float

    @property
    def annotations(self) -> list[Annotation]:
        return [self.outline, *self.holes]


@dataclasses.dataclass
class SlidePlan:
    """Everything that decides one synthetic slide's pixels.

    Attributes:
      slide_id: ``patient_PPP_node_N``.
      width, height: level-0 size in pixels.
      seed: the slide's own integer seed (nuclei hashes, fields, noise).
      tissue_xy: the section's outline, level-0 ``(N, 2)``.
      lesions: tumour regions (empty on a negative node).
      mimics: ``(kind, polygon)`` pairs, kind in ``MIMIC_KINDS``.
      stain: the centre's stain profile.
      fat_fraction: share of the section's interior given to fat.
    """

    slide_id: str
    width: int
    height: int
    seed: int
    tissue_xy: np.ndarray
    lesions: list[Lesion]
    mimics: list[tuple[str, np.ndarray]]
    stain: StainProfile
    fat_fraction: float = 0.06

    @property
    def annotations(self) -> list[Annotation]:
        """The slide's ground-truth annotations (tumour outlines and exclusion holes)."""
        return [a for lesion in self.lesions for a in lesion.annotations]


_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    z = z ^ (z >> np.uint64(30))
    z = z * _M2
    z = z ^ (z >> np.uint64(27))
    z = z * _M3
    return z ^ (z >> np.uint64(31))


def hash_uniform(seed: int, i: np.ndarray, j: np.ndarray, count: int) -> np.ndarray:
    """``count`` uniform [0, 1) numbers per grid cell ``(i, j)``, a pure function of its inputs.

    Returns:
      float64 array of shape ``i.shape + (count,)``.
    """
    with np.errstate(over="ignore"):
        base = _mix(
            np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
            + i.astype(np.int64).astype(np.uint64) * _M1
            + j.astype(np.int64).astype(np.uint64) * _M2
        )
        k = np.arange(1, count + 1, dtype=np.uint64) * _M3
        z = _mix(base[..., None] + k)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


_BANKS: dict[int, tuple[np.ndarray, np.ndarray]] = {}
_BANKS_LOCK = threading.Lock()


def _noise_banks(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit sensor noise (side', side', 3) and chromatin grain (side', side'), shared by all slides.

    Fixed content (seeded by a constant): slides differ by the per-tile offsets
    into the banks, which are hashed from the slide's seed and the tile position.
    """
    with _BANKS_LOCK:
        for have, banks in _BANKS.items():
            if have >= side:
                return banks
        bank = side + _BANK_SLACK + 64
        rng = np.random.default_rng(20191013)
        noise = rng.standard_normal((bank, bank, 3), dtype=np.float32)
        grain = cv2.GaussianBlur(rng.random((bank, bank), dtype=np.float32), (0, 0), 1.0)
        grain = (grain - grain.mean()) / (grain.std() + 1e-6)
        _BANKS[side] = (noise, (0.01 + 0.0018 * grain).astype(np.float32))
        return _BANKS[side]


class SlideRenderer:
    """Renders one planned slide's level-0 tiles, tissue truth and region labels.

    Args:
      plan: the slide's plan.
      mpp: microns per level-0 pixel (nuclei and vacuoles have physical sizes).
    """

    def __init__(self, plan: SlidePlan, mpp: float):
        self.plan = plan
        self.mpp = float(mpp)
        self.dimensions = (plan.width, plan.height)
        rng = np.random.default_rng([plan.seed, 1])
        gw = -(-plan.width // FIELD_DS) + 1
        gh = -(-plan.height // FIELD_DS) + 1
        # Signed distance to the section's edge (level-0 px, > 0 inside),
        # at the coarse cell centres ((c + 0.5) * FIELD_DS - 0.5).
        inside = np.zeros((gh, gw), np.uint8)
        poly = (plan.tissue_xy + 0.5) / FIELD_DS - 0.5
        cv2.fillPoly(inside, [np.round(poly * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        d_in = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
        d_out = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)
        sd = (np.where(inside > 0, d_in - 0.5, -(d_out - 0.5)) * FIELD_DS).astype(np.float32)
        # Smoothing keeps it a distance away from the edge but turns the edge's
        # 16-px staircase (the coarse raster) into a smooth contour at level 0.
        sd = cv2.GaussianBlur(sd, (0, 0), 1.2)

        def smooth_noise(scale_um: float) -> np.ndarray:
            sigma = max(scale_um / self.mpp / FIELD_DS, 0.5)
            n = cv2.GaussianBlur(rng.standard_normal((gh, gw)).astype(np.float32), (0, 0), sigma)
            return (n - n.mean()) / (n.std() + 1e-6)

        stroma = smooth_noise(60.0)  # trabeculae where this crosses zero
        fat = smooth_noise(120.0)
        tone = smooth_noise(40.0)
        # Fat where the fat noise is highest, taking ``fat_fraction`` of the interior.
        interior = sd > 0
        self._fat_threshold = float(np.quantile(fat[interior], 1.0 - plan.fat_fraction)) if interior.any() else 9.0
        fields = np.stack([sd, stroma, fat, tone], axis=-1).astype(np.float32)
        pad = 2
        self._fields = np.pad(fields, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        self._pad = pad
        self._capsule_px = 22.0 / self.mpp
        self._stroma_half_width = 0.10
        stain = plan.stain
        self._h_od = (np.asarray(stain.h_vector, np.float32) * stain.h_scale).reshape(1, 1, 3)
        self._e_od = (np.asarray(stain.e_vector, np.float32) * stain.e_scale).reshape(1, 1, 3)
        self._glass = np.asarray(stain.glass_rgb, np.float32).reshape(1, 1, 3)
        self._margin = int(math.ceil(max(r * (1 + s) for _, r, s, _, _ in [*_SMALL.values(), *_LARGE.values()]) / self.mpp)) + 4
        self._mimic_annotations = {
            label: [Annotation(f"{kind}_{k}", "_0", poly) for k, (kd, poly) in enumerate(plan.mimics) if kd == kind]
            for kind, label in MIMIC_KINDS.items()
        }
        self._tumour_annotations = plan.annotations
        # OD = H * h + E * e as one 3x2 transform; exp(-OD) scaled by the glass colour.
        self._od_matrix = np.stack([self._h_od.ravel(), self._e_od.ravel()], axis=1).astype(np.float32)
        self._glass_scalar = tuple(float(v) for v in stain.glass_rgb)
        _noise_banks(_TILE_BANK)  # build the shared banks once, outside the tile threads

    # ------------------------------------------------------------------ fields

    def _field_window(self, x0: int, y0: int, w: int, h: int) -> Optional[np.ndarray]:
        """Fields at every level-0 pixel of the window, or None if it holds no tissue."""
        d = FIELD_DS
        # Coarse cell c has its centre at level-0 (c + 0.5) * d - 0.5, so
        # resizing cells c0.. by d puts pixel (c0 * d) at output index 0.
        c0, r0 = x0 // d - 1, y0 // d - 1
        c1, r1 = -(-(x0 + w) // d) + 1, -(-(y0 + h) // d) + 1
        p = self._pad
        gh, gw = self._fields.shape[:2]
        rs = np.clip(np.arange(r0, r1) + p, 0, gh - 1)
        cs = np.clip(np.arange(c0, c1) + p, 0, gw - 1)
        crop = self._fields[rs[:, None], cs[None, :]]
        if crop[..., 0].max() <= 0:
            return None
        up = cv2.resize(crop, ((c1 - c0) * d, (r1 - r0) * d), interpolation=cv2.INTER_LINEAR)
        ox, oy = x0 - c0 * d, y0 - r0 * d
        return up[oy:oy + h, ox:ox + w]

    def fields_at(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Bilinear field values at level-0 points; shape ``(n, 4)`` (sd, stroma, fat, tone)."""
        d = FIELD_DS
        u = (np.asarray(xs, np.float64) + 0.5) / d - 0.5 + self._pad
        v = (np.asarray(ys, np.float64) + 0.5) / d - 0.5 + self._pad
        gh, gw = self._fields.shape[:2]
        u = np.clip(u, 0, gw - 1.001)
        v = np.clip(v, 0, gh - 1.001)
        i, j = np.floor(v).astype(int), np.floor(u).astype(int)
        fv, fu = (v - i)[:, None], (u - j)[:, None]
        f = self._fields
        return ((f[i, j] * (1 - fu) + f[i, j + 1] * fu) * (1 - fv) + (f[i + 1, j] * (1 - fu) + f[i + 1, j + 1] * fu) * fv)

    def tissue_truth(self, downsample: int = TISSUE_TRUTH_DS) -> np.ndarray:
        """Tissue truth at ``downsample``: 255 where the cell's centre is inside the section.

        Shape ``(ceil(H / ds), ceil(W / ds))``, uint8.  Fat and lesions count
        as tissue; glass does not.
        """
        w, h = -(-self.plan.width // downsample), -(-self.plan.height // downsample)
        cx = np.arange(w) * downsample + (downsample - 1) / 2.0
        cy = np.arange(h) * downsample + (downsample - 1) / 2.0
        xx, yy = np.meshgrid(cx, cy)
        sd = self.fields_at(xx.ravel(), yy.ravel())[:, 0].reshape(h, w)
        return np.where(sd > 0, 255, 0).astype(np.uint8)

    def region_labels(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Region label (``BACKGROUND`` .. ``TUMOUR``) of every level-0 pixel of a window."""
        f = self._field_window(x0, y0, w, h)
        if f is None:
            return np.zeros((h, w), np.uint8)
        return self._labels(f, x0, y0, w, h)

    def _labels(self, f: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        sd = f[..., 0]
        lab = np.zeros((h, w), np.uint8)
        tissue = sd > 0
        lab[tissue] = PARENCHYMA
        lab[tissue & (np.abs(f[..., 1]) < self._stroma_half_width)] = STROMA
        lab[tissue & (f[..., 2] > self._fat_threshold)] = FAT
        lab[tissue & (sd < self._capsule_px)] = CAPSULE
        dims = self.dimensions
        for label, anns in self._mimic_annotations.items():
            if anns:
                m = rasterize(anns, dims, 1, origin_xy=(x0, y0), size_wh=(w, h)) > 0
                lab[m & tissue] = label
        if self._tumour_annotations:
            m = rasterize(self._tumour_annotations, dims, 1, origin_xy=(x0, y0), size_wh=(w, h)) > 0
            lab[m] = TUMOUR
        return lab

    # ------------------------------------------------------------------ tiles

    def render_tile(self, x: int, y: int, w: int, h: int) -> Optional[np.ndarray]:
        """RGB uint8 ``(h, w, 3)`` of the level-0 region, or None where it is only glass.

        This is the ``tile_source`` of :func:`pfascannet.slide.tiff_writer.write_pyramid_tiff`.
        """
        m = self._margin
        x0, y0, ew, eh = x - m, y - m, w + 2 * m, h + 2 * m
        f = self._field_window(x0, y0, ew, eh)
        if f is None:
            return None
        lab = self._labels(f, x0, y0, ew, eh)
        eosin = _EOSIN[lab] * (1.0 + 0.12 * f[..., 3])
        hema = _H_DIFFUSE[lab] * (1.0 + 0.15 * f[..., 3])
        self._draw_fat(eosin, hema, lab, x0, y0, ew, eh)
        nuclei = np.zeros((eh, ew), np.uint8)  # haematoxylin * 100
        self._draw_nuclei(nuclei, lab, x0, y0, ew, eh, small=True)
        self._draw_nuclei(nuclei, lab, x0, y0, ew, eh, small=False)
        # Colour only the tile plus what the focus blur reaches.
        sigma = self.plan.stain.blur_sigma_px
        bm = int(math.ceil(3 * sigma)) + 1 if sigma > 0 else 0
        s0 = m - bm
        cw, ch = w + 2 * bm, h + 2 * bm
        hema = hema[s0:s0 + ch, s0:s0 + cw]
        eosin = eosin[s0:s0 + ch, s0:s0 + cw]
        nuc = nuclei[s0:s0 + ch, s0:s0 + cw]
        # Tile-position-seeded offsets into fixed noise banks: as random as fresh
        # draws per tile for the eye and a CNN, far cheaper, still deterministic.
        ox, oy = (int(v) for v in hash_uniform(self.plan.seed * 31 + 5, np.array(x), np.array(y), 2) * _BANK_SLACK)
        noise_bank, grain_bank = _noise_banks(max(cw, ch))
        grain = grain_bank[oy:oy + ch, ox:ox + cw]
        # Chromatin texture: nuclei are not flat.
        hema = np.maximum(hema, nuc.astype(np.float32) * grain)
        od = cv2.transform(cv2.merge([hema, eosin]), self._od_matrix)
        rgb = cv2.multiply(cv2.exp(-od), self._glass_scalar)
        if sigma > 0:
            rgb = cv2.GaussianBlur(rgb, (0, 0), sigma)
        rgb = np.ascontiguousarray(rgb[bm:bm + h, bm:bm + w])
        on_tissue = (lab[m:m + h, m:m + w] > 0).view(np.uint8)
        noise = noise_bank[oy:oy + h, ox:ox + w] * np.float32(self.plan.stain.noise_sd)
        cv2.add(rgb, noise, dst=rgb, mask=on_tissue)  # sensor noise on tissue only: glass stays flat
        return cv2.convertScaleAbs(rgb)

    def _grid(self, pitch_um: float, x0: int, y0: int, ew: int, eh: int, salt: int, count: int, jitter: float = 0.8):
        """Jittered grid points inside the window: level-0 centres and per-point uniforms."""
        pitch = pitch_um / self.mpp
        i = np.arange(math.floor(y0 / pitch), math.floor((y0 + eh) / pitch) + 1)
        j = np.arange(math.floor(x0 / pitch), math.floor((x0 + ew) / pitch) + 1)
        ii, jj = np.meshgrid(i, j, indexing="ij")
        u = hash_uniform(self.plan.seed * 31 + salt, ii, jj, count + 2)
        lo = (1.0 - jitter) / 2
        cy = (ii + lo + jitter * u[..., 0]) * pitch
        cx = (jj + lo + jitter * u[..., 1]) * pitch
        keep = (cx >= x0) & (cx < x0 + ew) & (cy >= y0) & (cy < y0 + eh)
        return cx[keep], cy[keep], u[..., 2:][keep]

    def _draw_nuclei(self, canvas, lab, x0, y0, ew, eh, small: bool) -> None:
        table = _SMALL if small else _LARGE
        cx, cy, u = self._grid(_SMALL_PITCH_UM if small else _LARGE_PITCH_UM, x0, y0, ew, eh, 1 if small else 2, 7)
        px = (cx - x0).astype(int)
        py = (cy - y0).astype(int)
        region = lab[py, px]
        for reg, (p, r_um, spread, min_aspect, h_amount) in table.items():
            sel = (region == reg) & (u[:, 0] < p)
            if not sel.any():
                continue
            uu = u[sel]
            radius = r_um / self.mpp * (1.0 + spread * (2 * uu[:, 1] - 1))
            minor = radius * (min_aspect + (1 - min_aspect) * uu[:, 2])
            angle = uu[:, 3] * 180.0
            value = np.clip(h_amount * (1.0 + 0.18 * (2 * uu[:, 4] - 1)) * 100, 1, 255)
            xs, ys = (cx[sel] - x0) * 16, (cy[sel] - y0) * 16  # 4 fractional bits
            vesicular = not small
            nucleolus = uu[:, 5] < _NUCLEOLUS_P.get(reg, 0.0)
            for k in range(len(radius)):
                centre = (int(xs[k]), int(ys[k]))
                axes = (int(radius[k] * 16), int(minor[k] * 16))
                v = float(value[k])
                if vesicular:
                    # Dark rim (nuclear membrane) around pale chromatin, then a nucleolus.
                    cv2.ellipse(canvas, centre, axes, angle[k], 0, 360, v * 1.25, -1, cv2.LINE_AA, 4)
                    inner = (int(axes[0] * 0.78), int(axes[1] * 0.78))
                    cv2.ellipse(canvas, centre, inner, angle[k], 0, 360, v * 0.72, -1, cv2.LINE_AA, 4)
                    if nucleolus[k]:
                        cv2.circle(canvas, centre, int(1.1 / self.mpp * 16), v * 1.6, -1, cv2.LINE_AA, 4)
                else:
                    cv2.ellipse(canvas, centre, axes, angle[k], 0, 360, v, -1, cv2.LINE_AA, 4)

    def _draw_fat(self, eosin, hema, lab, x0, y0, ew, eh) -> None:
        """Adipocytes: white vacuoles, centred in fat, with pink septa between them."""
        fat = lab == FAT
        if not fat.any():
            return
        pitch_um, radius_um = 62.0, 31.0
        reach = int(radius_um * 1.2 / self.mpp) + 2
        cx, cy, u = self._grid(pitch_um, x0 - reach, y0 - reach, ew + 2 * reach, eh + 2 * reach, 3, 2, jitter=0.25)
        vals = self.fields_at(cx, cy)
        sel = (vals[:, 0] > 0) & (vals[:, 2] > self._fat_threshold)
        vac = np.zeros(lab.shape, np.uint8)
        for x, y, a in zip(cx[sel], cy[sel], u[sel][:, 0]):
            r = radius_um * (0.9 + 0.15 * a) / self.mpp
            cv2.circle(vac, (int((x - x0) * 16), int((y - y0) * 16)), int(r * 16), 1, -1, cv2.LINE_8, 4)
        hole = (vac > 0) & fat
        eosin[hole] = 0.0
        hema[hole] = 0.0
