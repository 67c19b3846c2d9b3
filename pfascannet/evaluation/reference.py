"""Ground-truth slide lists: the cohort's ``slides.csv``, Camelyon16 and Camelyon17 references.

One reader for the three formats a user may hold, so every ``eval/`` script
takes ``--reference`` as any of them:

* the cohort's ``slides.csv`` (``ARCHITECTURE.md``): header
  ``slide,patient,node,split,label,...``, ``label`` a node class
  (``negative|itc|micro|macro``) or ``tumor|normal``;
* Camelyon16 ``reference.csv``: no header, rows ``test_001,Tumor,Macro,...``
  or ``test_002,Normal``;
* a Camelyon17 stage CSV (``patient,stage`` header): its node rows
  ``patient_XXX_node_Y.tif,macro`` give the slides.

A slide is a tumour slide when its label is tumour/tumor or any node class but
negative: ITC-only slides are tumour slides, as in Camelyon16's reference.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from pfascannet.camelyon import StageError, normalize_node_label, slide_id
from pfascannet.errors import PfaError
from pfascannet.evaluation import csv_rows, pn_stage


class ReferenceFileError(PfaError, ValueError):
    """A reference list that cannot be read."""


@dataclasses.dataclass(frozen=True)
class SlideRef:
    """Truth for one slide.

    Attributes:
      slide: slide id (file name without extension).
      tumour: whether the slide holds any metastasis (ITC included).
      node_label: ``negative|itc|micro|macro`` when known, else None.
      split: ``train``/``test``/... when the reference says, else None.
      patient: patient id when known.
      dimensions_xy: level-0 ``(width, height)`` when the reference gives it.
    """

    slide: str
    tumour: bool
    node_label: Optional[str] = None
    split: Optional[str] = None
    patient: Optional[str] = None
    dimensions_xy: Optional[tuple[int, int]] = None


_TUMOUR_WORDS = {"tumor": True, "tumour": True, "normal": False}


def _parse_label(value: str) -> tuple[bool, Optional[str]]:
    key = value.strip().lower()
    if key in _TUMOUR_WORDS:
        return _TUMOUR_WORDS[key], None
    node = normalize_node_label(value.strip())
    return node != "negative", node


def read_reference(path: str | os.PathLike) -> dict[str, SlideRef]:
    """Reads any of the three reference formats into {slide id: SlideRef}.

    Every error names the file (and line): a file that is not text, an
    unrecognised layout, an unknown label, a slide listed twice.

    Raises:
      FileNotFoundError: when ``path`` does not exist.
      ReferenceFileError: an unrecognised layout, an unknown label, a duplicate slide.
    """
    numbered = csv_rows.read_rows(path, ReferenceFileError)
    if not numbered:
        raise ReferenceFileError(f"{path}: empty reference file")
    header = [c.strip().lower() for c in numbered[0][1]]
    try:
        if header[:2] == ["patient", "stage"]:
            table = pn_stage.read_camelyon17_csv(path)
            if not table.nodes:
                raise ReferenceFileError(f"{path}: a Camelyon17 CSV without node rows lists no slides")
            return {s: SlideRef(s, lab != "negative", lab, None, s.rsplit("_node_", 1)[0])
                    for s, lab in sorted(table.nodes.items())}
        if "slide" in header and "label" in header:
            return _read_cohort(path, header, numbered[1:])
        out = {}
        for lineno, row in numbered:
            if len(row) < 2:
                raise ReferenceFileError(f"{path}:{lineno}: expected `slide,Tumor|Normal[,...]`, "
                                     f"got {csv_rows.show(row)}")
            sid = slide_id(row[0])
            try:
                tumour, node = _parse_label(row[1])
            except StageError as exc:
                raise ReferenceFileError(f"{path}:{lineno}: {exc} (expected `slide,Tumor|Normal[,...]`)") from None
            if sid in out:
                raise ReferenceFileError(f"{path}:{lineno}: slide {sid!r} is listed twice")
            out[sid] = SlideRef(sid, tumour, node)
        return out
    except StageError as exc:
        raise ReferenceFileError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None


def _read_cohort(path, header: list[str], rows: list[tuple[int, list[str]]]) -> dict[str, SlideRef]:
    col = {name: i for i, name in enumerate(header)}
    out = {}
    for lineno, row in rows:
        def get(name: str) -> Optional[str]:
            i = col.get(name)
            return row[i].strip() if i is not None and i < len(row) and row[i].strip() else None

        sid = get("slide")
        if sid is None or get("label") is None:
            raise ReferenceFileError(f"{path}:{lineno}: missing slide or label")
        sid = slide_id(sid)
        if sid in out:
            raise ReferenceFileError(f"{path}:{lineno}: slide {sid!r} is listed twice")
        try:
            tumour, node = _parse_label(get("label"))
        except StageError as exc:
            raise ReferenceFileError(f"{path}:{lineno}: {exc}") from None
        dims = None
        if get("width") or get("height"):
            w, h = csv_rows.finite(get("width") or ""), csv_rows.finite(get("height") or "")
            if w is None or h is None or w < 1 or h < 1 or w != int(w) or h != int(h):
                raise ReferenceFileError(f"{path}:{lineno}: width/height must be positive whole numbers of "
                                     f"level-0 px, got {get('width')!r}/{get('height')!r}")
            dims = (int(w), int(h))
        out[sid] = SlideRef(sid, tumour, node, get("split"), get("patient"), dims)
    return out


def select_split(reference: dict[str, SlideRef], split: Optional[str],
                 source: Optional[str | os.PathLike] = None) -> dict[str, SlideRef]:
    """The slides of one split (all slides when ``split`` is None or empty).

    Args:
      source: the reference file, named in the error.
    """
    if not split:
        return dict(reference)
    chosen = {s: r for s, r in reference.items() if (r.split or "").lower() == split.lower()}
    if not chosen:
        splits = sorted({r.split for r in reference.values() if r.split})
        where = f"{source}: " if source else ""
        raise ReferenceFileError(f"{where}no slide in split {split!r}; the reference has splits {splits or 'none'}")
    return chosen
