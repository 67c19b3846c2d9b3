"""Training-patch sampling: random, boundary and ITC patches, and hard negatives.

Zhao et al. (MICCAI 2019), Sec. 2.4 "(2) Slide-level Metastasis Detection":
"We extract ITC and boundary patches at first and add them to the original
training set" -- the three kinds of patch Fig. 1 draws -- and Sec. 1 names
hard-negative mining as the usual way to suppress false positives.  Every
sample is the level-0 ``(x, y)`` top-left of a 692 x 692 patch
(``geometry.PATCH_PX``); its label is the truth at the patch centre
(``+346``), the pixel the detector's output stands for (``geometry``'s
central invariant), and its mask is the 512 x 512 window centred in the
patch (``MASK_OFFSET_PX = 90``), rasterised from the slide's annotations.

Kinds:
  ``tumour`` / ``normal``: random centres in tumour, or in tissue outside
    tumour, drawn in equal numbers (the "random patches" of Fig. 1).
  ``boundary``: centres on a lesion border, so the 512 mask straddles it.
  ``itc``: centres on small lesions (major axis below ``itc_max_um``; the
    Camelyon evaluation's ITC rule, 275 um) -- isolated tumour cells.
  ``hard_negative``: normal tissue that a trained model calls tumour.

All positions come from a ``numpy.random.Generator`` seeded by the caller,
so a sample list is a pure function of (cohort, settings, seed).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import threading
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import scipy.ndimage as ndi
from skimage import measure

from pfascannet import datasets, geometry, io_utils
from pfascannet.camelyon import FROC_ITC_MAX_UM, LEVEL0_MPP
from pfascannet.errors import PfaError
from pfascannet.settings import at_least, check_fields, fixed, positive, setting
from pfascannet.slide import annotations as ann_mod, tissue as tissue_mod
from pfascannet.slide.reader import SlideReader
from pfascannet.slide.resample import ReadPlan, plan_read

KINDS = ("tumour", "normal", "boundary", "itc", "hard_negative")
"""Every sample kind; the first four come from ``PatchSampler.sample``."""


class SamplingError(PfaError, ValueError):
    """A cohort or sampler setting that cannot give the requested patches."""


# ---------------------------------------------------------------------------
# Cohort description
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SlideEntry:
    """One slide of a training cohort.

    Attributes:
      slide_id: file name without extension (Camelyon's slide id).
      image_path: the whole-slide image.
      annotation_path: ASAP XML of its lesions (a path, or a ``datasets.AnnotationFile`` in a zip),
        or None (normal slide).
      split: ``train`` / ``test`` (free text for real cohorts).
      label: the cohort's slide label as written (e.g. ``negative``, ``macro``).
    """

    slide_id: str
    image_path: str
    annotation_path: Optional[str | datasets.AnnotationFile] = None
    split: str = "train"
    label: str = ""


def load_cohort(data_dir: str | os.PathLike, split: Optional[str] = None) -> list[SlideEntry]:
    """Lists the training slides of a dataset root: a cohort, or CAMELYON16/17 as downloaded.

    ``datasets.open_dataset`` finds the slides, their split and their
    annotations (a folder of ASAP XML or ``lesion_annotations.zip``), whatever
    the layout (``pfascannet/datasets.py``).  A slide has lesions iff it has
    an annotation.  Where the layout says a slide holds tumour but it has no
    annotation, its patches cannot be labelled: CAMELYON16's ``training/tumor``
    slides must have one (error); CAMELYON17's node-labelled slides without one
    (most of them: 50 are annotated) are left out, as are slides of unknown label.

    Args:
      data_dir: the dataset root.
      split: keep only slides of this split (``train``: CAMELYON's ``training/``).

    Raises:
      SamplingError: no such folder, no slides, or an unknown split.
    """
    data_dir = os.fspath(data_dir)
    try:
        ds = datasets.open_dataset(data_dir)
    except datasets.DatasetError as exc:
        raise SamplingError(str(exc)) from None
    if split is not None and ds.layout == "cohort" and ds.reference_path is None:
        raise SamplingError(f"{data_dir}: split {split!r} requested but there is no slides.csv")
    entries = []
    for s in ds.split(split):
        if s.annotation is None and s.tumour and ds.layout != "cohort":
            if ds.layout == "camelyon16":
                raise SamplingError(f"tumour slide {s.image_path} has no annotation {s.slide_id}.xml in "
                                    f"{ds.annotations.where()}: its patches cannot be labelled")
            continue
        if s.annotation is None and s.tumour is None and ds.layout != "cohort":
            continue
        entries.append(SlideEntry(slide_id=s.slide_id, image_path=s.image_path, annotation_path=s.annotation,
                                  split=s.split or "train", label=s.label))
    if not entries:
        splits = sorted({s.split for s in ds.slides})
        raise SamplingError(f"{data_dir}: no slides" + (f" in split {split!r} (splits: {splits})" if split else ""))
    return entries


# ---------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PatchSample:
    """One training patch.

    Attributes:
      slide_id: the slide it comes from.
      x, y: level-0 top-left of the 692 x 692 patch.
      label: 1 if the patch centre (x + 346, y + 346) is tumour, else 0.
      kind: one of ``KINDS``.
    """

    slide_id: str
    x: int
    y: int
    label: int
    kind: str

    @property
    def centre_xy(self) -> tuple[int, int]:
        """Level-0 pixel the label refers to."""
        return self.x + geometry.PATCH_CENTRE_PX, self.y + geometry.PATCH_CENTRE_PX


_SAMPLE_FIELDS = ("slide_id", "x", "y", "label", "kind")


def save_samples(path: str | os.PathLike, samples: Sequence[PatchSample]) -> None:
    """Writes samples as CSV (``slide_id,x,y,label,kind``), atomically."""
    with io_utils.atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(_SAMPLE_FIELDS)
        for s in samples:
            w.writerow([s.slide_id, s.x, s.y, s.label, s.kind])


def load_samples(path: str | os.PathLike) -> list[PatchSample]:
    """Reads a CSV written by ``save_samples``."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != _SAMPLE_FIELDS:
            raise SamplingError(f"{path}: expected columns {_SAMPLE_FIELDS}, got {reader.fieldnames}")
        return [PatchSample(r["slide_id"], int(r["x"]), int(r["y"]), int(r["label"]), r["kind"]) for r in reader]


# ---------------------------------------------------------------------------
# Per-slide truth at low resolution
# ---------------------------------------------------------------------------


class SlideTruth:
    """A slide with its annotations, tumour mask and tissue mask at low resolution.

    The low-resolution maps only propose centres; labels and masks are always
    rasterised at level 0 (``label_at``, ``mask_window``).

    Args:
      entry: the slide.
      grid_downsample: level-0 pixels per cell of the tumour grid used to
        find centres (16 keeps 40 um ITCs a few cells wide).
      tissue_downsample: downsample of the Otsu tissue mask (Sec. 2.4).
    """

    def __init__(self, entry: SlideEntry, grid_downsample: int = 16, tissue_downsample: int = 32,
                 target_mpp: Optional[float] = LEVEL0_MPP):
        self.entry = entry
        self.grid_downsample = int(grid_downsample)
        self.tissue_downsample = int(tissue_downsample)
        with SlideReader(entry.image_path) as reader:
            self.dimensions: tuple[int, int] = reader.dimensions
            self.mpp: float = reader.mpp if reader.mpp is not None else LEVEL0_MPP
            self.tissue: np.ndarray = np.asarray(tissue_mod.tissue_mask(reader, downsample=self.tissue_downsample), bool)
            # Patches are read at the model's pixel size, on the scanner's read plan
            # (the same snapped scale, so training and scanning see the same pixels).
            self.read: ReadPlan = plan_read(self.mpp, target_mpp, reader.level_downsamples,
                                            reader.openslide_downsamples, (geometry.output_stride_px(geometry.PAPER_ALPHA),))
        self.scale: float = float(self.read.scale)
        # Level-0 offset from a patch's top-left to the pixel under its centre model pixel.
        self.centre_offset_px: int = int(round((geometry.PATCH_CENTRE_PX + 0.5) * self.scale - 0.5))
        self.annotations = datasets.read_annotations(entry.annotation_path) if entry.annotation_path else None
        gw = -(-self.dimensions[0] // self.grid_downsample)
        gh = -(-self.dimensions[1] // self.grid_downsample)
        if self.annotations is not None:
            grid = ann_mod.rasterize(
                self.annotations, self.dimensions, downsample=float(self.grid_downsample),
                origin_xy=(0, 0), size_wh=(gw, gh),
            )
            self.tumour_grid: np.ndarray = np.asarray(grid) > 0
        else:
            self.tumour_grid = np.zeros((gh, gw), bool)

    @property
    def has_tumour(self) -> bool:
        return bool(self.tumour_grid.any())

    def mask_window(self, origin_xy: tuple[int, int], size_wh: tuple[int, int]) -> np.ndarray:
        """Level-0 tumour mask (uint8, 1 = tumour) of a window."""
        w, h = int(size_wh[0]), int(size_wh[1])
        if self.annotations is None:
            return np.zeros((h, w), np.uint8)

        m = ann_mod.rasterize(self.annotations, self.dimensions, downsample=1.0, origin_xy=tuple(int(v) for v in origin_xy), size_wh=(w, h))
        return (np.asarray(m) > 0).astype(np.uint8)

    def label_at(self, xy: tuple[int, int]) -> int:
        """1 if level-0 pixel ``xy`` is tumour."""
        return int(self.mask_window(xy, (1, 1))[0, 0])

    def top_left(self, centre_xy: tuple[float, float]) -> tuple[int, int]:
        """Level-0 top-left of the patch whose centre model pixel lies on level-0 ``centre_xy`` (clipped to the slide)."""
        cx, cy = int(round(centre_xy[0])), int(round(centre_xy[1]))
        cx = min(max(cx, 0), self.dimensions[0] - 1)
        cy = min(max(cy, 0), self.dimensions[1] - 1)
        return cx - self.centre_offset_px, cy - self.centre_offset_px

    def centre_of(self, top_left_xy: tuple[int, int]) -> tuple[int, int]:
        """Level-0 pixel under the centre model pixel of the patch at ``top_left_xy`` (what its label is)."""
        return int(top_left_xy[0]) + self.centre_offset_px, int(top_left_xy[1]) + self.centre_offset_px

    def model_mask(self, top_left_xy: tuple[int, int], offset_px: int, size_px: int) -> np.ndarray:
        """Tumour mask (uint8, 1 = tumour) of model pixels ``offset_px .. offset_px + size_px`` of a patch.

        Model pixel ``u`` of the patch at level-0 ``top_left_xy`` is the level-0
        cell ``[x + u s, x + (u + 1) s)`` with ``s = scale`` (the read's own
        convention, ``slide.resample``), so the mask lies pixel for pixel on the patch.
        """
        if self.annotations is None:
            return np.zeros((size_px, size_px), np.uint8)
        s = self.scale
        origin = (int(top_left_xy[0]) + offset_px * s, int(top_left_xy[1]) + offset_px * s)
        if s == 1.0:
            origin = (int(origin[0]), int(origin[1]))
        m = ann_mod.rasterize(self.annotations, self.dimensions, downsample=s, origin_xy=origin,
                              size_wh=(size_px, size_px))
        return (np.asarray(m) > 0).astype(np.uint8)

    def read_patch(self, reader, top_left_xy: tuple[int, int], size_px: int = geometry.PATCH_PX) -> np.ndarray:
        """RGB uint8 ``[size, size, 3]`` at the model's pixel size from level-0 ``top_left_xy`` (``reader``: this slide's)."""
        return self.read.read_level0(reader, top_left_xy, size_px)

    def tissue_grid(self) -> np.ndarray:
        """Tissue mask resampled onto the tumour grid (nearest)."""
        gh, gw = self.tumour_grid.shape
        ratio = self.grid_downsample / self.tissue_downsample
        rows = np.minimum((np.arange(gh) * ratio).astype(int), self.tissue.shape[0] - 1)
        cols = np.minimum((np.arange(gw) * ratio).astype(int), self.tissue.shape[1] - 1)
        return self.tissue[np.ix_(rows, cols)]


# ---------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """How many patches of each kind (Sec. 2.4, Fig. 1), and how they are found.

    The counts are settings (``pfascannet.settings``): ``pfascannet train`` and
    ``pfascannet tfrecords`` generate their ``--random_per_class``,
    ``--boundary`` and ``--itc`` flags from these fields; the grids and the ITC
    limit are fixed (code may pass others).

    Attributes:
      random_per_class: random tumour patches and random normal patches
        (each; balanced, Fig. 1 "random patches").
      boundary: boundary patches (centre within one grid cell of a border).
      itc: ITC patches (centred on a lesion smaller than ``itc_max_um``).
      itc_max_um: major-axis limit of an ITC lesion.
      grid_downsample: level-0 px per cell of the centre-finding grid.
      tissue_downsample: downsample of the Otsu tissue mask.
    """

    random_per_class: int = setting(64, check=at_least(0),
                                    help="Random tumour patches and random normal patches (each).")
    boundary: int = setting(32, check=at_least(0), help="Boundary patches (centre on a lesion border).")
    itc: int = setting(16, check=at_least(0), help="ITC patches (centred on lesions < 275 um).")
    itc_max_um: float = fixed(FROC_ITC_MAX_UM, check=positive, help="Major-axis limit of an ITC lesion (um).")
    grid_downsample: int = fixed(16, check=at_least(1), help="Level-0 px per cell of the centre-finding grid.")
    tissue_downsample: int = fixed(32, check=at_least(1), help="Downsample of the Otsu tissue mask.")

    def __post_init__(self):
        check_fields(self, SamplingError)


class PatchSampler:
    """Draws the patch kinds of Fig. 1 from a cohort (Sec. 2.4).

    Args:
      slides: the cohort's slides (normal slides give normal patches only).
      config: counts and grids.

    Example:
      >>> sampler = PatchSampler(load_cohort(d, "train"), SamplerSettings())
      >>> samples = sampler.sample(seed=0)
      >>> mask512 = sampler.mask(samples[0])
    """

    def __init__(self, slides: Sequence[SlideEntry], config: SamplerSettings = SamplerSettings(),
                 target_mpp: Optional[float] = LEVEL0_MPP):
        if not slides:
            raise SamplingError("PatchSampler needs at least one slide")
        self.config = config
        self.target_mpp = target_mpp
        self.slides = {s.slide_id: s for s in slides}
        self._truth: dict[str, SlideTruth] = {}
        self._lock = threading.Lock()

    def truth(self, slide_id: str) -> SlideTruth:
        """The (cached) SlideTruth of one slide."""
        with self._lock:
            if slide_id not in self._truth:
                if slide_id not in self.slides:
                    raise SamplingError(f"unknown slide {slide_id!r}")
                self._truth[slide_id] = SlideTruth(
                    self.slides[slide_id], self.config.grid_downsample, self.config.tissue_downsample, self.target_mpp
                )
            return self._truth[slide_id]

    # -- candidates ---------------------------------------------------------

    def _cells(self, kind: str) -> list[tuple[str, np.ndarray]]:
        """(slide id, [K, 2] grid (row, col) cells) where a kind's centres may fall."""
        out = []
        for sid in self.slides:
            t = self.truth(sid)
            tumour = t.tumour_grid
            if kind == "tumour":
                cells = tumour
            elif kind == "normal":
                cells = t.tissue_grid() & ~tumour
            elif kind == "boundary":
                # Cells on either side of a border: dilation xor erosion.
                cells = ndi.binary_dilation(tumour) & ~ndi.binary_erosion(tumour, border_value=0)
            else:
                raise SamplingError(f"no cell rule for kind {kind!r}")
            rc = np.argwhere(cells)
            if len(rc):
                out.append((sid, rc))
        return out

    def itc_centres(self) -> list[tuple[str, tuple[float, float]]]:
        """Level-0 (x, y) centroids of every lesion with major axis < ``itc_max_um``."""
        out = []
        for sid in self.slides:
            t = self.truth(sid)
            if not t.has_tumour:
                continue
            labels = measure.label(t.tumour_grid, connectivity=2)
            ds = t.grid_downsample
            for region in measure.regionprops(labels):
                # A region a single cell wide has major axis 0 in skimage; count
                # it as one cell.
                major_um = max(region.axis_major_length, 1.0) * ds * t.mpp
                if major_um < self.config.itc_max_um:
                    r, c = region.centroid
                    out.append((sid, ((c + 0.5) * ds, (r + 0.5) * ds)))
        return out

    # -- sampling -----------------------------------------------------------

    def _draw_from_cells(self, kind: str, n: int, rng: np.random.Generator) -> list[PatchSample]:
        if n == 0:
            return []
        pools = self._cells(kind)
        if not pools:
            raise SamplingError(f"the cohort has no place for {kind!r} patches ({len(self.slides)} slides)")
        sizes = np.array([len(rc) for _, rc in pools], float)
        # Slides in proportion to their candidate area, cells uniformly within.
        which = rng.choice(len(pools), size=n, p=sizes / sizes.sum())
        out = []
        for i in which:
            sid, rc = pools[i]
            t = self.truth(sid)
            r, c = rc[rng.integers(len(rc))]
            ds = t.grid_downsample
            cx, cy = (c + rng.random()) * ds, (r + rng.random()) * ds
            x, y = t.top_left((cx, cy))
            out.append(PatchSample(sid, x, y, t.label_at(t.centre_of((x, y))), kind))
        return out

    def _draw_random_tumour(self, n: int, rng: np.random.Generator) -> list[PatchSample]:
        # Low-resolution cells at a border may fall on normal pixels at level 0;
        # redraw those so "tumour" patches are tumour at the centre.
        out: list[PatchSample] = []
        for _ in range(20):
            out += [s for s in self._draw_from_cells("tumour", n - len(out), rng) if s.label == 1]
            if len(out) == n:
                return out
        raise SamplingError("could not find tumour centres; are the annotations empty?")

    def sample(self, seed: int) -> list[PatchSample]:
        """All configured kinds, in a fixed order (tumour, normal, boundary, itc).

        Args:
          seed: the numpy seed; the same cohort, config and seed give the same list.
        """
        cfg = self.config
        rng = np.random.default_rng(seed)
        out = self._draw_random_tumour(cfg.random_per_class, rng) if cfg.random_per_class else []
        out += self._draw_from_cells("normal", cfg.random_per_class, rng)
        out += self._draw_from_cells("boundary", cfg.boundary, rng)
        out += self.sample_itc(cfg.itc, rng)
        return out

    def sample_itc(self, n: int, rng: np.random.Generator) -> list[PatchSample]:
        """``n`` ITC patches, cycling over the cohort's ITC lesions in random order."""
        if n == 0:
            return []
        centres = self.itc_centres()
        if not centres:
            raise SamplingError(
                f"the cohort has no lesion smaller than {self.config.itc_max_um} um for ITC patches; set itc=0"
            )
        order = np.concatenate([rng.permutation(len(centres)) for _ in range(-(-n // len(centres)))])[:n]
        out = []
        for i in order:
            sid, cxy = centres[i]
            t = self.truth(sid)
            x, y = t.top_left(cxy)
            out.append(PatchSample(sid, x, y, t.label_at(t.centre_of((x, y))), "itc"))
        return out

    def random_normal(self, n: int, seed: int) -> list[PatchSample]:
        """``n`` random normal-tissue patches (hard-negative candidates)."""
        return self._draw_from_cells("normal", n, np.random.default_rng(seed))

    def mask(self, sample: PatchSample, size_px: int = geometry.MASK_PX) -> np.ndarray:
        """The ``size_px`` mask (uint8, 1 = tumour) centred in the sample's patch.

        ``size_px = 512`` is the decoder's target (Implementation Details);
        ``692`` is the whole patch, aligned pixel for pixel with it.
        """
        off = (geometry.PATCH_PX - size_px) // 2
        return self.truth(sample.slide_id).model_mask((sample.x, sample.y), off, size_px)


# ---------------------------------------------------------------------------
# Hard-negative mining
# ---------------------------------------------------------------------------


PredictFn = Callable[[np.ndarray], np.ndarray]
"""uint8 [N, 692, 692, 3] patches -> float [N] tumour probability."""


def classifier_predict_fn(model) -> PredictFn:
    """Wraps a Keras model as a ``PredictFn``.

    Accepts the training model (dict output with ``classifier`` [N, 2]) or the
    detector at alpha = 1 ([N, 1, 1, 2]); channel 1 is tumour.
    """

    def predict(patches: np.ndarray) -> np.ndarray:
        out = model(patches, training=False)
        if isinstance(out, dict):
            out = out["classifier"]
        out = np.asarray(out)
        return out.reshape(out.shape[0], -1, out.shape[-1])[:, 0, 1].astype(np.float32)

    return predict


@dataclasses.dataclass(frozen=True)
class HardNegativeMiner:
    """Scans normal tissue with a model and keeps its false positives (Sec. 1, [5, 7]).

    Candidates are random normal-tissue patches (tumour-free at the centre);
    those the model scores at or above ``threshold`` become ``hard_negative``
    samples, highest first, at most ``max_keep``.

    Attributes:
      candidates: normal patches to score.
      threshold: tumour probability from which a normal patch is a false positive.
      max_keep: most hard negatives to return.
      batch_size: patches per model call.
    """

    candidates: int = 256
    threshold: float = 0.5
    max_keep: int = 64
    batch_size: int = 8

    def __call__(
        self,
        sampler: PatchSampler,
        predict_fn: PredictFn,
        read_patch: Callable[[PatchSample], np.ndarray],
        seed: int,
    ) -> list[PatchSample]:
        """Returns the hard negatives found.

        Args:
          sampler: the training cohort's sampler.
          predict_fn: e.g. ``classifier_predict_fn(model)``.
          read_patch: sample -> uint8 [692, 692, 3] (``PatchReader.read_patch``).
          seed: draws the candidates.
        """
        pool = [s for s in sampler.random_normal(self.candidates, seed) if s.label == 0]
        scored: list[tuple[float, PatchSample]] = []
        for i in range(0, len(pool), self.batch_size):
            chunk = pool[i : i + self.batch_size]
            probs = np.asarray(predict_fn(np.stack([read_patch(s) for s in chunk])), np.float32).reshape(-1)
            scored += [(float(p), s) for p, s in zip(probs, chunk) if p >= self.threshold]
        scored.sort(key=lambda ps: -ps[0])
        return [dataclasses.replace(s, kind="hard_negative") for _, s in scored[: self.max_keep]]


def counts_by_kind(samples: Iterable[PatchSample]) -> dict[str, int]:
    """{kind: count} for reports."""
    out: dict[str, int] = {}
    for s in samples:
        out[s.kind] = out.get(s.kind, 0) + 1
    return out
