"""Where a dataset's files are: which file is slide X, its annotation, and the official CAMELYON16/17 layouts.

One rule for every stage (training, scanning, evaluation, the workflow):

* **Slide files.** A slide is a file whose name ends in one of
  ``camelyon.SLIDE_EXTENSIONS`` (every format OpenSlide reads), not a
  dot-file and not a writer's temporary (``io_utils.is_temp_name``).  Its id
  is the name without the extension (``camelyon.slide_id``).
* **Ids compare case-insensitively** (``slide_key``): CAMELYON16 copies name
  the same slide ``test_001.tif`` or ``Test_001.tif`` and its reference.csv
  says ``Test_001``.  Two files of one folder set whose ids differ only in
  case or extension are ambiguous: finding that slide is an error naming both.
* **Annotations** are ASAP XML files named ``<slide id>.xml``, in a folder or
  inside a zip (``lesion_annotations.zip`` as downloaded).  Zip members are
  read straight from the archive, never extracted: only ``.xml`` members, by
  base name, at most ``MAX_XML_BYTES`` each, parsed with the hardened ASAP
  reader (``slide.annotations.parse_asap_xml``).

Layouts a dataset root may have (``open_dataset`` tells them apart):

``cohort`` (the project's own, ``pfascannet cohort``)::

    C/images/<slide>.tif  C/annotations/<slide>.xml  C/masks/<slide>_mask.tif
    C/slides.csv (slide,...,split,label,...)  C/stages.csv  C/lesions.csv

``camelyon16`` (as downloaded; folder and file names in any case)::

    ROOT/training/normal/normal_001.tif ...      split train, normal
    ROOT/training/tumor/tumor_001.tif ...        split train, tumour
    ROOT/training/lesion_annotations.zip         (or a lesion_annotations/ folder of XML)
    ROOT/testing/images/test_001.tif ...         split test, truth from reference.csv
    ROOT/testing/reference.csv                   no header: Test_001,Tumor,Macro,Primary | Test_002,Normal
    ROOT/testing/lesion_annotations.zip

``camelyon17`` (as downloaded)::

    ROOT/training/center_0 .. center_4/patient_PPP_node_N.tif     split train
    ROOT/testing/[<any folder>/]patient_PPP_node_N.tif             split test (when present)
    ROOT/[training/]lesion_annotations.zip                         (or lesion_annotations/)
    ROOT/[training/|testing/]stage_labels.csv or stages.csv        patient,stage (+ node rows)

The split is the folder: ``training/`` slides are ``train``, ``testing/``
slides ``test``.  The official CAMELYON17 download labels its training
patients only (the test patients' stages were never published), so on it
``train`` takes every labelled training slide and the evaluation stages have
test slides only where a ``testing/`` folder exists; kappa needs the stage CSV
to hold those test patients (``pfascannet cohort --layout camelyon17`` writes
its test patients under ``testing/`` and their stages in ``stages.csv``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from typing import Iterable, Optional, Sequence

from pfascannet import camelyon, camelyon_files
from pfascannet.camelyon import SLIDE_EXTENSIONS
from pfascannet.errors import PfaError
from pfascannet.io_utils import is_temp_name
from pfascannet.layout import CohortFolder
from pfascannet.slide import annotations as ann_mod

LAYOUTS = ("cohort", "camelyon16", "camelyon17")
"""The dataset layouts ``open_dataset`` reads (module docstring)."""

MAX_XML_BYTES = 256 << 20
"""Largest ASAP XML read from a zip (uncompressed): a guard against zip bombs. The largest
CAMELYON16/17 annotation is a few MB."""

ANNOTATION_SOURCES = ("lesion_annotations.zip", "lesion_annotations", "annotations.zip", "annotations")
"""Names of an annotation zip or folder inside a CAMELYON split folder (or the root), any case."""

STAGE_CSV_NAMES = ("stage_labels.csv", "stages.csv")
"""Names of CAMELYON17's stage CSV across copies, any case."""

REFERENCE_CSV_NAMES = ("reference.csv",)
"""Name of CAMELYON16's test reference, any case."""

_CENTRE_DIR_RE = re.compile(r"^cent(er|re)_?\d+$", re.IGNORECASE)


class DatasetError(PfaError, ValueError):
    """A dataset folder, slide or annotation that cannot be found or read; the message says what was expected."""


# ----------------------------------------------------------------------------
# Slide files.


def slide_key(name: str | os.PathLike) -> str:
    """The id by which slides match: the file's id (``camelyon.slide_id``), case-folded."""
    return camelyon.slide_id(name).casefold()


def is_slide_name(name: str) -> bool:
    """True for a file name that is a slide (an OpenSlide extension, not a dot-file or a temporary)."""
    base = os.path.basename(name)
    return base.lower().endswith(SLIDE_EXTENSIONS) and not base.startswith(".") and not is_temp_name(base)


def slide_files(folder: str | os.PathLike) -> list[str]:
    """Sorted paths of the slide files directly in ``folder`` (not its subfolders)."""
    folder = os.fspath(folder)
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if is_slide_name(f) and os.path.isfile(os.path.join(folder, f))]


def _child(folder: str, name: str, want_dir: Optional[bool] = None) -> Optional[str]:
    """``folder/name`` matched case-insensitively (exact name first), or None."""
    exact = os.path.join(folder, name)
    if os.path.exists(exact) and (want_dir is None or os.path.isdir(exact) == want_dir):
        return exact
    if not os.path.isdir(folder):
        return None
    for f in sorted(os.listdir(folder)):
        p = os.path.join(folder, f)
        if f.lower() == name.lower() and (want_dir is None or os.path.isdir(p) == want_dir):
            return p
    return None


def _looked_for() -> str:
    return ", ".join(SLIDE_EXTENSIONS)


class SlideIndex:
    """The slide files of one or more folders, found by id in any case.

    Args:
      folders: a folder or several (missing ones are an error).

    Raises:
      DatasetError: a folder that does not exist.
    """

    def __init__(self, folders: str | os.PathLike | Sequence[str | os.PathLike]):
        self.folders = [os.fspath(folders)] if isinstance(folders, (str, os.PathLike)) else [
            os.fspath(f) for f in folders]
        self._by_key: dict[str, list[str]] = {}
        for folder in self.folders:
            if not os.path.isdir(folder):
                raise DatasetError(f"{folder}: not a folder of slides")
            for path in slide_files(folder):
                self._by_key.setdefault(slide_key(path), []).append(path)

    def find(self, slide_id: str) -> Optional[str]:
        """The file of slide ``slide_id`` (any case, any slide extension), or None.

        Raises:
          DatasetError: two files claim the id (``tumor_001.tif`` and ``Tumor_001.tif``, or ``.tif`` and ``.svs``).
        """
        paths = self._by_key.get(slide_key(slide_id), [])
        if len(paths) > 1:
            raise DatasetError(f"slide {slide_id}: ambiguous, {len(paths)} files match in any case: "
                               f"{', '.join(paths)}; keep one")
        return paths[0] if paths else None

    def require(self, slide_id: str) -> str:
        """``find``, but a missing slide is an error naming where it was looked for."""
        path = self.find(slide_id)
        if path is None:
            raise DatasetError(f"slide {slide_id}: no file {slide_id}.<ext> (any case; ext one of "
                               f"{_looked_for()}) in {', '.join(self.folders)}")
        return path

    def paths(self) -> list[str]:
        """Every slide file, sorted."""
        return sorted(p for ps in self._by_key.values() for p in ps)


def find_slide(folder: str | os.PathLike, slide_id: str) -> Optional[str]:
    """The file of slide ``slide_id`` in ``folder`` (any case, any slide extension), or None."""
    return SlideIndex(folder).find(slide_id)


# ----------------------------------------------------------------------------
# Annotations: folders of ASAP XML, or zips of them.


@dataclasses.dataclass(frozen=True)
class AnnotationFile:
    """One slide's ASAP XML: a file, or a member of a zip.

    Attributes:
      path: the ``.xml`` file, or the ``.zip`` holding it.
      member: the member's name inside the zip (None for a plain file).
    """

    path: str
    member: Optional[str] = None

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else self.path

    def read(self) -> list[ann_mod.Annotation]:
        """The annotations (``slide.annotations.read_asap_xml`` rules, member read from the zip)."""
        if self.member is None:
            return ann_mod.read_asap_xml(self.path)
        try:
            with zipfile.ZipFile(self.path) as zf:
                info = zf.getinfo(self.member)
                if info.flag_bits & 0x1:
                    raise DatasetError(f"{self}: encrypted zip member; unzip it and give the folder")
                if info.file_size > MAX_XML_BYTES:
                    raise DatasetError(f"{self}: {info.file_size} bytes uncompressed, more than an annotation "
                                       f"file may hold ({MAX_XML_BYTES}); unzip it and give the folder")
                with zf.open(info) as f:
                    data = f.read(MAX_XML_BYTES + 1)
        except (zipfile.BadZipFile, KeyError, OSError, RuntimeError) as exc:
            raise DatasetError(f"{self}: cannot read the zip member ({exc})") from None
        if len(data) > MAX_XML_BYTES:
            raise DatasetError(f"{self}: larger than an annotation file may be ({MAX_XML_BYTES} bytes)")
        return ann_mod.parse_asap_xml(data, str(self))


def read_annotations(source: AnnotationFile | str | os.PathLike) -> list[ann_mod.Annotation]:
    """The annotations of an ``AnnotationFile`` or of a plain ASAP XML path."""
    if isinstance(source, AnnotationFile):
        return source.read()
    return ann_mod.read_asap_xml(source)


def _zip_xml_members(path: str) -> list[tuple[str, str]]:
    """``(base name, member name)`` of every ``.xml`` member of a zip (no folders, dot-files, macOS forks)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{path}: not a readable zip of ASAP XML files ({exc})") from None
    out = []
    for info in infos:
        name = info.filename
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        if info.is_dir() or not base.lower().endswith(".xml") or base.startswith(".") or "__MACOSX" in name:
            continue
        out.append((base, name))
    return out


class AnnotationIndex:
    """ASAP XML annotations by slide id (any case), from folders of ``<slide>.xml`` and zips of them.

    Args:
      sources: folders and/or ``.zip`` files (e.g. CAMELYON's ``lesion_annotations.zip``).

    Raises:
      DatasetError: a source that is neither a folder nor a zip.
    """

    def __init__(self, sources: str | os.PathLike | Sequence[str | os.PathLike] = ()):
        self.sources = [os.fspath(sources)] if isinstance(sources, (str, os.PathLike)) else [
            os.fspath(s) for s in sources]
        self._by_key: dict[str, list[AnnotationFile]] = {}
        for source in self.sources:
            if os.path.isdir(source):
                for f in sorted(os.listdir(source)):
                    p = os.path.join(source, f)
                    if f.lower().endswith(".xml") and not f.startswith(".") and os.path.isfile(p):
                        self._by_key.setdefault(f[:-4].casefold(), []).append(AnnotationFile(p))
            elif os.path.isfile(source) and zipfile.is_zipfile(source):
                for base, member in _zip_xml_members(source):
                    self._by_key.setdefault(base[:-4].casefold(), []).append(AnnotationFile(source, member))
            elif os.path.exists(source):
                raise DatasetError(f"{source}: expected a folder of ASAP XML files or a .zip of them "
                                   f"(e.g. lesion_annotations.zip)")
            else:
                raise DatasetError(f"{source}: no such annotation folder or zip")

    def find(self, slide_id: str) -> Optional[AnnotationFile]:
        """The annotation of ``slide_id`` (``<slide_id>.xml``, any case), or None.

        Raises:
          DatasetError: two files claim the slide.
        """
        found = self._by_key.get(slide_key(slide_id), [])
        if len(found) > 1:
            raise DatasetError(f"slide {slide_id}: ambiguous annotation, {len(found)} XML files match: "
                               f"{', '.join(map(str, found))}; keep one")
        return found[0] if found else None

    def slide_keys(self) -> set[str]:
        """Case-folded ids of the annotated slides."""
        return set(self._by_key)

    def where(self) -> str:
        return ", ".join(self.sources) or "(no annotation folder or zip)"


def as_annotation_index(source) -> Optional[AnnotationIndex]:
    """``source`` as an ``AnnotationIndex``: an index, a folder or zip path, or None."""
    if source is None or isinstance(source, AnnotationIndex):
        return source
    return AnnotationIndex(source)


def as_slide_index(source) -> Optional[SlideIndex]:
    """``source`` as a ``SlideIndex``: an index, a folder path, or None."""
    if source is None or isinstance(source, SlideIndex):
        return source
    return SlideIndex(source)


# ----------------------------------------------------------------------------
# Dataset roots.


@dataclasses.dataclass(frozen=True)
class DatasetSlide:
    """One slide of a dataset root.

    Attributes:
      slide_id: file name without extension, as on disk (``tumor_001``, ``Test_001``).
      image_path: the slide file.
      split: ``train`` / ``test`` (the cohort's ``slides.csv`` may hold others).
      label: the label as the layout gives it (``tumor``/``normal``, a node class), or ``""``.
      tumour: whether it holds a metastasis, or None when unknown (no reference row).
      annotation: its ASAP XML, or None.
      patient: CAMELYON17 / cohort patient id, when known.
    """

    slide_id: str
    image_path: str
    split: str
    label: str = ""
    tumour: Optional[bool] = None
    annotation: Optional[AnnotationFile] = None
    patient: Optional[str] = None


@dataclasses.dataclass
class Dataset:
    """A dataset root read through its layout (``open_dataset``).

    Attributes:
      root: the folder.
      layout: one of ``LAYOUTS``.
      slides: every slide, sorted by id.
      images: the slide files by id.
      annotations: the ASAP XML by id.
      reference_path: the file the truth came from (slides.csv, CAMELYON16 reference.csv), or None.
      stages_path: the CAMELYON17 stage CSV (cohort: stages.csv), or None.
      masks_dir: Camelyon-style evaluation masks (the cohort's ``masks/``), or None.
      truth_lesions: the cohort's ``lesions.csv``, or None.
      synthetic: the root was written by ``pfascannet cohort`` (it holds ``cohort.json``).
    """

    root: str
    layout: str
    slides: list[DatasetSlide]
    images: SlideIndex
    annotations: AnnotationIndex
    reference_path: Optional[str] = None
    stages_path: Optional[str] = None
    masks_dir: Optional[str] = None
    truth_lesions: Optional[str] = None
    synthetic: bool = False

    def split(self, name: Optional[str]) -> list[DatasetSlide]:
        """The slides of split ``name`` (any case; all slides for None)."""
        if not name:
            return list(self.slides)
        return [s for s in self.slides if s.split.lower() == name.lower()]

    def refs(self):
        """``{slide id: camelyon_files.SlideRef}`` of the slides whose truth is known."""
        if self.layout == "cohort" and self.reference_path:
            return camelyon_files.read_reference(self.reference_path)
        return {s.slide_id: camelyon_files.SlideRef(s.slide_id, bool(s.tumour),
                                                    s.label if s.label in camelyon.NODE_LABELS else None,
                                                    s.split, s.patient)
                for s in self.slides if s.tumour is not None}

    def describe(self) -> str:
        splits = {}
        for s in self.slides:
            splits[s.split] = splits.get(s.split, 0) + 1
        return (f"{self.root}: {self.layout} layout, {len(self.slides)} slides ("
                + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())) + ")")


def _layout_expected() -> str:
    return ("expected images/ (a pfascannet cohort), training/tumor/, training/normal/ or testing/images/ "
            "(CAMELYON16), or training/center_<K>/ (CAMELYON17)")


def detect_layout(root: str | os.PathLike) -> str:
    """Which of ``LAYOUTS`` the folder ``root`` has.

    Raises:
      DatasetError: not a folder, or none of the layouts (the message says what was expected).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: no such dataset folder ({_layout_expected()})")
    if _child(root, "images", want_dir=True) and os.path.basename(os.path.normpath(root)).lower() != "testing":
        return "cohort"
    training = _child(root, "training", want_dir=True)
    testing = _child(root, "testing", want_dir=True)
    if (training and (_child(training, "tumor", True) or _child(training, "normal", True))) or (
            testing and _child(testing, "images", True)):
        return "camelyon16"
    for part in (training, testing):
        if part and any(_CENTRE_DIR_RE.match(f) and os.path.isdir(os.path.join(part, f)) for f in os.listdir(part)):
            return "camelyon17"
    raise DatasetError(f"{root}: not a dataset folder: {_layout_expected()}")


def open_dataset(root: str | os.PathLike) -> Dataset:
    """Reads a dataset root in any of ``LAYOUTS`` (module docstring).

    Raises:
      DatasetError: an unknown layout, an unreadable reference, an ambiguous slide.
    """
    root = os.fspath(root)
    layout = detect_layout(root)
    ds = {"cohort": _open_cohort, "camelyon16": _open_camelyon16, "camelyon17": _open_camelyon17}[layout](root)
    ds.synthetic = os.path.isfile(CohortFolder(root).cohort_json)
    keys: dict[str, str] = {}
    for s in ds.slides:
        k = slide_key(s.slide_id)
        if k in keys:
            raise DatasetError(f"{root}: two slides share the id {s.slide_id!r} in any case: {keys[k]} and "
                               f"{s.image_path}")
        keys[k] = s.image_path
    if not ds.slides:
        raise DatasetError(f"{root}: {layout} layout but no slide files ({_looked_for()})")
    return ds


def is_dataset_root(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder ``detect_layout`` recognises."""
    try:
        detect_layout(path)
    except DatasetError:
        return False
    return True


def _annotation_sources(*folders: Optional[str]) -> list[str]:
    out = []
    for folder in folders:
        if not folder:
            continue
        for name in ANNOTATION_SOURCES:
            p = _child(folder, name)
            if p and p not in out and (os.path.isdir(p) or zipfile.is_zipfile(p)):
                out.append(p)
    return out


def _open_cohort(root: str) -> Dataset:
    folder = CohortFolder(root)
    images = SlideIndex(folder.images)
    ann_dir = folder.annotations
    annotations = AnnotationIndex([ann_dir] if os.path.isdir(ann_dir) else [])
    table = folder.slides_csv
    slides = []
    if os.path.isfile(table):
        # The evaluation's strict reader: a bad label, a slide twice or a bad size is one error
        # here too, not a slide of unknown (or the wrong) label; the label may be left empty.
        for row in camelyon_files.read_slides_csv(table, DatasetError, require_label=False):
            slides.append(DatasetSlide(row.slide, images.require(row.slide), row.split or "train", row.label,
                                       row.tumour, annotations.find(row.slide),
                                       row.patient or camelyon.patient_of_slide(row.slide)))
    else:
        for path in images.paths():
            sid = camelyon.slide_id(path)
            ann = annotations.find(sid)
            slides.append(DatasetSlide(sid, path, "train", "", True if ann else None, ann,
                                       camelyon.patient_of_slide(sid)))
    stages, lesions, masks = folder.stages_csv, folder.lesions_csv, folder.masks
    return Dataset(root, "cohort", sorted(slides, key=lambda s: s.slide_id), images, annotations,
                   table if os.path.isfile(table) else None, stages if os.path.isfile(stages) else None,
                   masks if os.path.isdir(masks) else None, lesions if os.path.isfile(lesions) else None)


def _first_file(folders: Iterable[Optional[str]], names: Sequence[str]) -> Optional[str]:
    for folder in folders:
        if not folder:
            continue
        for name in names:
            p = _child(folder, name, want_dir=False)
            if p:
                return p
    return None


def _open_camelyon16(root: str) -> Dataset:
    training = _child(root, "training", want_dir=True)
    testing = _child(root, "testing", want_dir=True)
    parts = []  # (folder, split, label, tumour)
    if training:
        for name, tumour in (("normal", False), ("tumor", True)):
            folder = _child(training, name, want_dir=True)
            if folder:
                parts.append((folder, "train", name, tumour))
    test_images = _child(testing, "images", want_dir=True) if testing else None
    if test_images:
        parts.append((test_images, "test", "", None))
    images = SlideIndex([p[0] for p in parts])
    annotations = AnnotationIndex(_annotation_sources(training, testing, root))
    ref_path = _first_file((testing, root), REFERENCE_CSV_NAMES)
    truth = {}
    if ref_path:
        truth = {slide_key(s): r for s, r in camelyon_files.read_reference(ref_path).items()}
    slides = []
    for folder, split, label, tumour in parts:
        for path in slide_files(folder):
            sid = camelyon.slide_id(path)
            if split == "test":
                ref = truth.get(slide_key(sid))
                tumour = None if ref is None else ref.tumour
                label = "" if ref is None else ("tumor" if ref.tumour else "normal")
            slides.append(DatasetSlide(sid, path, split, label, tumour, annotations.find(sid)))
    return Dataset(root, "camelyon16", sorted(slides, key=lambda s: s.slide_id), images, annotations, ref_path)


def _slide_folders(folder: str) -> list[str]:
    """``folder`` and its immediate subfolders that hold slide files."""
    out = [folder] if slide_files(folder) else []
    out += [os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if os.path.isdir(os.path.join(folder, f)) and not f.startswith(".")
            and slide_files(os.path.join(folder, f))]
    return out


def _open_camelyon17(root: str) -> Dataset:
    training = _child(root, "training", want_dir=True)
    testing = _child(root, "testing", want_dir=True)
    parts = [(f, split) for part, split in ((training, "train"), (testing, "test")) if part
             for f in _slide_folders(part)]
    images = SlideIndex([p[0] for p in parts])
    annotations = AnnotationIndex(_annotation_sources(training, testing, root))
    stages_path = _first_file((root, training, testing), STAGE_CSV_NAMES)
    nodes = {}
    if stages_path:
        table = camelyon_files.read_camelyon17_csv(stages_path)
        nodes = {k.casefold(): v for k, v in table.nodes.items()}
    slides = []
    for folder, split in parts:
        for path in slide_files(folder):
            sid = camelyon.slide_id(path)
            label = nodes.get(sid.casefold(), "")
            tumour = None if not label else label != "negative"
            slides.append(DatasetSlide(sid, path, split, label, tumour, annotations.find(sid),
                                       camelyon.patient_of_slide(sid)))
    return Dataset(root, "camelyon17", sorted(slides, key=lambda s: s.slide_id), images, annotations,
                   stages_path, stages_path)


def folder_slides(folder: str | os.PathLike) -> list[str]:
    """The slides a folder stands for: a dataset root's slides, else the folder's slide files,
    else those of its immediate subfolders (``CAMELYON17/training``'s ``center_K/``)."""
    folder = os.fspath(folder)
    if is_dataset_root(folder):
        if detect_layout(folder) == "cohort":  # every image, listed in slides.csv or not
            return slide_files(_child(folder, "images", want_dir=True))
        return [s.image_path for s in open_dataset(folder).slides]
    direct = slide_files(folder)
    if direct:
        return direct
    return [p for sub in _slide_folders(folder) for p in slide_files(sub)]


def open_reference(path: str | os.PathLike):
    """The truth an evaluation stage's ``--reference`` names: ``(refs, dataset)``.

    ``path`` is a reference file (``camelyon_files.read_reference``:
    slides.csv, CAMELYON16 reference.csv, CAMELYON17 stage CSV; dataset None)
    or a dataset root in any of ``LAYOUTS`` (its slides with known truth, each
    with its split; the ``Dataset`` gives the stage its annotations, images and
    stage CSV).

    Returns:
      ``({slide id: SlideRef}, Dataset or None)``.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        ds = open_dataset(path)
        refs = ds.refs()
        if not refs:
            raise DatasetError(f"{path}: no slide with known truth ({ds.layout} layout: "
                               + {"camelyon16": "training/normal, training/tumor or testing/reference.csv",
                                  "camelyon17": "a stage CSV (stage_labels.csv or stages.csv) with node rows",
                                  "cohort": "slides.csv with a label column"}[ds.layout] + ")")
        return refs, ds
    return camelyon_files.read_reference(path), None
