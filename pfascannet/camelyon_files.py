"""The Camelyon files, read and written in one place (``camelyon.py`` holds the rules they follow).

The scanner writes and the evaluation reads the same formats, so each format
has its writer and its one strict reader here, side by side:

* lesion CSV (Camelyon16 submission): ``confidence,X,Y`` rows, level-0
  integers, no header (a header line of three names is allowed on reading);
* slide scores: ``name,probability`` with a header (optional on reading);
* the cohort's ``slides.csv``: ``slide,patient,node,split,label,centre,width,height``;
  ``read_slides_csv`` is the one reader, for the evaluation's references and
  for the datasets (training's sampler) alike;
* the cohort's ``lesions.csv``: ``slide,lesion_id,class,centre_x,centre_y,major_axis_um``;
* references: the cohort's ``slides.csv``, Camelyon16 ``reference.csv``
  (``Test_001,Tumor,Macro,Primary`` / ``Test_002,Normal``, no header), a
  Camelyon17 stage CSV (``read_reference`` tells them apart);
* the Camelyon17 stage CSV: ``patient,stage`` header, rows
  ``patient_XXX.zip,pN1`` and ``patient_XXX_node_Y.tif,macro``.

Every reader goes through ``evaluation.csv_rows`` (not text, NUL bytes, broken
quoting: one error naming the file and line) and fails on the first bad line
with one line naming the file and line.  Readers take the error class to raise
(``csv_rows.read_rows``' convention), so each caller keeps its own (``FrocError``,
``SlideMetricsError``, ``DatasetError``); the default is ``CamelyonFileError``.
Writers write atomically (``io_utils``).  No NumPy-free promise: the lesion
reader returns an array.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from pfascannet import io_utils
from pfascannet.camelyon import (METASTASIS_CLASSES, NODE_SLIDE_RE, PATIENT_ZIP_RE, StageError, normalize_node_label,
                                 normalize_stage, patient_of_slide, slide_id)
from pfascannet.errors import PfaError
from pfascannet.evaluation import csv_rows


class CamelyonFileError(PfaError, ValueError):
    """A Camelyon file that cannot be read (the default error of the readers here)."""


class ReferenceFileError(PfaError, ValueError):
    """A reference list that cannot be read."""


# ----------------------------------------------------------------------------
# Lesion CSV (Camelyon16 submission): confidence,X,Y


def write_lesion_csv(path: str | os.PathLike, rows: Iterable[tuple[float, float, float]]) -> None:
    """A Camelyon16 lesion CSV of ``(confidence, X, Y)``: ``confidence,X,Y`` rows, level-0 integers, no header."""
    buf = io.StringIO()
    for confidence, x, y in rows:
        buf.write(f"{confidence:.6f},{int(x)},{int(y)}\n")
    io_utils.write_text(path, buf.getvalue())


def read_lesion_csv(path: str | os.PathLike, error: type[Exception] = CamelyonFileError) -> np.ndarray:
    """Reads a Camelyon16 lesion CSV: rows ``confidence,X,Y`` (level-0 px), no header.

    Read so that it cannot be misread: the first line may be a header only if
    it names three columns and none is a number (``confidence,X,Y``); every
    other non-blank line must be exactly three finite numbers, and X, Y must
    not be negative.  Anything else (binary garbage included) is an error
    naming the file and line, never a silently skipped line.

    Returns:
      float64 ``[n, 3]`` array of (confidence, X, Y).

    Raises:
      error: the file and line of the first bad line.
    """
    rows = []
    for lineno, row in csv_rows.read_rows(path, error):
        if lineno == 1 and csv_rows.is_header(row, 3):
            continue
        values = [csv_rows.finite(c) for c in row]
        if len(values) != 3 or any(v is None for v in values):
            raise error(f"{path}:{lineno}: expected three finite numbers `confidence,X,Y`, "
                        f"got {csv_rows.show(row)}")
        if values[1] < 0 or values[2] < 0:
            raise error(f"{path}:{lineno}: detection at (X={values[1]:g}, Y={values[2]:g}) lies outside "
                        f"the slide (level-0 coordinates are >= 0)")
        rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


# ----------------------------------------------------------------------------
# Slide scores: name,probability


def write_slide_scores(path: str | os.PathLike, rows: Iterable[tuple[str, float]]) -> None:
    """``name,probability`` with its header, one row per ``(slide, score)`` in the order given (6 decimals)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "probability"])
    for name, score in rows:
        writer.writerow([name, f"{score:.6f}"])
    io_utils.write_text(path, buf.getvalue())


def read_slide_scores(path: str | os.PathLike, error: type[Exception] = CamelyonFileError) -> dict[str, float]:
    """Reads a ``name,probability`` CSV (header optional) into {slide id: probability}.

    Names lose a trailing ``.tif``/``.tiff`` so Camelyon submissions and our
    slide ids match.  Read so that it cannot be misread: only the first line
    may be a header, and only if both its fields are names (not numbers);
    every other line must be a name and one finite number.

    Raises:
      error: the file and line of the first bad line, or a slide listed twice.
    """
    out: dict[str, float] = {}
    for lineno, row in csv_rows.read_rows(path, error):
        if lineno == 1 and csv_rows.is_header(row, 2):
            continue
        if len(row) != 2 or not row[0].strip():
            raise error(f"{path}:{lineno}: expected `name,probability`, got {csv_rows.show(row)}")
        name, value = slide_id(row[0]), row[1].strip()
        p = csv_rows.finite(value)
        if p is None:
            raise error(f"{path}:{lineno}: probability {value!r} is not a finite number")
        if name in out:
            raise error(f"{path}:{lineno}: duplicate slide {name!r}")
        out[name] = p
    return out


# ----------------------------------------------------------------------------
# The cohort's slides.csv and lesions.csv

SLIDES_COLUMNS = ("slide", "patient", "node", "split", "label", "centre", "width", "height")
TRUTH_LESIONS_COLUMNS = ("slide", "lesion_id", "class", "centre_x", "centre_y", "major_axis_um")
MIMICS_COLUMNS = ("slide", "mimic_id", "kind", "centre_x", "centre_y", "major_axis_um", "x0", "y0", "x1", "y1")
"""A synthetic cohort's ``mimics.csv``: each hard mimic (germinal centre, sinus histiocytes) the generator drew,
its centroid and bounding box in level-0 px.  Real Camelyon data has no such file."""

_TUMOUR_WORDS = {"tumor": True, "tumour": True, "normal": False}


def parse_slide_label(value: str) -> tuple[bool, Optional[str]]:
    """``(tumour, node label or None)`` of a label: ``tumor|tumour|normal`` or a node class (any case).

    Raises:
      StageError: neither.
    """
    key = value.strip().lower()
    if key in _TUMOUR_WORDS:
        return _TUMOUR_WORDS[key], None
    node = normalize_node_label(value.strip())
    return node != "negative", node


@dataclasses.dataclass(frozen=True)
class SlidesRow:
    """One row of a ``slides.csv``.

    Attributes:
      lineno: its line in the file.
      slide: slide id (``camelyon.slide_id`` of the cell: no extension).
      label: the label as written (stripped), "" when the row has none.
      tumour: whether the label says metastasis (ITC included); None without a label.
      node_label: ``negative|itc|micro|macro`` when the label is a node class, else None.
      split, patient: the cells (stripped), None when empty.
      dimensions_xy: level-0 ``(width, height)`` when given.
    """

    lineno: int
    slide: str
    label: str
    tumour: Optional[bool]
    node_label: Optional[str]
    split: Optional[str]
    patient: Optional[str]
    dimensions_xy: Optional[tuple[int, int]]


def slides_csv_header(row: Sequence[str]) -> list[str]:
    """The column names of a ``slides.csv`` header line (stripped, lower case)."""
    return [c.strip().lower() for c in row]


def read_slides_csv(path: str | os.PathLike, error: type[Exception] = CamelyonFileError, *,
                    require_label: bool = True) -> list[SlidesRow]:
    """The one strict reader of a cohort's ``slides.csv`` (the evaluation's reference and the datasets' slide list).

    The first non-blank line is the header (any column order, any case; a ``slide`` column required, and a
    ``label`` column unless ``require_label`` is False); every row needs its slide (and label), no
    slide twice, a label one of ``tumor|normal`` or a node class, width/height positive whole numbers.

    Args:
      require_label: False for a slide list whose slides may be unlabelled (a training cohort).

    Raises:
      FileNotFoundError: no such file.
      error: one line naming the file (and line) of the first problem.
    """
    numbered = csv_rows.read_rows(path, error)
    header = slides_csv_header(numbered[0][1]) if numbered else []
    need = ("slide", "label") if require_label else ("slide",)
    if not numbered or any(c not in header for c in need):
        what = "'slide' and 'label' columns" if require_label else "a 'slide' column"
        raise error(f"{path}: expected a header with {what}, got {header}")
    col = {name: i for i, name in enumerate(header)}
    out, seen = [], set()
    for lineno, row in numbered[1:]:
        def get(name: str) -> Optional[str]:
            i = col.get(name)
            return row[i].strip() if i is not None and i < len(row) and row[i].strip() else None

        sid, label = get("slide"), get("label")
        if sid is None or (require_label and label is None):
            raise error(f"{path}:{lineno}: missing slide{' or label' if require_label else ''}")
        sid = slide_id(sid)
        if sid in seen:
            raise error(f"{path}:{lineno}: slide {sid!r} is listed twice")
        seen.add(sid)
        tumour = node = None
        if label is not None:
            try:
                tumour, node = parse_slide_label(label)
            except StageError as exc:
                raise error(f"{path}:{lineno}: {exc}") from None
        dims = None
        if get("width") or get("height"):
            w, h = csv_rows.finite(get("width") or ""), csv_rows.finite(get("height") or "")
            if w is None or h is None or w < 1 or h < 1 or w != int(w) or h != int(h):
                raise error(f"{path}:{lineno}: width/height must be positive whole numbers of "
                            f"level-0 px, got {get('width')!r}/{get('height')!r}")
            dims = (int(w), int(h))
        out.append(SlidesRow(lineno, sid, label or "", tumour, node, get("split"), get("patient"), dims))
    return out


# ----------------------------------------------------------------------------
# References: any of the cohort's slides.csv, Camelyon16 reference.csv, a Camelyon17 stage CSV


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


def read_reference(path: str | os.PathLike) -> dict[str, SlideRef]:
    """Reads any of the three reference formats into {slide id: SlideRef}.

    A slide is a tumour slide when its label is tumour/tumor or any node class but
    negative: ITC-only slides are tumour slides, as in Camelyon16's reference.
    Every error names the file (and line): a file that is not text, an
    unrecognised layout, an unknown label, a slide listed twice.

    Raises:
      FileNotFoundError: when ``path`` does not exist.
      ReferenceFileError: an unrecognised layout, an unknown label, a duplicate slide.
    """
    numbered = csv_rows.read_rows(path, ReferenceFileError)
    if not numbered:
        raise ReferenceFileError(f"{path}: empty reference file")
    header = slides_csv_header(numbered[0][1])
    try:
        if header[:2] == ["patient", "stage"]:
            table = read_camelyon17_csv(path)
            if not table.nodes:
                raise ReferenceFileError(f"{path}: a Camelyon17 CSV without node rows lists no slides")
            return {s: SlideRef(s, lab != "negative", lab, None, s.rsplit("_node_", 1)[0])
                    for s, lab in sorted(table.nodes.items())}
        if "slide" in header and "label" in header:
            return {r.slide: SlideRef(r.slide, r.tumour, r.node_label, r.split, r.patient, r.dimensions_xy)
                    for r in read_slides_csv(path, ReferenceFileError)}
        out = {}
        for lineno, row in numbered:
            if len(row) < 2:
                raise ReferenceFileError(f"{path}:{lineno}: expected `slide,Tumor|Normal[,...]`, "
                                         f"got {csv_rows.show(row)}")
            sid = slide_id(row[0])
            try:
                tumour, node = parse_slide_label(row[1])
            except StageError as exc:
                raise ReferenceFileError(f"{path}:{lineno}: {exc} (expected `slide,Tumor|Normal[,...]`)") from None
            if sid in out:
                raise ReferenceFileError(f"{path}:{lineno}: slide {sid!r} is listed twice")
            out[sid] = SlideRef(sid, tumour, node)
        return out
    except StageError as exc:
        raise ReferenceFileError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None


def _table_text(header: Sequence[str], rows: Sequence[Mapping]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_slides_csv(path: str | os.PathLike, rows: Sequence[Mapping]) -> None:
    """A cohort's ``slides.csv`` (``SLIDES_COLUMNS``) from row dicts (other keys are left out)."""
    io_utils.write_text(path, _table_text(SLIDES_COLUMNS, rows))


def write_truth_lesions_csv(path: str | os.PathLike, rows: Sequence[Mapping]) -> None:
    """A cohort's ``lesions.csv`` (``TRUTH_LESIONS_COLUMNS``) from row dicts."""
    io_utils.write_text(path, _table_text(TRUTH_LESIONS_COLUMNS, rows))


def read_truth_lesions(path: str | os.PathLike, error: type[Exception] = CamelyonFileError
                       ) -> dict[str, list[tuple[float, float, str]]]:
    """Reads the cohort's ``lesions.csv`` (``slide,lesion_id,class,centre_x,centre_y,...``).

    Returns:
      {slide: [(centre X, centre Y, class)]} in level-0 px.
    """
    rows = csv_rows.read_rows(path, error)
    need = ("slide", "class", "centre_x", "centre_y")
    header = [c.strip() for c in rows[0][1]] if rows else []
    if not rows or rows[0][0] != 1 or set(need) - set(header):
        raise error(f"{path}: first line must be a header with columns {list(need)}, got {header}")
    col = {name: header.index(name) for name in need}
    out: dict[str, list[tuple[float, float, str]]] = {}
    for lineno, row in rows[1:]:
        if len(row) != len(header):
            raise error(f"{path}:{lineno}: expected {len(header)} fields like the header, got {csv_rows.show(row)}")
        cls = row[col["class"]].strip().lower()
        if cls not in METASTASIS_CLASSES:
            raise error(f"{path}:{lineno}: lesion class {row[col['class']]!r} is not one of {METASTASIS_CLASSES}")
        x, y = csv_rows.finite(row[col["centre_x"]]), csv_rows.finite(row[col["centre_y"]])
        if x is None or y is None:
            raise error(f"{path}:{lineno}: centre_x/centre_y must be finite numbers, got {csv_rows.show(row)}")
        out.setdefault(row[col["slide"]].strip(), []).append((x, y, cls))
    return out


@dataclasses.dataclass(frozen=True)
class Mimic:
    """One hard mimic of a synthetic slide (a row of ``mimics.csv``), level-0 px."""

    slide: str
    kind: str
    centre_xy: tuple[float, float]
    box: tuple[float, float, float, float]  # x0, y0, x1, y1

    def near(self, x: float, y: float, margin_px: float) -> bool:
        """Whether ``(x, y)`` lies in the bounding box grown by ``margin_px`` on every side."""
        x0, y0, x1, y1 = self.box
        return x0 - margin_px <= x <= x1 + margin_px and y0 - margin_px <= y <= y1 + margin_px


def write_mimics_csv(path: str | os.PathLike, rows: Sequence[Mapping]) -> None:
    """A synthetic cohort's ``mimics.csv`` (``MIMICS_COLUMNS``) from row dicts."""
    io_utils.write_text(path, _table_text(MIMICS_COLUMNS, rows))


def read_mimics(path: str | os.PathLike, error: type[Exception] = CamelyonFileError) -> dict[str, list[Mimic]]:
    """Reads a ``mimics.csv``: ``{slide: [Mimic]}`` (strict: every column of ``MIMICS_COLUMNS``, finite numbers)."""
    rows = csv_rows.read_rows(path, error)
    header = [c.strip() for c in rows[0][1]] if rows else []
    if not rows or rows[0][0] != 1 or set(MIMICS_COLUMNS) - set(header):
        raise error(f"{path}: first line must be a header with columns {list(MIMICS_COLUMNS)}, got {header}")
    col = {name: header.index(name) for name in MIMICS_COLUMNS}
    out: dict[str, list[Mimic]] = {}
    for lineno, row in rows[1:]:
        if len(row) != len(header):
            raise error(f"{path}:{lineno}: expected {len(header)} fields like the header, got {csv_rows.show(row)}")
        nums = [csv_rows.finite(row[col[k]]) for k in ("centre_x", "centre_y", "x0", "y0", "x1", "y1")]
        if any(v is None for v in nums):
            raise error(f"{path}:{lineno}: centre and box must be finite numbers, got {csv_rows.show(row)}")
        sid = row[col["slide"]].strip()
        out.setdefault(sid, []).append(Mimic(sid, row[col["kind"]].strip(), (nums[0], nums[1]), tuple(nums[2:])))
    return out


# ----------------------------------------------------------------------------
# Camelyon17 stage CSV: header `patient,stage`; rows `patient_XXX.zip,pN1` and
# `patient_XXX_node_Y.tif,macro`.


@dataclasses.dataclass
class Camelyon17Table:
    """The content of a Camelyon17 stage CSV.

    Attributes:
      stages: patient id (``patient_XXX``, no ``.zip``) -> canonical pN-stage.
      nodes: slide id (``patient_XXX_node_Y``, no ``.tif``) -> node label.
    """

    stages: dict[str, str] = dataclasses.field(default_factory=dict)
    nodes: dict[str, str] = dataclasses.field(default_factory=dict)

    def nodes_of(self, patient: str) -> dict[str, str]:
        """Node rows of one patient, keyed by slide id."""
        return {s: lab for s, lab in self.nodes.items() if patient_of_slide(s) == patient}


def read_camelyon17_csv(path: str | os.PathLike) -> Camelyon17Table:
    """Reads a Camelyon17 ``patient,stage`` CSV (reference or submission).

    Rows naming ``<patient>.zip`` give a pN-stage; rows naming
    ``<patient>_node_<k>.tif`` give a node label. Case of stages and labels is
    free; blank lines are skipped.

    Raises:
      FileNotFoundError: when ``path`` does not exist.
      StageError: on a missing header, an unknown stage/label, a duplicate row.
    """
    table = Camelyon17Table()
    numbered = csv_rows.read_rows(path, StageError)
    if not numbered:
        raise StageError(f"{path}: empty file; expected a `patient,stage` header and rows")
    first_line, first = numbered[0]
    header = [c.strip().lower() for c in first]
    if first_line != 1 or header[:2] != ["patient", "stage"]:
        raise StageError(f"{path}:{first_line}: the first line must be the header `patient,stage`, "
                         f"got {csv_rows.show(first)}")
    for lineno, row in numbered[1:]:
        if len(row) < 2:
            raise StageError(f"{path}:{lineno}: expected `name,stage`, got {csv_rows.show(row)}")
        name, value = row[0].strip(), row[1].strip()
        where = f"{path}:{lineno}"
        try:
            if PATIENT_ZIP_RE.match(name):
                key = PATIENT_ZIP_RE.match(name).group("patient")
                if key in table.stages:
                    raise StageError(f"duplicate patient {name!r}")
                table.stages[key] = normalize_stage(value)
            elif NODE_SLIDE_RE.match(name):
                key = NODE_SLIDE_RE.match(name).group("slide")
                if key in table.nodes:
                    raise StageError(f"duplicate node {name!r}")
                table.nodes[key] = normalize_node_label(value)
            else:
                raise StageError(f"name {name!r} is neither `patient_XXX.zip` nor `patient_XXX_node_Y.tif`")
        except StageError as exc:
            raise StageError(f"{where}: {exc}") from None
    return table


def write_camelyon17_csv(path: str | os.PathLike, stages: Mapping[str, str],
                         nodes: Mapping[str, str] | None = None) -> None:
    """Writes a Camelyon17 submission CSV atomically.

    Each patient row is followed by its node rows, patients and nodes sorted
    by id (node number numerically).

    Args:
      path: output CSV.
      stages: patient id (without ``.zip``) -> pN-stage.
      nodes: slide id ``<patient>_node_<k>`` (without ``.tif``) -> node label.
    """
    nodes = dict(nodes or {})
    by_patient: dict[str, list[str]] = {}
    for slide in nodes:
        patient = patient_of_slide(slide)
        if patient is None:
            raise StageError(f"slide id {slide!r} is not of the form <patient>_node_<k>")
        by_patient.setdefault(patient, []).append(slide)
    lines = ["patient,stage"]
    for patient in sorted(set(stages) | set(by_patient)):
        if patient in stages:
            lines.append(f"{patient}.zip,{normalize_stage(stages[patient])}")
        for slide in sorted(by_patient.get(patient, []), key=lambda s: int(NODE_SLIDE_RE.match(s).group("node"))):
            lines.append(f"{slide}.tif,{normalize_node_label(nodes[slide])}")
    io_utils.write_text(path, "\n".join(lines) + "\n")
