"""A scan's ground truth for the viewer: slide labels, tumour and exclusion outlines.

Three sources, each optional: a reference list (anything
``evaluation.reference.read_reference`` reads: the cohort's ``slides.csv``,
Camelyon16 ``reference.csv``, a Camelyon17 stage CSV) for the labels; ASAP XML
(a folder of ``<slide>.xml`` or CAMELYON's ``lesion_annotations.zip``, read
through ``datasets.AnnotationIndex``, ids in any case) for the outlines,
exclusion regions (groups ``_2``/``Exclusion``/``None``) kept apart; and a
folder of Camelyon mask TIFFs (``<slide>_mask.tif``), traced on their level-5
page, for slides without XML.

:func:`find_truth_sources` is the one place that guesses where the truth of
a scan is when the user does not say; the ``view`` stage's ``--reference``,
``--annotations`` and ``--masks_dir`` override its answer field by field.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Mapping, Optional

import cv2
import numpy as np

from pfascannet import datasets
from pfascannet.camelyon import MASK_DOWNSAMPLE
from pfascannet.evaluation.reference import SlideRef, read_reference
from pfascannet.slide.annotations import read_mask_level


@dataclasses.dataclass(frozen=True)
class TruthSources:
    """Where a scan's truth is; None: not known.

    Attributes:
      reference: a reference list (slide labels).
      annotations_dir: a folder of ASAP XML files named ``<slide>.xml``, or a zip of them.
      masks_dir: a folder of Camelyon mask TIFFs named ``<slide>_mask.tif`` (or ``<slide>.tif``).
    """

    reference: Optional[str] = None
    annotations_dir: Optional[str] = None
    masks_dir: Optional[str] = None

    def describe(self) -> str:
        parts = [f"{k} {v}" for k, v in (("reference", self.reference), ("annotations", self.annotations_dir),
                                           ("masks", self.masks_dir)) if v]
        return ", ".join(parts) or "none found (give --reference, --annotations or --masks_dir)"


REFERENCE_NAMES = ("slides.csv", "reference.csv", "stage_labels.csv", "stages.csv")
ANNOTATION_SOURCES = ("annotations", "lesion_annotations", "lesion_annotations.zip")
MASK_DIRS = ("masks",)


def find_truth_sources(slide_paths: Mapping[str, str]) -> TruthSources:
    """The truth that sits beside the scanned slides, when the user does not say where it is.

    Looked for in the folder that holds most of the scanned slides, then in its parent: a
    reference list (``REFERENCE_NAMES``), ASAP XML (``ANNOTATION_SOURCES``: a folder, or the zip as
    downloaded) and masks (``MASK_DIRS``); the nearest of each wins.  That finds the project's cohort
    layout (``C/images/`` -> ``C/slides.csv``, ``C/annotations/``, ``C/masks/``) and the official
    CAMELYON16/17 folders (``testing/images/`` -> ``testing/reference.csv``,
    ``testing/lesion_annotations.zip``; ``training/tumor/`` -> ``training/lesion_annotations.zip``;
    ``training/center_0/`` -> ``training/stage_labels.csv``).

    Args:
      slide_paths: slide id -> slide file, as the scan recorded them.
    """
    parents: dict[str, int] = {}
    for path in slide_paths.values():
        parent = os.path.dirname(os.path.abspath(path))
        parents[parent] = parents.get(parent, 0) + 1
    if not parents:
        return TruthSources()
    folder = max(sorted(parents), key=parents.get)
    places = [folder, os.path.dirname(folder)]

    def nearest(names: tuple[str, ...], exists) -> Optional[str]:
        return next((p for d in places for p in (os.path.join(d, n) for n in names) if exists(p)), None)

    return TruthSources(nearest(REFERENCE_NAMES, os.path.isfile), nearest(ANNOTATION_SOURCES, annotation_source),
                        nearest(MASK_DIRS, os.path.isdir))


def annotation_source(path: str) -> bool:
    return os.path.isdir(path) or (os.path.isfile(path) and path.lower().endswith(".zip"))


@functools.lru_cache(maxsize=8)
def _annotation_index(source: str) -> datasets.AnnotationIndex:
    return datasets.AnnotationIndex(source)


def read_labels(sources: TruthSources) -> dict[str, SlideRef]:
    """{slide id (lower case): SlideRef} from the reference list, or {} without one.

    Raises:
      ReferenceFileError, FileNotFoundError: an unreadable reference list.
    """
    if not sources.reference:
        return {}
    return {sid.lower(): ref for sid, ref in read_reference(sources.reference).items()}


def label_text(ref: Optional[SlideRef]) -> Optional[str]:
    """What the list shows as a slide's truth: its node class, else tumour/normal; None when unknown."""
    if ref is None:
        return None
    return ref.node_label or ("tumour" if ref.tumour else "normal")


def _find_file(folder: Optional[str], slide: str, suffixes: tuple[str, ...]) -> Optional[str]:
    if not folder or not os.path.isdir(folder):
        return None
    wanted = {(slide + s).lower() for s in suffixes}
    for name in sorted(os.listdir(folder)):
        if name.lower() in wanted and not name.startswith("."):
            return os.path.join(folder, name)
    return None


def slide_outlines(sources: TruthSources, slide: str) -> dict:
    """The truth outlines of one slide, in level-0 ``(x, y)`` pixels.

    Returns:
      ``{"source": file or None, "tumour": [rings], "exclusion": [rings]}``, each ring a list of
      ``[x, y]``.  A slide without a file in either folder has none (a normal slide, or unknown).

    Raises:
      AnnotationError, DatasetError: an XML file (or zip member) that cannot be read (the message names it).
    """
    xml = _annotation_index(sources.annotations_dir).find(slide) if sources.annotations_dir else None
    if xml is not None:
        out = {"source": str(xml), "tumour": [], "exclusion": []}
        for a in datasets.read_annotations(xml):
            if not a.is_area:
                continue
            ring = np.round(a.coords_xy, 1).tolist()
            if a.is_exclusion:
                out["exclusion"].append(ring)
            elif a.is_tumour:
                out["tumour"].append(ring)
        return out
    mask = _find_file(sources.masks_dir, slide, ("_mask.tif", ".tif"))
    if mask is not None:
        level5 = read_mask_level(mask, MASK_DOWNSAMPLE)
        return {"source": mask, "tumour": mask_rings(level5 > 0, MASK_DOWNSAMPLE), "exclusion": []}
    return {"source": None, "tumour": [], "exclusion": []}


def mask_rings(mask: np.ndarray, downsample: int) -> list[list[list[float]]]:
    """Outer outlines of a boolean mask whose pixel (r, c) covers level-0 cell [ds c, ds (c+1)) x [ds r, ds (r+1)).

    The outline runs through the centres of the edge cells (OpenCV's contours), so it lies half a cell
    inside the mask's true edge; good enough to look at, and said on the page as "from the mask".
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    centre = (downsample - 1) / 2.0
    return [np.round(c.reshape(-1, 2) * float(downsample) + centre, 1).tolist() for c in contours]
