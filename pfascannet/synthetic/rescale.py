"""The same cohort at another pixel size: every slide, annotation, mask and table rescaled.

How the project tests its resolution contract (``slide.resample``) without
other scanners' slides: a cohort and its copy at 0.486 um/px (a 20x scan of
the same tissue) or 0.226 um/px (CAMELYON16's Utrecht scanner) must give the
same slide scores and the same FROC.

A copy's level-0 pixel ``u`` covers the source's level-0 cell
``[u s, (u + 1) s)`` with ``s = mpp / source mpp``; it is read through the
scanner's own ``ReadPlan`` (at ``s = 2`` that is the source's level 1, the
2 x 2 average a 20x scanner's optics roughly give), written as a pyramidal
JPEG-tiled TIFF like the generator's, with the new pixel size in its
resolution tags.  Annotations map ``X -> (X + 0.5) / s - 0.5`` (pixel centres
stay on the same tissue), masks are rasterised again from them, the tissue
truth is resized, and ``slides.csv`` / ``lesions.csv`` carry the new sizes and
centres.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from fractions import Fraction
from typing import Optional

import cv2
import numpy as np

from pfascannet import camelyon_files, io_utils
from pfascannet.errors import PfaError
from pfascannet.layout import CohortFolder
from pfascannet.slide.annotations import Annotation, read_asap_xml, write_asap_xml, write_mask_tiff
from pfascannet.slide.reader import SlideReader
from pfascannet.slide.resample import plan_at_scale
from pfascannet.slide.tiff_writer import write_pyramid_tiff


class RescaleError(PfaError, ValueError):
    """A cohort that cannot be rescaled (missing files, bad pixel size)."""


def rescale_slide(src: str, dst: str, mpp: float, *, quality: int = 90, workers: Optional[int] = None) -> dict:
    """Writes ``src`` at ``mpp`` um/px to ``dst`` (atomically); returns its size and scale."""
    with SlideReader(src) as reader:
        src_mpp = reader.require_mpp()
        scale = _scale(mpp, src_mpp)
        plan = plan_at_scale(scale, reader.level_downsamples, reader.openslide_downsamples, src_mpp, float(mpp))
        w0, h0 = reader.dimensions
        width, height = int(np.ceil(w0 / scale)), int(np.ceil(h0 / scale))

        def tile(x, y, w, h):
            return plan.read(reader, (x, y), (w, h))

        write_pyramid_tiff(dst, (width, height), tile, mpp=float(mpp), quality=quality, workers=workers)
    return {"width": width, "height": height, "scale": float(scale)}


def _scale(mpp: float, src_mpp: float) -> Fraction:
    """Source level-0 px per copy px."""
    return Fraction(float(mpp) / src_mpp).limit_denominator(4096)


def rescale_annotations(annotations, scale: float) -> list[Annotation]:
    """Level-0 polygons of the source mapped onto the copy's level 0 (pixel centres on the same tissue)."""
    s = float(scale)
    return [Annotation(a.name, a.group, (np.asarray(a.coords_xy) + 0.5) / s - 0.5, a.type) for a in annotations]


def rescale_cohort(src_dir: str, dst_dir: str, mpp: float, *, workers: Optional[int] = None,
                   progress=None) -> str:
    """Writes a synthetic cohort (``pfascannet cohort`` layout) at ``mpp`` um/px into ``dst_dir``.

    Returns ``dst_dir``.  Slides already written (a rerun after a kill) are kept.
    """
    src, dst = CohortFolder(src_dir), CohortFolder(dst_dir)
    if os.path.exists(src.slides_csv):  # the strict reader first: a bad table is one file:line error
        camelyon_files.read_slides_csv(src.slides_csv, RescaleError, require_label=False)
    rows = _read_csv(src.slides_csv)  # every column, as written, for the copy
    if not rows:
        raise RescaleError(f"{src_dir}: no slides.csv rows; not a cohort folder")
    if not (float(mpp) > 0):
        raise RescaleError(f"mpp must be a positive number of um/px, got {mpp!r}")
    for sub in (dst.images, dst.annotations, dst.masks, dst.tissue):
        os.makedirs(sub, exist_ok=True)
        io_utils.remove_stale_temps(sub)
    scales = {}
    for row in rows:
        sid = row["slide"]
        src_img, dst_img = src.image(sid), dst.image(sid)
        if os.path.exists(dst_img):
            with SlideReader(dst_img) as r:
                info = {"width": r.dimensions[0], "height": r.dimensions[1]}
            with SlideReader(src_img) as r:
                info["scale"] = float(_scale(mpp, r.require_mpp()))
        else:
            info = rescale_slide(src_img, dst_img, mpp, workers=workers)
        scales[sid] = info["scale"]
        row["width"], row["height"] = info["width"], info["height"]
        xml = src.annotation(sid)
        if os.path.exists(xml):
            ann = rescale_annotations(read_asap_xml(xml), info["scale"])
            write_asap_xml(dst.annotation(sid), ann)
            mask = dst.mask(sid)
            if not os.path.exists(mask):
                write_mask_tiff(mask, ann, (info["width"], info["height"]), mpp=float(mpp))
        tissue = src.tissue_png(sid)
        if os.path.exists(tissue):
            truth = cv2.imread(tissue, cv2.IMREAD_GRAYSCALE)
            ds = 32
            size = (int(np.ceil(info["width"] / ds)), int(np.ceil(info["height"] / ds)))
            resized = cv2.resize(truth, size, interpolation=cv2.INTER_NEAREST)
            with io_utils.atomic_path(dst.tissue_png(sid), suffix=".png") as tmp:
                cv2.imwrite(tmp, resized)
        if progress is not None:
            progress(f"{sid}: {info['width']}x{info['height']} px at {mpp} um/px")
    _write_csv(dst.slides_csv, rows)
    lesions = _read_csv(src.lesions_csv)
    for row in lesions:
        s = scales.get(row["slide"], 1.0)
        for key in ("centre_x", "centre_y"):
            row[key] = int(round((float(row[key]) + 0.5) / s - 0.5))
    _write_csv(dst.lesions_csv, lesions)
    mimics = _read_csv(src.mimics_csv)
    for row in mimics:
        s = scales.get(row["slide"], 1.0)
        for key in ("centre_x", "centre_y", "x0", "y0", "x1", "y1"):
            row[key] = int(round((float(row[key]) + 0.5) / s - 0.5))
    _write_csv(dst.mimics_csv, mimics)
    if os.path.exists(src.stages_csv):
        shutil.copyfile(src.stages_csv, dst.stages_csv)
    meta_path = src.cohort_json
    meta = json.load(open(meta_path, encoding="utf-8")) if os.path.exists(meta_path) else {}
    meta.update({"mpp": float(mpp), "rescaled_from": os.path.abspath(src_dir), "source_mpp": meta.get("mpp")})
    io_utils.write_json(dst.cohort_json, meta)
    return dst_dir


def _read_csv(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_csv(path: str, rows: list[dict]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    io_utils.write_text(path, buf.getvalue())
