"""A Camelyon-like synthetic cohort: patients of lymph nodes, slides, truth.

``make_cohort`` writes (``ARCHITECTURE.md``, "Files between stages")::

    out/images/<slide>.tif            pyramidal JPEG-tiled TIFF (OpenSlide generic-tiff, mpp)
    out/annotations/<slide>.xml       ASAP XML, tumour groups _0/_1, exclusion _2 (lesion slides)
    out/masks/<slide>_mask.tif        pyramidal mask, tumour 255, level-5 page (lesion slides)
    out/tissue/<slide>_tissue.png     tissue truth at downsample 32 (255 = tissue)
    out/stages.csv                    Camelyon17 ``patient,stage`` with node rows
    out/slides.csv                    slide,patient,node,split,label,centre,width,height
    out/lesions.csv                   slide,lesion_id,class,centre_x,centre_y,major_axis_um
    out/cohort.json                   the resolved settings

Slides are ``patient_PPP_node_N`` (Camelyon17: five nodes per patient).  Each
patient is given a pN-stage (cycling through all five so a cohort of >= 5
patients covers pN0..pN2), node labels are drawn to produce it, and the
stage written to ``stages.csv`` is recomputed from the labels with the
Camelyon17 rules (:func:`pfascannet.camelyon.pn_stage_from_nodes`).

Every slide is sized to its content so small lesions stay cheap: negative,
ITC and micro nodes get a section of about ``slide_size`` px, a macro node
an elongated section around its > 2 mm lesion (about 11k x 5.5k px at
0.243 um/px).  Lesions have their true physical size at the slide's mpp.
Everything is deterministic from ``seed``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Optional, Sequence

import cv2
import numpy as np

from pfascannet import camelyon_files, io_utils
from pfascannet.camelyon import (LEVEL0_MPP, NODE_LABELS, node_class, node_slide_id, patient_id,
                                 pn_stage_from_nodes)
from pfascannet.errors import PfaError
from pfascannet.layout import CohortFolder
from pfascannet.settings import setting
from pfascannet.slide.annotations import Annotation, write_asap_xml, write_mask_tiff
from pfascannet.slide.tiff_writer import write_pyramid_tiff
from pfascannet.synthetic import lesion_shapes as lesion_lib
from pfascannet.synthetic.stain import centre_profile
from pfascannet.synthetic.tissue_render import TISSUE_TRUTH_DS, Lesion, SlidePlan, SlideRenderer

STAGE_CYCLE = ("pN1", "pN0(i+)", "pN1mi", "pN2", "pN0")
"""Stages given to patients 0, 1, 2, ... in turn (a cohort of 4 patients already has a macro,
micro, ITC and negative node; 5 patients cover every stage)."""

GENERATOR_VERSION = 1


class CohortError(PfaError, ValueError):
    """Settings the generator cannot honour; the message says which and why."""


@dataclasses.dataclass
class CohortInfo:
    """What ``make_cohort`` wrote.

    Attributes:
      out_dir: the cohort directory.
      slides: one dict per slide (the rows of ``slides.csv``, with ``path``).
      lesions: one dict per lesion (the rows of ``lesions.csv``).
      stages: patient id -> pN-stage.
      settings: the resolved settings (``cohort.json``).
      seconds: wall time of the whole generation.
    """

    out_dir: str
    slides: list[dict]
    lesions: list[dict]
    stages: dict[str, str]
    settings: dict
    seconds: float


def node_labels_for_stage(rng: np.random.Generator, stage: str, nodes: int = 5) -> list[str]:
    """Node labels (shuffled over the ``nodes`` nodes) that give ``stage`` under the Camelyon17 rules.

    Cost-aware: macro slides are the large ones, so pN1 and pN2 get exactly one.
    """
    if stage == "pN0":
        labels = []
    elif stage == "pN0(i+)":
        labels = ["itc"] * int(rng.integers(1, 3))
    elif stage == "pN1mi":
        labels = ["micro"] * int(rng.integers(1, 3)) + ["itc"] * int(rng.integers(0, 2))
    elif stage == "pN1":
        labels = ["macro"] + ["micro"] * int(rng.integers(0, 3))
    elif stage == "pN2":
        labels = ["macro"] + ["micro"] * (3 + int(rng.integers(0, 2)))
    else:
        raise CohortError(f"unknown pN-stage {stage!r}; expected one of {STAGE_CYCLE}")
    if len(labels) > nodes:
        raise CohortError(f"stage {stage} needs {len(labels)} positive nodes but patients have {nodes}")
    labels = labels + ["negative"] * (nodes - len(labels))
    return [labels[i] for i in rng.permutation(nodes)]


# ---------------------------------------------------------------------------
# Planning: sizes, section outline, lesions and mimics of one slide.


def _inside_by(poly_xy: np.ndarray, container_xy: np.ndarray) -> float:
    """Smallest signed distance (px) of the polygon's vertices inside the container."""
    contour = container_xy.astype(np.float32).reshape(-1, 1, 2)
    return min(cv2.pointPolygonTest(contour, (float(x), float(y)), True) for x, y in poly_xy[::4])


def _far_from(poly_xy: np.ndarray, others: Sequence[np.ndarray], gap_px: float) -> bool:
    x0, y0 = poly_xy.min(0) - gap_px
    x1, y1 = poly_xy.max(0) + gap_px
    for o in others:
        ox0, oy0 = o.min(0)
        ox1, oy1 = o.max(0)
        if ox0 < x1 and ox1 > x0 and oy0 < y1 and oy1 > y0:
            return False
    return True


def plan_slide(
    rng: np.random.Generator,
    sid: str,
    label: str,
    *,
    seed: int,
    centre: int,
    slide_size: int,
    mpp: float,
    stain_seed: int,
    size_xy: Optional[tuple[int, int]] = None,
) -> SlidePlan:
    """Plans one node's slide: size, section, lesions of its class, mimics.

    A node labelled ``itc``/``micro``/``macro`` holds one lesion of that class
    (its largest) and possibly smaller ones; ``negative`` holds none.

    Args:
      size_xy: a fixed slide size instead of sizing the slide to its content
        (the benchmark's 16k and 32k slides); the section then fills it.
    """
    um = 1.0 / mpp  # px per micron
    lesions_xy: list[tuple[str, np.ndarray, list[np.ndarray]]] = []
    if label not in NODE_LABELS:
        raise CohortError(f"node label must be one of {NODE_LABELS}, got {label!r}")
    if size_xy is not None:
        width, height = int(size_xy[0]), int(size_xy[1])
        if width < 256 or height < 256:
            raise CohortError(f"{sid}: slide size must be at least 256 x 256 px, got {size_xy}")
        border = int(0.04 * min(width, height))
        sec_w, sec_h = width - 2 * border, height - 2 * border
        if label == "macro":
            lo, hi = lesion_lib.class_range_um("macro", 0.85 * sec_w / um)
            major = rng.uniform(lo, hi) * um
            aspect = float(np.clip(rng.uniform(0.3, 0.4), None, 0.8 * sec_h / major))
    elif label == "macro":
        lo, hi = lesion_lib.class_range_um("macro")
        major = rng.uniform(lo, hi) * um
        aspect = rng.uniform(0.3, 0.4)
        # Section: an ellipse around the elongated lesion with 0.12-0.2 mm of
        # node around it, so the slide is no larger than the lesion needs.
        sec_w = major * 1.03 + 2 * 120 * um
        sec_h = major * aspect * 1.05 + 2 * 200 * um
        border = int(60 * um)
        width, height = int(sec_w + 2 * border), int(sec_h + 2 * border)
    else:
        width = int(slide_size * rng.uniform(0.9, 1.1))
        height = int(slide_size * rng.uniform(0.8, 1.0))
        border = int(0.05 * min(width, height))
        sec_w, sec_h = width - 2 * border, height - 2 * border
    cx, cy = width / 2.0, height / 2.0
    # Section outline: a rough ellipse filling the slide but the border.
    tissue = lesion_lib.blob_polygon(rng, (0, 0), 1.0, aspect=sec_h / sec_w,
                                     roughness=0.02 if label == "macro" else 0.05, vertices=160)
    tissue -= (tissue.max(0) + tissue.min(0)) / 2
    tissue *= min(sec_w / np.ptp(tissue[:, 0]), sec_h / np.ptp(tissue[:, 1]))
    tissue += (cx, cy)

    def place(cls: str, major_px: float, aspect: float, angle: float, centred: bool, tries: int = 60):
        for _ in range(tries):
            if centred:
                pos = (cx + rng.uniform(-0.02, 0.02) * sec_w, cy + rng.uniform(-0.02, 0.02) * sec_h)
            else:
                pos = (rng.uniform(cx - sec_w / 2, cx + sec_w / 2), rng.uniform(cy - sec_h / 2, cy + sec_h / 2))
            poly = lesion_lib.blob_polygon(rng, pos, major_px, aspect=aspect, angle_rad=angle,
                                           roughness={"itc": 0.1, "micro": 0.06, "macro": 0.03}[cls])
            if _inside_by(poly, tissue) > 40 * um and _far_from(poly, [p for _, p, _ in lesions_xy], 60 * um):
                return poly
        return None

    classes = {"negative": [], "itc": ["itc"] * int(rng.integers(1, 4)),
               "micro": ["micro"] + ["itc"] * int(rng.random() < 0.4),
               "macro": ["macro"] + ["itc"] * int(rng.random() < 0.5)}[label]
    for k, cls in enumerate(classes):
        if cls == "macro":
            poly = place(cls, major, aspect, rng.uniform(-0.08, 0.08), centred=True)
        else:
            cap = 0.6 * min(sec_w, sec_h) / um if cls == "micro" else None
            lo, hi = lesion_lib.class_range_um(cls, cap)
            major_px = rng.uniform(lo, hi) * um
            poly = place(cls, major_px, rng.uniform(0.55, 0.95), rng.uniform(0, math.pi), centred=(k == 0 and label != "itc"))
        if poly is None:
            if k == 0:
                raise CohortError(f"{sid}: could not place a {cls} lesion in a {width}x{height} slide; raise slide_size")
            continue
        holes = []
        if cls == "macro" or (cls == "micro" and rng.random() < 0.3):
            # An exclusion hole (normal tissue inside the tumour), Camelyon16's "_2" group.
            c = poly.mean(0)
            for _ in range(20):
                hole = lesion_lib.blob_polygon(rng, c + rng.uniform(-0.1, 0.1, 2) * np.ptp(poly, 0),
                                               rng.uniform(0.06, 0.12) * np.ptp(poly[:, 0]),
                                               aspect=rng.uniform(0.5, 0.9), roughness=0.05, vertices=48)
                if _inside_by(hole, poly) > 10 * um:
                    holes.append(hole)
                    break
        lesions_xy.append((cls, poly, holes))

    lesion_objs = []
    for k, (cls, poly, holes) in enumerate(lesions_xy):
        group = "_0" if k % 2 == 0 else "_1"
        outline = Annotation(f"Annotation {k}", group, poly)
        hole_anns = [Annotation(f"Annotation {k}.{h}", "_2", hp) for h, hp in enumerate(holes)]
        major_um = lesion_lib.major_axis_px(poly) / um
        lesion_objs.append(Lesion(k, node_class(major_um), outline, hole_anns, major_um))
        if lesion_objs[-1].cls != cls:  # the size ranges make this impossible; keep the guard honest
            raise CohortError(f"{sid}: lesion {k} drawn as {cls} measures {major_um:.0f} um")

    # Hard mimics: germinal centres in the parenchyma, sinus histiocytes near the capsule.
    mimics: list[tuple[str, np.ndarray]] = []
    taken = [p for _, p, _ in lesions_xy]
    area_mm2 = math.pi / 4 * sec_w * sec_h / um**2 / 1e6
    n_gc = int(rng.integers(2, 4) + area_mm2 * 1.5)
    n_hist = int(rng.integers(1, 3) + area_mm2 * 0.7)
    for kind, n in (("germinal_centre", n_gc), ("sinus_histiocytes", n_hist)):
        for _ in range(n):
            for _ in range(30):
                if kind == "germinal_centre":
                    major_px = rng.uniform(120, 320) * um
                    aspect = rng.uniform(0.7, 0.95)
                else:
                    major_px = rng.uniform(120, 300) * um
                    aspect = rng.uniform(0.25, 0.45)
                pos = (rng.uniform(cx - sec_w / 2, cx + sec_w / 2), rng.uniform(cy - sec_h / 2, cy + sec_h / 2))
                poly = lesion_lib.blob_polygon(rng, pos, major_px, aspect=aspect, angle_rad=rng.uniform(0, math.pi),
                                               roughness=0.06, vertices=48)
                depth = _inside_by(poly, tissue)
                ok_depth = depth > 30 * um if kind == "germinal_centre" else 25 * um < depth < 150 * um
                if ok_depth and _far_from(poly, taken, 40 * um):
                    mimics.append((kind, poly))
                    taken.append(poly)
                    break
    return SlidePlan(
        slide_id=sid, width=width, height=height, seed=seed, tissue_xy=tissue, lesions=lesion_objs,
        mimics=mimics, stain=centre_profile(stain_seed, centre), fat_fraction=float(rng.uniform(0.03, 0.09)),
    )


# ---------------------------------------------------------------------------
# Writing.


def write_slide(plan: SlidePlan, out_dir: str, *, mpp: float, tiff_tile_px: int = 512, quality: int = 90,
                workers: Optional[int] = None) -> dict:
    """Writes one planned slide's image, tissue truth and (for lesion slides) XML and mask.

    Returns:
      ``{"levels": [(w, h), ...]}``.
    """
    renderer = SlideRenderer(plan, mpp)
    sid = plan.slide_id
    folder = CohortFolder(out_dir)
    levels = write_pyramid_tiff(
        folder.image(sid), (plan.width, plan.height), renderer.render_tile,
        tiff_tile_px=tiff_tile_px, mpp=mpp, compression="jpeg", quality=quality, channels=3,
        background=plan.stain.glass_rgb, workers=workers,
        description=f"pfascannet synthetic lymph node {sid} (not patient data)",
    )
    truth = renderer.tissue_truth(TISSUE_TRUTH_DS)
    with io_utils.atomic_path(folder.tissue_png(sid), suffix=".png") as tmp:
        if not cv2.imwrite(tmp, truth):
            raise CohortError(f"could not write the tissue truth PNG for {sid}")
    if plan.lesions:
        write_asap_xml(folder.annotation(sid), plan.annotations)
        write_mask_tiff(folder.mask(sid), plan.annotations,
                        (plan.width, plan.height), mpp, tiff_tile_px=tiff_tile_px)
    return {"levels": levels}


@dataclasses.dataclass
class PlannedSlide:
    """One slide of a planned cohort (what ``make_cohort`` will write for it)."""

    plan: SlidePlan
    patient: str
    node: int
    label: str
    stage: str
    split: str
    centre: int


@dataclasses.dataclass(frozen=True)
class CohortSettings:
    """Everything a synthetic cohort is a deterministic function of (``cohort.json`` records them).

    ``make_cohort``, ``plan_cohort``, ``workflow.ensure_cohort`` and the
    ``pfascannet cohort`` flags all take these (one declaration each).
    """

    seed: int = setting(0, help="Seed; the cohort is a deterministic function of it and the other flags.")
    patients: int = setting(4, help="Patients (5 lymph-node slides each).")
    nodes_per_patient: int = setting(5, help="Slides per patient (Camelyon17: 5).")
    slide_size: int = setting(
        4096, help="Approximate side (px) of negative/ITC/micro slides; macro slides fit their lesion.")
    mpp: float = setting(LEVEL0_MPP, help="Microns per level-0 pixel (Camelyon: 0.243); lesion sizes are physical.")
    test_fraction: float = setting(
        0.25, help="Share of patients in the test split (rounded, at least one when < 1 and patients > 1; "
                   "the rest: train).")
    centres: int = setting(5, help="Staining centres (stain, focus and noise vary between them).")
    node_labels: Optional[str] = setting(
        None, help="Node labels per patient instead of the pN-stage cycle: patients separated by ';', each "
                   "nodes_per_patient labels (negative|itc|micro|macro) separated by ',', e.g. "
                   "'itc,negative,negative,micro,negative;macro,itc,negative,negative,negative' for 2 patients "
                   "(code may pass a list of lists).")
    tile_px: int = setting(512, help="TIFF tile side (multiple of 16).")
    quality: int = setting(90, help="JPEG quality of slide tiles.")

    def __post_init__(self):
        patients, nodes_per_patient, node_labels = self.patients, self.nodes_per_patient, self.node_labels
        if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
            raise CohortError(f"patients must be an integer >= 1, got {patients!r}")
        if nodes_per_patient < 1:
            raise CohortError(f"nodes_per_patient must be >= 1, got {nodes_per_patient!r}")
        if not 1024 <= self.slide_size <= 65536:
            raise CohortError(f"slide_size must be between 1024 and 65536 px, got {self.slide_size!r}")
        if not 0.05 <= self.mpp <= 5:
            raise CohortError(f"mpp must be a pixel size in microns between 0.05 and 5, got {self.mpp!r}")
        if not 0 <= self.test_fraction <= 1:
            raise CohortError(f"test_fraction must be in [0, 1], got {self.test_fraction!r}")
        if self.centres < 1:
            raise CohortError(f"centres must be >= 1, got {self.centres!r}")
        if isinstance(node_labels, str):
            node_labels = [[x.strip() for x in p.split(",")] for p in node_labels.strip().strip(";").split(";")]
        if node_labels is not None:
            node_labels = [list(x) for x in node_labels]
            if len(node_labels) != patients:
                raise CohortError(f"node_labels gives {len(node_labels)} patients but patients={patients}")
            for labs in node_labels:
                bad = [x for x in labs if x not in NODE_LABELS]
                if bad or len(labs) != nodes_per_patient:
                    raise CohortError(
                        f"each patient's node_labels must be {nodes_per_patient} of {NODE_LABELS}, got {labs}"
                    )
            object.__setattr__(self, "node_labels", node_labels)
        tile_px, quality = self.tile_px, self.quality
        if isinstance(tile_px, bool) or not isinstance(tile_px, int) or tile_px < 16 or tile_px % 16:
            raise CohortError(f"tile_px must be a positive multiple of 16, got {tile_px!r}")
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise CohortError(f"quality must be a JPEG quality in 1..100, got {quality!r}")


def _settings(settings: Optional[CohortSettings], kwargs: dict) -> CohortSettings:
    if settings is not None and kwargs:
        raise TypeError(f"give CohortSettings or keyword settings, not both (got {sorted(kwargs)})")
    return settings if settings is not None else CohortSettings(**kwargs)


def plan_cohort(settings: Optional[CohortSettings] = None, **kwargs) -> list[PlannedSlide]:
    """Plans a cohort without rendering it (the settings of :func:`make_cohort`).

    ``make_cohort`` renders exactly these plans, so tests and tools can find
    where the mimics and lesions of a written cohort are.
    """
    cs = _settings(settings, kwargs)
    seed, patients, nodes_per_patient, node_labels = cs.seed, cs.patients, cs.nodes_per_patient, cs.node_labels
    slide_size, mpp, test_fraction, centres = cs.slide_size, cs.mpp, cs.test_fraction, cs.centres
    rng = np.random.default_rng([seed, 0])
    n_test = int(round(test_fraction * patients))
    if 0 < test_fraction < 1 and patients > 1:
        n_test = min(max(n_test, 1), patients - 1)
    test_patients = set(int(p) for p in rng.permutation(patients)[:n_test])
    patient_centre = [int(c) for c in (np.arange(patients) + int(rng.integers(centres))) % centres]
    out = []
    for p in range(patients):
        prng = np.random.default_rng([seed, 1, p])
        if node_labels is not None:
            labels = list(node_labels[p])
        else:
            labels = node_labels_for_stage(prng, STAGE_CYCLE[p % len(STAGE_CYCLE)], nodes_per_patient)
        stage = pn_stage_from_nodes(labels)
        for n, label in enumerate(labels):
            plan = plan_slide(
                np.random.default_rng([seed, 2, p, n]), node_slide_id(p, n), label,
                seed=int(np.random.SeedSequence([seed, 3, p, n]).generate_state(1)[0]),
                centre=patient_centre[p], slide_size=slide_size, mpp=mpp, stain_seed=seed,
            )
            out.append(PlannedSlide(plan, patient_id(p), n, label, stage,
                                    "test" if p in test_patients else "train", patient_centre[p]))
    return out


def make_cohort(
    out_dir: str | os.PathLike,
    settings: Optional[CohortSettings] = None,
    *,
    workers: Optional[int] = None,
    progress: Optional[callable] = None,
    **kwargs,
) -> CohortInfo:
    """Generates a Camelyon-like cohort in ``out_dir`` (layout in the module docstring).

    Args:
      out_dir: output directory (created; existing files of the same names are replaced).
      settings: a :class:`CohortSettings`; or its fields as keywords (``seed=...,
        patients=...``), the rest at their defaults.  Patient ``p`` gets stage
        ``STAGE_CYCLE[p % 5]`` unless ``node_labels`` gives each node's label.
      workers: threads rendering tiles of a slide (default: CPU count, <= 4).
      progress: optional ``callable(message: str)`` called once per slide.

    Returns:
      A :class:`CohortInfo`.

    Raises:
      CohortError: settings out of range, or a lesion that cannot fit the slide.
    """
    t_start = time.perf_counter()
    out_dir = os.fspath(out_dir)
    # Checked before anything is planned or written (the planning alone takes seconds).
    cs = _settings(settings, kwargs)
    seed, patients, nodes_per_patient, node_labels = cs.seed, cs.patients, cs.nodes_per_patient, cs.node_labels
    slide_size, mpp, test_fraction, centres = cs.slide_size, cs.mpp, cs.test_fraction, cs.centres
    tile_px, quality = cs.tile_px, cs.quality
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise CohortError(f"workers must be an integer >= 1 (or None: CPU count), got {workers!r}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CohortError(f"{out_dir} exists and is not a folder")
    planned = plan_cohort(cs)
    # A killed run leaves hidden, unlocked temporaries (partial TIFFs, scratch
    # pyramid levels); clear them before writing anything new.
    folder = CohortFolder(out_dir)
    for sub in (out_dir, folder.images, folder.annotations, folder.masks, folder.tissue):
        io_utils.remove_stale_temps(sub)
    slides, lesion_rows, mimic_rows, stages, nodes = [], [], [], {}, {}
    for entry in planned:
        plan, label = entry.plan, entry.label
        sid = plan.slide_id
        stages[entry.patient] = entry.stage
        t0 = time.perf_counter()
        written = write_slide(plan, out_dir, mpp=mpp, tiff_tile_px=tile_px, quality=quality, workers=workers)
        nodes[sid] = label
        slides.append({
            "slide": sid, "patient": entry.patient, "node": entry.node, "split": entry.split, "label": label,
            "centre": entry.centre, "width": plan.width, "height": plan.height,
            "path": folder.image(sid), "levels": len(written["levels"]),
        })
        for lesion in plan.lesions:
            _, centroid, _ = lesion_lib.polygon_moments(lesion.outline.coords_xy)
            lesion_rows.append({
                "slide": sid, "lesion_id": lesion.lesion_id, "class": lesion.cls,
                "centre_x": int(round(centroid[0])), "centre_y": int(round(centroid[1])),
                "major_axis_um": round(lesion.major_axis_um, 1),
            })
        for k, (kind, poly) in enumerate(plan.mimics):
            _, centroid, _ = lesion_lib.polygon_moments(poly)
            (x0, y0), (x1, y1) = poly.min(0), poly.max(0)
            mimic_rows.append({
                "slide": sid, "mimic_id": k, "kind": kind,
                "centre_x": int(round(centroid[0])), "centre_y": int(round(centroid[1])),
                "major_axis_um": round(lesion_lib.major_axis_px(poly) * mpp, 1),
                "x0": int(np.floor(x0)), "y0": int(np.floor(y0)), "x1": int(np.ceil(x1)), "y1": int(np.ceil(y1)),
            })
        if progress is not None:
            progress(f"{sid}: {label}, {plan.width}x{plan.height} px, {len(plan.lesions)} lesion(s), "
                     f"{len(plan.mimics)} mimic(s), {time.perf_counter() - t0:.1f} s")

    camelyon_files.write_camelyon17_csv(folder.stages_csv, stages, nodes)
    camelyon_files.write_slides_csv(folder.slides_csv, slides)
    camelyon_files.write_truth_lesions_csv(folder.lesions_csv, lesion_rows)
    camelyon_files.write_mimics_csv(folder.mimics_csv, mimic_rows)  # what evaluation counts false positives on
    settings = {
        "generator": "pfascannet.synthetic", "version": GENERATOR_VERSION, "seed": seed,
        "patients": patients, "nodes_per_patient": nodes_per_patient, "slide_size": slide_size,
        "mpp": mpp, "test_fraction": test_fraction, "centres": centres,
        "node_labels": node_labels, "tile_px": tile_px, "quality": quality,
        "tissue_truth_downsample": TISSUE_TRUTH_DS,
        "lesion_ranges_um": {"itc": lesion_lib.ITC_RANGE_UM, "micro": lesion_lib.MICRO_RANGE_UM,
                             "macro": lesion_lib.MACRO_RANGE_UM},
        "stain_profiles": {str(c): centre_profile(seed, c).as_dict() for c in range(centres)},
        "note": "synthetic slides: results on them measure the pipeline, not clinical accuracy",
    }
    io_utils.write_json(folder.cohort_json, settings)
    return CohortInfo(out_dir, slides, lesion_rows, stages, settings, time.perf_counter() - t_start)
