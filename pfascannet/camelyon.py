"""The Camelyon16/17 conventions and rules, stated in one place.

``shared/DESIGN.md`` section 3 gives each rule as the organisers' scripts
apply it; every other module imports the numbers and rules from here (as
``geometry.py`` is the one home of the network's numbers).

Two ITC rules circulate and they are not the same rule:

* Camelyon16's FROC (lesion-level evaluation): an evaluation region, the
  tumour of the level-5 mask grown by 75 um and labelled, whose skimage
  major axis is below 275 um (``FROC_ITC_MAX_UM``) is an isolated-tumour-cell
  region: hits there are ignored and it is not counted as a lesion.
* Camelyon17's node classes (pN-staging, after TNM): by the longest diameter
  of the largest metastasis, ``itc <= 0.2 mm < micro <= 2 mm < macro``
  (``NODE_ITC_MAX_UM``, ``NODE_MICRO_MAX_UM``, :func:`node_class`); exactly
  0.2 mm is ITC, exactly 2 mm is micro.

Names (Camelyon's): a slide's id is its file name without the extension;
Camelyon17 slides are ``patient_XXX_node_Y`` and patients ``patient_XXX``.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Optional

from pfascannet.errors import PfaError

# ----------------------------------------------------------------------------
# Pixel sizes and levels.

LEVEL0_MPP = 0.243
"""Level-0 pixel size (um per px) of Camelyon's slides; the organisers' scripts hard-code it,
and it is the fallback wherever a slide carries no pixel size."""

MASK_LEVEL = 5
"""Pyramid level at which the organisers' evaluation reads the mask."""

MASK_DOWNSAMPLE = 2**MASK_LEVEL
"""Level-0 px per pixel of the evaluation mask (level 5 = 32)."""

MASK_TUMOUR_VALUE = 255
"""Value of tumour in a Camelyon mask TIFF (0 elsewhere)."""

# ----------------------------------------------------------------------------
# ASAP XML annotation groups (lower case).

TUMOUR_GROUPS = frozenset({"_0", "_1", "tumor", "tumour", "metastasis", "metastases"})
"""Annotation groups that are tumour (Camelyon16 uses ``_0``, ``_1``, Camelyon17 ``Tumor``)."""

EXCLUSION_GROUPS = frozenset({"_2", "exclusion", "none"})
"""Annotation groups that are excluded regions (holes in the tumour)."""

# ----------------------------------------------------------------------------
# Camelyon16 FROC: the evaluation mask and its ITC rule.

FROC_GROWTH_UM = 75.0
"""Tumour growth before labelling, "the size of 5 tumour cells" (37.5 um on each side)."""

FROC_ITC_MAX_UM = 275.0
"""Camelyon16 FROC's ITC limit: a grown evaluation region whose major axis is below it is
excluded (hits ignored, not counted as a lesion); 200 um plus the 75 um growth."""


def froc_growth_limit_px(mpp: float = LEVEL0_MPP, downsample: int = MASK_DOWNSAMPLE) -> float:
    """Distance-transform limit in mask px: ``75 / (mpp * downsample * 2)`` (4.8225 at Camelyon's)."""
    return FROC_GROWTH_UM / (mpp * downsample * 2.0)


def froc_itc_limit_px(mpp: float = LEVEL0_MPP, downsample: int = MASK_DOWNSAMPLE) -> float:
    """Major-axis limit in mask px below which a grown region is ITC: ``275 / (mpp * downsample)``."""
    return FROC_ITC_MAX_UM / (mpp * downsample)


def is_froc_itc(major_axis_px: float, mpp: float = LEVEL0_MPP, downsample: int = MASK_DOWNSAMPLE) -> bool:
    """Whether a grown evaluation region of this major axis (mask px) is ITC in the FROC.

    The comparison is made in mask pixels, as the organisers' script makes it.
    """
    return major_axis_px < froc_itc_limit_px(mpp, downsample)


def major_axis_length(region) -> float:
    """skimage's major axis of a ``regionprops`` region, in its image's px.

    ``major_axis_length`` was renamed ``axis_major_length`` in skimage 0.26 (same value).
    """
    value = getattr(region, "axis_major_length", None)
    return float(region.major_axis_length if value is None else value)


# ----------------------------------------------------------------------------
# Camelyon17: node classes and pN-stages.

NODE_LABELS = ("negative", "itc", "micro", "macro")
"""Node classes in order of severity."""

METASTASIS_CLASSES = NODE_LABELS[1:]
"""Size classes of a metastasis, smallest first (``itc``, ``micro``, ``macro``)."""

NODE_ITC_MAX_UM = 200.0
"""Camelyon17's ITC class: longest diameter <= 0.2 mm (exactly 0.2 mm is ITC)."""

NODE_MICRO_MAX_UM = 2000.0
"""Camelyon17's micro-metastasis: > 0.2 mm and <= 2 mm; above 2 mm is macro."""

STAGES = ("pN0", "pN0(i+)", "pN1mi", "pN1", "pN2")
"""pN-stages in clinical order, spelled as in the Camelyon17 CSVs."""

# Synonyms seen in the wild ("normal" is the paper's word for negative).
_NODE_ALIASES = {"negative": "negative", "normal": "negative", "none": "negative",
                 "itc": "itc", "itcs": "itc",
                 "micro": "micro", "micrometastasis": "micro", "micro-metastasis": "micro",
                 "macro": "macro", "macrometastasis": "macro", "macro-metastasis": "macro"}
_STAGE_RANK = {s.lower(): i for i, s in enumerate(STAGES)}


class StageError(PfaError, ValueError):
    """An unknown node label or pN-stage, or a malformed Camelyon17 CSV."""


def node_class(major_axis_um: float) -> str:
    """Camelyon17 class of a metastasis from its longest diameter in um.

    ``itc`` up to and including 0.2 mm, ``micro`` above that up to and
    including 2 mm, ``macro`` above 2 mm (``shared/DESIGN.md`` section 3).
    """
    if major_axis_um <= NODE_ITC_MAX_UM:
        return "itc"
    if major_axis_um <= NODE_MICRO_MAX_UM:
        return "micro"
    return "macro"


def normalize_node_label(label: str) -> str:
    """Returns the canonical node label (``negative|itc|micro|macro``), case-insensitive."""
    key = str(label).strip().lower()
    if key not in _NODE_ALIASES:
        raise StageError(f"unknown node label {label!r}; expected one of {NODE_LABELS}")
    return _NODE_ALIASES[key]


def normalize_stage(stage: str) -> str:
    """Returns the canonical spelling of a pN-stage (e.g. ``pn1mi`` -> ``pN1mi``)."""
    key = re.sub(r"\s+", "", str(stage)).lower()
    if key not in _STAGE_RANK:
        raise StageError(f"unknown pN-stage {stage!r}; expected one of {STAGES} (any case)")
    return STAGES[_STAGE_RANK[key]]


def stage_rank(stage: str) -> int:
    """Clinical rank of a pN-stage: pN0 = 0, pN0(i+) = 1, pN1mi = 2, pN1 = 3, pN2 = 4."""
    return _STAGE_RANK[normalize_stage(stage).lower()]


def pn_stage_from_nodes(labels: Iterable[str]) -> str:
    """The Camelyon17 pN-stage of a patient from its node labels.

    Rules (Camelyon17, after the TNM 8th edition, as the challenge applies them):
    ``pN0`` no micro- or macro-metastasis and no ITC in any node; ``pN0(i+)``
    only ITCs; ``pN1mi`` micro-metastases, no macro; ``pN1`` metastases (micro
    or macro) in 1-3 nodes, at least one macro; ``pN2`` metastases in 4 or
    more nodes, at least one macro.

    Args:
      labels: one label per lymph node (``negative``, ``itc``, ``micro`` or
        ``macro``, any case).

    Returns:
      One of ``STAGES``.

    Raises:
      StageError: on an unknown label.
    """
    nodes = [normalize_node_label(x) for x in labels]
    n_macro = sum(x == "macro" for x in nodes)
    # "Metastases" in the pN1/pN2 rules are micro or macro; ITCs do not count.
    n_metastatic = sum(x in ("micro", "macro") for x in nodes)
    if n_macro:
        return "pN2" if n_metastatic >= 4 else "pN1"
    if n_metastatic:
        return "pN1mi"
    if any(x == "itc" for x in nodes):
        return "pN0(i+)"
    return "pN0"


# ----------------------------------------------------------------------------
# Names.

SLIDE_EXTENSIONS = (".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
"""File name endings of slides (what OpenSlide reads); ``datasets`` finds slides by them, in any case."""

_ID_EXTENSIONS = SLIDE_EXTENSIONS + (".csv",)

PATIENT_ZIP_RE = re.compile(r"^(?P<patient>.+?)\.zip$", re.IGNORECASE)
"""A Camelyon17 patient row's name, ``patient_XXX.zip``."""

NODE_SLIDE_RE = re.compile(r"^(?P<slide>(?P<patient>.+?)_node_(?P<node>\d+))(\.tif{1,2})?$", re.IGNORECASE)
"""A Camelyon17 node slide's name, ``patient_XXX_node_Y[.tif]`` (groups slide, patient, node)."""


def slide_id(name: str | os.PathLike) -> str:
    """Slide id of a file name or path: the base name without a slide extension or ``.csv`` (a lesion file)."""
    base = os.path.basename(str(name).strip())
    for ext in _ID_EXTENSIONS:
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def patient_id(p: int) -> str:
    """Camelyon17 patient id of patient number ``p`` (``patient_004``)."""
    return f"patient_{p:03d}"


def node_slide_id(p: int, node: int) -> str:
    """Camelyon17 slide id of node ``node`` of patient ``p`` (``patient_004_node_2``)."""
    return f"patient_{p:03d}_node_{node}"


def patient_of_slide(slide: str) -> Optional[str]:
    """Patient id of a ``<patient>_node_<k>[.tif]`` slide id, or None for any other name."""
    m = NODE_SLIDE_RE.match(slide)
    return m.group("patient") if m else None
