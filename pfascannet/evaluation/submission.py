"""The Camelyon16 submission folder: lesion CSVs, one per slide, scored against masks or XML annotations.

``froc.py`` holds the FROC's rules (evaluation masks, hits, the curve, the
three scores); this module reads what they are applied to: the folder of
``<slide>.csv`` lesion CSVs (``camelyon_files.read_lesion_csv``, failing with
``FrocError``), the cohort's ``lesions.csv``, and each tumour slide's truth
(``<slide>_mask.tif`` in a masks folder, else its ASAP XML rasterised at level 5),
then scores the slides one by one (``score_submission``).
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from pfascannet import camelyon_files, datasets
from pfascannet.camelyon import LEVEL0_MPP, MASK_DOWNSAMPLE, node_class
from pfascannet.evaluation.froc import (FrocError, SlideResult, classes_from_truth, evaluation_mask, itc_labels,
                                        lesion_sizes_um, score_slide)
from pfascannet.slide import annotations
from pfascannet.slide.reader import SlideReader


def read_detections_csv(path: str | os.PathLike) -> np.ndarray:
    """A Camelyon16 lesion CSV (``camelyon_files.read_lesion_csv``: ``[n, 3]`` confidence, X, Y), or ``FrocError``."""
    return camelyon_files.read_lesion_csv(path, FrocError)


def read_truth_lesions(path: str | os.PathLike) -> dict[str, list[tuple[float, float, str]]]:
    """The cohort's ``lesions.csv`` (``camelyon_files.read_truth_lesions``: {slide: [(X, Y, class)]}),
    or ``FrocError``."""
    return camelyon_files.read_truth_lesions(path, FrocError)


def lesion_csv(lesions_dir: str, slide: str) -> Optional[str]:
    """The slide's ``<slide>.csv`` in a submission folder (any case), or None."""
    return find_file(lesions_dir, [f"{slide}.csv"])


def tumour_mask_from_xml(path, dimensions_xy: tuple[int, int]) -> np.ndarray:
    """Level-5 uint8 tumour mask (255 tumour) of an ASAP XML file (a path or a ``datasets.AnnotationFile``)."""
    return annotations.rasterize(datasets.read_annotations(path), dimensions_xy,
                                 downsample=MASK_DOWNSAMPLE)


def find_file(directory: str, names: Sequence[str]) -> Optional[str]:
    """First of ``names`` in ``directory``; case-insensitive as a fallback, since
    Camelyon16 files circulate as ``Test_001_Mask.tif`` as well as ``test_001_mask.tif``."""
    for name in names:
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    if not os.path.isdir(directory):
        raise FrocError(f"{directory}: not a folder")
    by_lower = {f.lower(): f for f in sorted(os.listdir(directory))}
    for name in names:
        if name.lower() in by_lower:
            return os.path.join(directory, by_lower[name.lower()])
    return None


def _image_dimensions(slide: str, images_dir) -> Optional[tuple[int, int]]:
    """Level-0 ``(width, height)`` of the slide's file in ``images_dir`` (a folder or a
    ``datasets.SlideIndex``; any case, any slide extension), or None without one."""
    if not images_dir:
        return None
    image = datasets.as_slide_index(images_dir).find(slide)
    if not image:
        return None

    with SlideReader(image) as reader:
        return tuple(int(v) for v in reader.dimensions)


def _image_mpp(slide: str, images_dir) -> float:
    """The level-0 pixel size of the slide's file in ``images_dir`` (for per-slide FROC limits)."""
    image = datasets.as_slide_index(images_dir).find(slide) if images_dir else None
    if not image:
        raise FrocError(f"slide {slide}: its own pixel size was asked for the FROC limits, but its image is not "
                        f"in {images_dir or '(no images folder)'}; give --images_dir, or --mpp for every slide")
    with SlideReader(image) as reader:
        return reader.require_mpp()


def slide_tumour_mask(slide: str, masks_dir: Optional[str] = None,
                      annotations_dir=None,
                      dimensions_xy: Optional[tuple[int, int]] = None,
                      images_dir=None) -> np.ndarray:
    """Level-5 tumour mask (255 tumour) of a tumour slide, from its mask TIFF or ASAP XML.

    Looks for ``<masks_dir>/<slide>_mask.tif`` (or ``<slide>.tif``) first, then
    the slide's ASAP XML in ``annotations_dir`` (a folder of XML, a zip of them
    such as CAMELYON's ``lesion_annotations.zip``, or a ``datasets.AnnotationIndex``)
    rasterised at downsample 32 with the slide's level-0 size from
    ``dimensions_xy`` or from its file in ``images_dir`` (a folder or a ``datasets.SlideIndex``).
    """
    if masks_dir:
        path = find_file(masks_dir, [f"{slide}_mask.tif", f"{slide}_mask.tiff", f"{slide}.tif", f"{slide}.tiff"])
        if path:
            return annotations.read_mask_level(path, downsample=MASK_DOWNSAMPLE)
    index = datasets.as_annotation_index(annotations_dir) if annotations_dir else None
    if index is not None:
        found = index.find(slide)
        if found:
            if dimensions_xy is None:
                dimensions_xy = _image_dimensions(slide, images_dir)
            if dimensions_xy is None:
                raise FrocError(f"slide {slide}: rasterising {found} needs the slide's level-0 size; "
                                f"give a reference with width,height or the images folder")
            return tumour_mask_from_xml(found, dimensions_xy)
    where = " or ".join(str(d) for d in (masks_dir, index.where() if index is not None else None) if d) or (
        "(no masks or annotations folder given)")
    raise FrocError(f"tumour slide {slide}: no mask `{slide}_mask.tif` or annotation `{slide}.xml` in {where}")


def split_excluded(reference: Mapping[str, object], exclude: Iterable[str]
                   ) -> tuple[dict[str, object], list[str]]:
    """``(reference without the excluded slides, the excluded ids found)``; ids match in any case.

    ``exclude=CAMELYON16_EXCLUDED`` drops Test_049 and Test_114 as the
    Camelyon16 organisers did for their FROC.
    """
    drop = {str(s).lower() for s in exclude}
    kept = {s: r for s, r in reference.items() if s.lower() not in drop}
    return kept, sorted(s for s in reference if s.lower() in drop)


def extra_csvs(lesions_dir: str, known_slides: Iterable[str]) -> list[str]:
    """The ``*.csv`` files of ``lesions_dir`` whose slide is not among ``known_slides`` (any case)."""
    known = {str(s).lower() for s in known_slides}
    return sorted(os.path.join(lesions_dir, f) for f in os.listdir(lesions_dir)
                  if f.lower().endswith(".csv") and f[:-4].lower() not in known
                  and os.path.isfile(os.path.join(lesions_dir, f)))


def score_submission(lesions_dir: str, reference: Mapping[str, object],
                     masks_dir: Optional[str] = None, annotations_dir: Optional[str] = None,
                     images_dir: Optional[str] = None,
                     truth_lesions: Optional[Mapping[str, list]] = None,
                     allow_missing: bool = False, mpp: Optional[float] = LEVEL0_MPP, *,
                     known_slides: Optional[Iterable[str]] = None, ignore_extra: bool = False,
                     reference_name: Optional[str] = None) -> list[SlideResult]:
    """Per-slide results of a folder of Camelyon16 lesion CSVs (``<slide>.csv``).

    Args:
      lesions_dir: folder of ``confidence,X,Y`` CSVs, one per slide.
      reference: {slide: SlideRef} (``evaluation.reference``); the slides scored.
      masks_dir, annotations_dir, images_dir: where tumour slides' truth is (annotations: a
        folder of ASAP XML or a zip of them; images: a folder or a ``datasets.SlideIndex``);
        ``images_dir`` also gives the level-0 size of slides the reference
        gives none for.
      truth_lesions: {slide: [(X, Y, class)]} for per-class sensitivity;
        without it a lesion's class is measured from the ungrown mask.
      allow_missing: a slide without a CSV has no detections (else an error,
        as the organisers' script requires a file per slide).
      mpp: level-0 pixel size for the growth and ITC limits: 0.243 for every slide, as the
        organisers' script; None: each tumour slide's own (from its file in ``images_dir``), so the
        75 um growth and the 275 um ITC rule stay physical on slides of other scanners.
      known_slides: every slide of the reference file (default: ``reference``'s):
        a CSV in ``lesions_dir`` for a slide outside it is an error (the
        organisers' loop over CSV files would have scored it as a normal
        slide), unless ``ignore_extra``. Slides of the reference outside the
        scored split (or excluded) are known, so their CSVs are fine.
      ignore_extra: skip CSVs of slides not in the reference instead.
      reference_name: the reference file, for messages.

    Raises:
      FrocError: an extra or bad CSV, a missing CSV, a detection outside its slide,
        a tumour slide without truth; each message names the file.
    """
    if not os.path.isdir(lesions_dir):
        raise FrocError(f"lesions folder {lesions_dir}: not a folder")
    # Indexed once: a folder of XML or a zip of them, slides by id in any case.
    annotations_dir = datasets.as_annotation_index(annotations_dir) if annotations_dir else None
    images_dir = datasets.as_slide_index(images_dir) if images_dir else None
    extras = extra_csvs(lesions_dir, reference if known_slides is None else known_slides)
    if extras and not ignore_extra:
        more = f" ({len(extras)} such files)" if len(extras) > 1 else ""
        raise FrocError(f"{extras[0]}: lesion CSV of slide {os.path.basename(extras[0])[:-4]!r}, which is not in "
                        f"the reference{f' {reference_name}' if reference_name else ''}{more}; the organisers "
                        f"would score it as a normal slide: add it to the reference, remove it, or ignore "
                        f"such files explicitly (--ignore_extra)")
    results = []
    for slide in sorted(reference):
        ref = reference[slide]
        csv_path = lesion_csv(lesions_dir, slide)
        if csv_path:
            detections = read_detections_csv(csv_path)
        elif allow_missing:
            detections = np.zeros((0, 3))
        else:
            raise FrocError(f"no lesion CSV for slide {slide} in {lesions_dir} (expected {slide}.csv; "
                            f"allow_missing scores it as empty)")
        dims = getattr(ref, "dimensions_xy", None) or _image_dimensions(slide, images_dir)
        if not getattr(ref, "tumour"):
            result = score_slide(slide, detections, None, dimensions_xy=dims, source=csv_path)
        else:
            mask = slide_tumour_mask(slide, masks_dir, annotations_dir, dims, images_dir)
            slide_mpp = mpp if mpp is not None else _image_mpp(slide, images_dir)
            labels = evaluation_mask(mask, mpp=slide_mpp)
            itc = itc_labels(labels, mpp=slide_mpp)
            if truth_lesions is not None:
                classes = classes_from_truth(labels, truth_lesions.get(slide, []))
            else:
                classes = {lab: node_class(um) for lab, um in lesion_sizes_um(labels, mask, slide_mpp).items()}
            result = score_slide(slide, detections, labels, itc, classes, dimensions_xy=dims, source=csv_path)
        result.size_known = dims is not None or bool(result.tumour)
        results.append(result)
    return results
